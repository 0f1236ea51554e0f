"""
Tests of C{conf/lmproxy.service}, the systemd unit of README.rst's recipes:
it has what lmproxy needs of a service manager, and C{systemd-analyze verify}
(where the machine has it) finds nothing wrong in it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import PROJECT_ROOT

UNIT = PROJECT_ROOT / "conf" / "lmproxy.service"

INSTALLED = "/opt/lmproxy/venv/bin/lmproxy"
"""Where the unit expects the C{lmproxy} command (a venv's console script)."""


def directives(text: str) -> list[tuple[str, str, str]]:
    """The unit's (section, key, value) lines, in order; comments left out."""
    found = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def lmproxy_command() -> str | None:
    """The installed C{lmproxy} command that runs these tests' lmproxy, if there is one."""
    beside = Path(sys.executable).parent / "lmproxy"
    return str(beside) if beside.exists() else shutil.which("lmproxy")


class UnitTests(TestCase):
    """C{conf/lmproxy.service}."""

    def setUp(self) -> None:
        self.directives = directives(UNIT.read_text())

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.directives if (s, k) == (section, key)]

    def test_service(self) -> None:
        """
        It runs the C{lmproxy} command on a config, in a working directory,
        with a PATH that has the venv first; only lmproxy gets SIGTERM
        (C{KillMode=mixed}: it stops its model servers itself), with time for
        their KillCommands; a failure restarts it; it starts at boot.
        """
        self.assertEqual(self.values("Service", "KillMode"), ["mixed"])
        self.assertEqual(self.values("Service", "KillSignal"), ["SIGTERM"])
        self.assertEqual(self.values("Service", "Restart"), ["on-failure"])
        [timeout] = self.values("Service", "TimeoutStopSec")
        self.assertGreater(int(timeout), 60 + 10)  # a KillCommand's limit, then the grace
        [workdir] = self.values("Service", "WorkingDirectory")
        self.assertTrue(workdir.startswith("/"))
        [start] = self.values("Service", "ExecStart")
        argv = shlex.split(start)
        self.assertEqual(argv[0], INSTALLED)
        self.assertEqual(argv[1], "-c")
        self.assertTrue(argv[2].startswith("/") and argv[2].endswith((".json", ".jsonc")))
        path = [v for v in self.values("Service", "Environment") if v.startswith("PATH=")]
        self.assertEqual(len(path), 1)
        dirs = path[0].removeprefix("PATH=").split(":")
        self.assertEqual(dirs[0], str(Path(INSTALLED).parent))
        self.assertIn("/usr/bin", dirs)
        self.assertEqual(self.values("Install", "WantedBy"), ["multi-user.target"])

    def verify(self, text: str) -> tuple[int, str]:
        """
        Run C{systemd-analyze verify} on C{text} as C{lmproxy.service}, its
        ExecStart pointing at this machine's C{lmproxy} (verify checks that
        it exists); its exit status and output.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("no systemd-analyze on this machine")
        command = lmproxy_command()
        if command is None:
            raise SkipTest("no installed lmproxy command for ExecStart")
        self.assertEqual(text.count(f"ExecStart={INSTALLED} "), 1)
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        unit = folder / "lmproxy.service"
        unit.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={command} "))
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=folder
        )
        return result.returncode, result.stdout + result.stderr

    def test_verify(self) -> None:
        """C{systemd-analyze verify} finds no problem in it."""
        status, output = self.verify(UNIT.read_text())
        problems = [line for line in output.splitlines() if "lmproxy.service" in line]
        self.assertEqual((status, problems), (0, []), output)

    def test_verify_sees_mistakes(self) -> None:
        """The check above can fail: C{systemd-analyze verify} reports a misspelled key."""
        _, output = self.verify(UNIT.read_text().replace("KillMode=", "KilMode="))
        self.assertIn("Unknown key 'KilMode'", output)
