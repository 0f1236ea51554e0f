"""
The code's own standards as tests, so that the one test command checks them:
ruff (lint and format) and mypy over the package.
"""

from __future__ import annotations

import shutil
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import PROJECT_ROOT, child_env


async def _run(*argv: str) -> tuple[int, str]:
    out, err, code = await getProcessOutputAndValue(
        argv[0], argv[1:], env=child_env(), path=str(PROJECT_ROOT), reactor=reactor
    )
    return code, (out + err).decode("utf-8", "replace")


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(PROJECT_ROOT / ".venv" / "bin"))
    if path is None:
        raise SkipTest(f"{name} is not installed (pip install '.[test]')")
    return path


class QualityTests(TestCase):
    """Lint, format and type checks of the whole project."""

    timeout = 300

    async def test_ruff_lint(self) -> None:
        code, output = await _run(_tool("ruff"), "check", "lmproxy", "tests", "twisted", "bench")
        self.assertEqual(code, 0, output)

    async def test_ruff_format(self) -> None:
        code, output = await _run(
            _tool("ruff"), "format", "--check", "lmproxy", "tests", "twisted", "bench"
        )
        self.assertEqual(code, 0, output)

    async def test_mypy(self) -> None:
        _tool("mypy")
        code, output = await _run(sys.executable, "-m", "mypy", "lmproxy")
        self.assertEqual(code, 0, output)
