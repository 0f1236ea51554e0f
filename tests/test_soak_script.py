"""
The soak script, bench/soak.py, works: run for a few seconds against a real
lmproxy, it drives every kind of client and prints its report.  Its figures
are not checked here: a few seconds say nothing about leaks.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import PROJECT_ROOT, child_env


class SoakScriptTests(SynchronousTestCase):
    """bench/soak.py, run briefly."""

    def test_short_run(self) -> None:
        script = PROJECT_ROOT / "bench" / "soak.py"
        done = subprocess.run(
            [sys.executable, str(script), "--seconds", "4", "--clients", "3"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        # 0: all was well; 1: a figure failed the verdict (possible in 4 s of
        # warm-up); anything else: the script itself broke.
        self.assertIn(done.returncode, (0, 1), done.stdout + done.stderr)
        for line in ("requests by kind:", "lost:", "misrouted:", "evictions:", "lmproxy fds:"):
            self.assertIn(line, done.stdout)
        self.assertIn("verdict:", done.stdout)
