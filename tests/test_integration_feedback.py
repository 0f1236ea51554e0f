"""
Integration tests of the loading feedback and of model control on the
OpenAI port (issue 12 section 3): a real C{twistd -n lmproxy}, a demo model
server that takes a moment to load, and the official C{openai} client (in a
thread) or a raw connection as the user.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.harness import (
    Lmproxy,
    delta_texts,
    demo_service,
    free_ports,
    http,
    openai_client,
    raw_connect,
    stream_chat,
    user_message,
    wait_for,
)


def _reasoning(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The progress texts of streamed chat chunks (C{reasoning_content}, an extra field)."""
    texts = []
    for chunk in chunks:
        extra = chunk.choices[0].delta.model_extra if chunk.choices else None
        if extra and extra.get("reasoning_content"):
            texts.append(extra["reasoning_content"])
    return texts


def _statuses(received: bytes) -> list[str]:
    """The C{status.value}s of the events of a raw C{/events} answer, in order."""
    values = []
    for line in received.split(b"\n"):
        if line.startswith(b"data: {"):
            values.append(json.loads(line[len(b"data: ") :])["status"]["value"])
    return values


class FeedbackTests(TestCase):
    timeout = 60

    def lmproxy(self, api: int, target: int, delay: str) -> Lmproxy:
        service = demo_service("demo", None, target, "--startup-delay", delay, OpenAiApi=True)
        return Lmproxy(
            self,
            {"OpenAiApi": {"ListenPort": api, "LoadingFeedback": True}, "Services": [service]},
        )

    async def test_stream_while_the_model_loads(self) -> None:
        """
        The SDK takes the feedback (comments skipped, progress text as
        C{reasoning_content}), then the model's own answer, whole.
        """
        api, target = free_ports(2)
        lmproxy = self.lmproxy(api, target, "1.5")
        await lmproxy.start()
        client = openai_client(api)
        self.addCleanup(client.close)
        chunks = await deferToThread(stream_chat, client, "demo", "hello there")
        progress = _reasoning(chunks)
        self.assertTrue(progress, "no progress text")
        self.assertTrue(progress[0].startswith("starting demo"), progress)
        streamed = "".join(delta_texts(chunks))
        # Now running: the same question, no feedback, the same (deterministic) answer.
        plain = await deferToThread(
            client.chat.completions.create, model="demo", messages=user_message("hello there")
        )
        self.assertEqual(streamed, plain.choices[0].message.content)
        again = await deferToThread(stream_chat, client, "demo", "hello there")
        self.assertEqual(_reasoning(again), [])
        self.assertEqual("".join(delta_texts(again)), streamed)

    async def test_failed_start_ends_the_stream(self) -> None:
        """The SDK raises the error event's message: the server's last line and all."""
        api, target = free_ports(2)
        crash = "import sys; sys.stderr.write('CUDA error: out of memory\\n'); sys.exit(1)"
        service = {
            "Name": "bad",
            "Command": sys.executable,
            "Args": f'-c "{crash}"',
            "ProxyTargetPort": str(target),
            "OpenAiApi": True,
        }
        lmproxy = Lmproxy(
            self,
            {"OpenAiApi": {"ListenPort": api, "LoadingFeedback": True}, "Services": [service]},
        )
        await lmproxy.start()
        client = openai_client(api)
        self.addCleanup(client.close)
        try:
            await deferToThread(stream_chat, client, "bad", "hi")
        except openai.APIError as e:
            error = e
        else:
            raise AssertionError("the stream ended without an error")
        self.assertNotIsInstance(error, openai.APIStatusError)  # the head said 200
        self.assertIn("CUDA error: out of memory", error.message)
        self.assertEqual(error.code, "service_unavailable")

    async def test_load_events_unload(self) -> None:
        """C{/load} starts the model, C{/events} shows it, C{/unload} stops it."""
        api, target = free_ports(2)
        lmproxy = self.lmproxy(api, target, "0.5")
        await lmproxy.start()
        base = f"http://127.0.0.1:{api}/v1/models/demo"
        events = await raw_connect(api)
        self.addCleanup(events.close)
        events.send(b"GET /v1/models/demo/events HTTP/1.1\r\nHost: lmproxy\r\n\r\n")
        await wait_for(lambda: _statuses(bytes(events.received)) == ["stopped"], 10, "events")

        code, _, body = await http("POST", f"{base}/load")
        self.assertEqual((code, json.loads(body)["status"]), (200, {"value": "running"}))
        await wait_for(lambda: _statuses(bytes(events.received))[-1:] == ["running"], 10, "running")
        self.assertEqual(_statuses(bytes(events.received)), ["stopped", "starting", "running"])
        self.assertEqual(await self.status(api), "running")

        code, _, body = await http("POST", f"{base}/unload")
        self.assertEqual((code, json.loads(body)["status"]), (200, {"value": "stopped"}))
        self.assertEqual(await self.status(api), "stopped")
        await wait_for(lambda: _statuses(bytes(events.received))[-1:] == ["stopped"], 10, "stopped")

    async def status(self, api: int) -> Any:
        _, _, body = await http("GET", f"http://127.0.0.1:{api}/v1/models")
        return json.loads(body)["data"][0]["status"]["value"]
