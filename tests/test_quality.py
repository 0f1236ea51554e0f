"""
The code's own standards as tests, so that the one test command checks them:
ruff (lint and format) and mypy over the package, docstrings in one markup
(epytext, checked by pydoctor), README.rst that renders, and CI running
README's test command.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import PROJECT_ROOT, child_env


async def _run(*argv: str) -> tuple[int, str]:
    out, err, code = await getProcessOutputAndValue(
        argv[0], argv[1:], env=child_env(), path=str(PROJECT_ROOT), reactor=reactor
    )
    return code, (out + err).decode("utf-8", "replace")


def _module(name: str) -> list[str]:
    """Run a tool as ``python -m name``: PATH may not know scripts pip just installed."""
    if importlib.util.find_spec(name) is None:
        raise SkipTest(f"{name} is not installed (pip install '.[test]')")
    return [sys.executable, "-m", name]


_REST = re.compile(
    r"``|^\s*:(?:param|type|returns?|rtype|raises?)\b|:(?:class|func|meth|mod|attr):`|^\s*\.\. \w",
    re.M,
)


def _docstrings(root: os.PathLike[str]) -> list[tuple[str, int, str]]:
    """(path, line, text) of every docstring of every module under C{root}."""
    found = []
    for path in sorted(Path(root).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node, clean=False)
                if text is not None:
                    found.append((str(path.relative_to(PROJECT_ROOT)), node.body[0].lineno, text))
    return found


class QualityTests(TestCase):
    """Lint, format and type checks of the whole project."""

    timeout = 300

    async def test_ruff_lint(self) -> None:
        code, output = await _run(*_module("ruff"), "check", "lmproxy", "tests", "twisted", "bench")
        self.assertEqual(code, 0, output)

    async def test_ruff_format(self) -> None:
        code, output = await _run(
            *_module("ruff"), "format", "--check", "lmproxy", "tests", "twisted", "bench"
        )
        self.assertEqual(code, 0, output)

    async def test_mypy(self) -> None:
        code, output = await _run(*_module("mypy"), "lmproxy")
        self.assertEqual(code, 0, output)

    async def test_docstrings_are_epytext(self) -> None:
        """pydoctor finds no epytext error and no L{} link it cannot resolve."""
        code, output = await _run(
            *_module("pydoctor"),
            "--docformat=epytext",
            "--warnings-as-errors",
            "--quiet",
            f"--html-output={os.path.abspath(self.mktemp())}",
            "--html-writer=tests.pydoctor_check.CheckOnlyWriter",
            "lmproxy",
        )
        self.assertEqual(code, 0, output)

    def test_no_rest_markup_in_docstrings(self) -> None:
        """
        Docstrings are epytext (C{code}, L{link}, @param), never reST
        (double backquotes, C{:param:} fields, roles, directives).
        """
        found = [
            f"{path}:{line}: {markup!r}"
            for path, line, text in _docstrings(PROJECT_ROOT / "lmproxy")
            for markup in _REST.findall(text)
        ]
        self.assertEqual(found, [])

    async def test_readme_renders(self) -> None:
        """README.rst is valid reStructuredText (a broken table fails here)."""
        code, output = await _run(*_module("docutils"), "--halt=warning", "README.rst", os.devnull)
        self.assertEqual(code, 0, output)

    def test_ci_runs_the_readme_test_command(self) -> None:
        """.ci/run runs the test command that README.rst gives newcomers."""
        readme = (PROJECT_ROOT / "README.rst").read_text()
        ci = (PROJECT_ROOT / ".ci" / "run").read_text()
        quick_start = readme.split("Run the tests::", 1)[1].strip().splitlines()[0].strip()
        self.assertIn("twisted.trial tests", quick_start)
        self.assertIn(quick_start, ci.splitlines())
