"""
A pydoctor writer that writes nothing: it renders every docstring, so that
pydoctor reports each epytext error and each L{} link it cannot resolve, and
skips the HTML pages (a third of the time).  Used by
C{tests/test_quality.py} through pydoctor's C{--html-writer} option.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydoctor import epydoc2stan
from pydoctor.model import Documentable, System
from pydoctor.templatewriter import IWriter


class CheckOnlyWriter(IWriter):
    """Renders every object's docstring (with its warnings), writes no file."""

    def __init__(self, build_directory: Path, template_lookup: Any = None) -> None:
        pass

    def prepOutputDirectory(self) -> None:
        pass

    def writeSummaryPages(self, system: System) -> None:
        pass

    def writeIndividualFiles(self, obs: Iterable[Documentable]) -> None:
        for ob in obs:
            self._render(ob)

    def writeLinks(self, system: System) -> None:
        pass

    def _render(self, ob: Documentable) -> None:
        epydoc2stan.format_docstring(ob)
        epydoc2stan.format_summary(ob)
        for child in ob.contents.values():
            self._render(child)
