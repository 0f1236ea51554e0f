"""
The installed package, as a user gets it: twistd finds the ``lmproxy`` plugin
without the source tree on ``sys.path``, and the ``lmproxy`` script runs.
Required in CI (which installs with a plain ``pip install``); skipped elsewhere
when lmproxy is not installed.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import PROJECT_ROOT, TWISTD


def _installed_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env


async def _run(test: TestCase, executable: str, *args: str) -> tuple[int, str]:
    cwd = test.mktemp()
    os.makedirs(cwd)
    out, err, code = await getProcessOutputAndValue(
        executable, args, env=_installed_env(), path=cwd, reactor=reactor
    )
    return code, (out + err).decode("utf-8", "replace")


class InstalledPluginTests(TestCase):
    """What ``pip install .`` gives a user, from any directory."""

    async def setUp(self) -> None:
        code, where = await _run(
            self, sys.executable, "-c", "import lmproxy; print(lmproxy.__file__)"
        )
        if code != 0 and not os.environ.get("CI"):
            raise SkipTest("lmproxy is not installed (pip install .)")
        self.assertEqual(code, 0, where)
        self.location = where.strip()

    async def test_twistd_finds_the_plugin(self) -> None:
        code, output = await _run(self, TWISTD, "--help")
        self.assertEqual(code, 0, output)
        self.assertIn("lmproxy", output.split("Commands:")[1])

    async def test_console_script(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "lmproxy")
        code, output = await _run(self, script, "--help")
        self.assertEqual(code, 0, output)
        self.assertIn("-c, --config=", output)

    def test_installed_copy_in_ci(self) -> None:
        """CI proves the plain install: the package comes from site-packages."""
        if not os.environ.get("CI"):
            raise SkipTest("only meaningful after CI's plain pip install")
        # From this interpreter's site-packages (a venv may be inside the
        # clone), not the source tree.
        location = Path(self.location).resolve()
        self.assertTrue(location.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()))
        self.assertFalse(location.is_relative_to((PROJECT_ROOT / "lmproxy").resolve()))
