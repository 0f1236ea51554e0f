"""
README's Quick start, as a newcomer runs it: the ``lmproxy`` script of a venv
that is not activated (its ``bin`` not on ``PATH``) on ``conf/demo.jsonc``,
whose services' ``Command`` is the venv's ``lmproxy-demo`` script.  Only the
ports of the file are changed, to ones the OS chose.
"""

from __future__ import annotations

import json
import os
import re
import sys

import json5
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import PROJECT_ROOT, Lmproxy, child_env, free_ports, http

DEMO_PORTS = (7070, 7071, 8081, 8082, 18081, 18082)


class QuickStartTests(TestCase):
    timeout = 120

    async def test_demo_config_from_a_venv_not_activated(self) -> None:
        bin_dir = os.path.dirname(os.path.abspath(sys.executable))
        script = os.path.join(bin_dir, "lmproxy")
        if not os.path.exists(os.path.join(bin_dir, "lmproxy-demo")):
            if os.environ.get("CI"):
                raise AssertionError(f"pip install . put no lmproxy-demo in {bin_dir}")
            raise SkipTest("lmproxy is not installed (pip install .)")
        text = (PROJECT_ROOT / "conf" / "demo.jsonc").read_text()
        ports = dict(zip(DEMO_PORTS, free_ports(len(DEMO_PORTS)), strict=True))
        for old, new in ports.items():
            text = re.sub(rf"\b{old}\b", str(new), text)
        config = json5.loads(text)
        env = child_env()
        # The venv is not activated: its bin is not on PATH.
        env["PATH"] = os.pathsep.join(
            d for d in env.get("PATH", "").split(os.pathsep) if os.path.abspath(d) != bin_dir
        )
        lmproxy = Lmproxy(self, config, command=[script, "-c", "config.json"], env=env)
        await lmproxy.start()
        body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
        code, _, answer = await http(
            "POST",
            f"http://127.0.0.1:{ports[7070]}/v1/chat/completions",
            json.dumps(body).encode(),
            timeout=60,
        )
        self.assertEqual(code, 200, answer)
        self.assertIn("demo(small)", json.loads(answer)["choices"][0]["message"]["content"])
        self.assertEqual(await lmproxy.stop(), 0)
