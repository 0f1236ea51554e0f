"""
The performance harness, bench/perf/run.py, works: in its smoke mode (each
path for about a second) it builds its C client and backend, runs a real
lmproxy, and gives every row of its table a figure and writes its JSON.  The
figures themselves are not checked: speed belongs in bench/, not in tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import PROJECT_ROOT, child_env

ROWS = (
    "tcp_rtt",
    "bulk_up",
    "bulk_down",
    "tcp_100",
    "tcp_500",
    "openai_new",
    "openai_keep",
    "openai_64",
    "sse",
    "cold",
    "cold_listen",
    "swap",
    "rss",
)


class PerfSmokeTests(SynchronousTestCase):
    """bench/perf/run.py --smoke."""

    def test_smoke(self) -> None:
        if shutil.which("cc") is None:
            raise SkipTest("no C compiler (.ci/run installs gcc)")
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "perf.json"
            done = subprocess.run(
                [
                    sys.executable,
                    str(PROJECT_ROOT / "bench" / "perf" / "run.py"),
                    "--smoke",
                    "--json",
                    str(output),
                ],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            report = json.loads(output.read_text())
        self.assertEqual([row["key"] for row in report["rows"]], list(ROWS))
        for row in report["rows"]:
            self.assertIn("lmproxy", row, row["key"])
            self.assertIsInstance(row["met"], bool)
        for key in ("cores", "loadavg", "python", "twisted"):
            self.assertIn(key, report["machine"])
        self.assertNotIn("(not run)", done.stdout)
