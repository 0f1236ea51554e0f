"""
The ``lmproxy`` command's log as a person reads it: ``--logfile``, one line
per API with its URL and one per service port, and no Python reprs (a client
refused by a failed start is named by its address).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import Lmproxy, free_ports, raw_connect, wait_for


class StartupLinesTests(TestCase):
    timeout = 60

    async def test_banner_and_plain_lines_in_the_logfile(self) -> None:
        script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "lmproxy")
        if not os.path.exists(script):
            raise SkipTest("lmproxy is not installed (pip install .)")
        api, manage, port, target = free_ports(4)
        config = {
            "OpenAiApi": {"ListenPort": api, "ListenAddress": "127.0.0.1"},
            "ManagementApi": {"ListenPort": manage, "ListenAddress": "127.0.0.1"},
            "Services": [
                {
                    "Name": "broken",
                    "ListenPort": port,
                    "ProxyTargetHost": "127.0.0.1",
                    "ProxyTargetPort": target,
                    "Command": "/bin/false",
                }
            ],
        }
        lmproxy = Lmproxy(self, config, command=[script, "-c", "config.json", "--logfile", "x.log"])
        await lmproxy.start()
        log = Path(lmproxy.dir) / "x.log"
        client = await raw_connect(port)
        await wait_for(lambda: client.closed.called, 30, "the refused client to be closed")
        await wait_for(lambda: "closing client" in log.read_text(), 30, "the closing line")
        self.assertEqual(await lmproxy.stop(), 0)
        text = log.read_text()
        self.assertIn(f"OpenAI API on http://127.0.0.1:{api}/v1\n", text)
        self.assertIn(f"Dashboard and management API on http://127.0.0.1:{manage}/\n", text)
        self.assertIn(f"broken: port {port}, forwarded to 127.0.0.1:{target}\n", text)
        self.assertRegex(text, r"broken: closing client 127\.0\.0\.1:\d+: ")
        self.assertRegex(text, r"broken: started /bin/false as pid \d+\n")
        self.assertNotIn("Address(", text)
        self.assertEqual(lmproxy.output, "", "everything went to the log file")
