"""
Integration test of C{MaxConcurrentRequests} and C{MaxQueuedRequests}: a
real C{twistd -n lmproxy}, a demo model server as a real subprocess that
starts only when the test opens a gate, and the official C{openai} client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.harness import Lmproxy, eventually, free_ports, http, openai_client, user_message


def _chat(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(model=model, messages=user_message("hi"))
    return answer.choices[0].message.content or ""


class RequestLimitTests(TestCase):
    timeout = 120

    async def test_one_at_a_time_one_waiting_then_429(self) -> None:
        """
        With a limit of 1 and a queue of 1: the first request holds the turn
        while its model starts, the second waits for it, the third gets 429
        at once; once the model is up, the first two are answered.
        """
        api, management, target = free_ports(3)
        gate = Path(self.mktemp()).resolve()
        demo = f"{sys.executable} -m lmproxy.demo --port {target} --model solo"
        service = {
            "Name": "solo",
            "OpenAiApi": True,
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": target,
            "Command": "/bin/sh",
            # The model server starts once the test opens the gate.
            "Args": f"-c 'until [ -e {gate} ]; do sleep 0.01; done; exec {demo}'",
            "MaxConcurrentRequests": 1,
            "MaxQueuedRequests": 1,
        }
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ManagementApi": {"ListenPort": management},
                "Services": [service],
            },
        )
        await lmproxy.start()
        client = openai_client(api)
        first = deferToThread(_chat, client, "solo")

        async def metric(name: str) -> float:
            _, _, body = await http("GET", f"http://127.0.0.1:{management}/metrics")
            for line in body.decode().splitlines():
                if line.startswith(f'{name}{{service="solo"}} '):
                    return float(line.split()[-1])
            raise AssertionError(f"no {name} in /metrics")

        async def counts(waiting: int, queued: int) -> bool:
            return (
                await metric("lmproxy_openai_requests_waiting") == waiting
                and await metric("lmproxy_openai_requests_queued") == queued
            )

        await eventually(lambda: counts(1, 0), 30, "the first request to wait for the start")
        second = deferToThread(_chat, client, "solo")
        await eventually(lambda: counts(1, 1), 30, "the second request to wait its turn")

        body = json.dumps({"model": "solo", "messages": [{"role": "user", "content": "hi"}]})
        code, headers, answer = await http(
            "POST", f"http://127.0.0.1:{api}/v1/chat/completions", body.encode()
        )
        self.assertEqual((code, headers["retry-after"]), (429, "1"))
        self.assertEqual(json.loads(answer)["error"]["code"], "rate_limit_exceeded")

        gate.touch()
        for request in (first, second):
            self.assertIn("solo", await request)
        self.assertEqual(await metric("lmproxy_openai_requests_queued"), 0)
        self.assertEqual(await lmproxy.stop(), 0)
