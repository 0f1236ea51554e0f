"""
Integration tests of Anthropic's Messages API on the OpenAI port: a real
C{twistd -n lmproxy}, the demo model server (which serves C{/v1/messages}
and C{/v1/messages/count_tokens} as llama.cpp does) as a real subprocess,
and the official C{anthropic} client (its blocking client, in a thread) as
the user of the port; and end to end, the same client through lmproxy to
llama.cpp's own server (skipped without it, as in L{tests.test_e2e_llama}).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anthropic
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.harness import Lmproxy, demo_service, free_ports
from tests.test_e2e_llama import MODEL, llama_config, require_llama

KEY = "sk-ant-lmproxy-test"
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


def _status_error(call: Any) -> anthropic.APIStatusError:
    """The error C{call()} fails with (blocking: call it in a thread)."""
    try:
        answer = call()
    except anthropic.APIStatusError as e:
        return e
    raise AssertionError(f"expected an error status, got an answer: {answer}")


class AnthropicClientTests(TestCase):
    """The Messages API through lmproxy, used by the official client."""

    timeout = 90

    def client(self, port: int, api_key: str | None = KEY) -> anthropic.Anthropic:
        """
        A client for C{port}, closed at the end of the test; without a key,
        it sends none.  It never retries: the errors of lmproxy must reach
        the test.
        """
        headers: dict[str, Any] = {} if api_key else {"Authorization": anthropic.omit}
        client = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}",
            api_key=api_key,
            default_headers=headers,
            max_retries=0,
            timeout=30,
        )
        self.addCleanup(client.close)
        return client

    async def test_messages(self) -> None:
        """
        A message, a streamed one, a token count; errors raise the SDK's own
        classes: an unknown model, no key, a wrong key, a bad request (the
        model server's own error, passed through).
        """
        api, target = free_ports(2)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api, "ApiKeys": [KEY]},
                "Services": [
                    demo_service("claude-demo", None, target, OpenAiApi=True),
                ],
            },
        )
        await lmproxy.start()
        client = self.client(api)
        model = "claude-demo"

        message = await deferToThread(
            client.messages.create, model=model, max_tokens=64, messages=MESSAGES
        )
        self.assertEqual(
            (message.type, message.role, message.model), ("message", "assistant", model)
        )
        [block] = message.content
        assert isinstance(block, anthropic.types.TextBlock)
        self.assertTrue(block.text.startswith(f"demo({model}) pid "), block.text)
        self.assertTrue(block.text.endswith(": hello there"), block.text)
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.input_tokens, 2)
        self.assertEqual(message.usage.output_tokens, len(block.text.split(" ")))

        def stream() -> tuple[list[str], list[str], anthropic.types.Message]:
            with client.messages.stream(model=model, max_tokens=3, messages=MESSAGES) as events:
                kinds = []
                texts = []
                for event in events:
                    kinds.append(event.type)
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        texts.append(event.delta.text)
                return kinds, texts, events.get_final_message()

        kinds, texts, final = await deferToThread(stream)
        self.assertEqual(texts, [f"demo({model})", " pid", " " + block.text.split(" ")[2]])
        self.assertEqual(kinds[0], "message_start")
        self.assertEqual(kinds[-1], "message_stop")
        self.assertIn("content_block_stop", kinds)
        self.assertEqual(final.stop_reason, "max_tokens")
        self.assertEqual(final.content[0].type, "text")

        raw = await deferToThread(
            lambda: list(
                client.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=True)
            )
        )
        self.assertEqual(raw[0].type, "message_start")
        self.assertEqual(raw[-1].type, "message_stop")

        counted = await deferToThread(
            client.messages.count_tokens,
            model=model,
            system="be brief",
            messages=MESSAGES,
        )
        self.assertEqual(counted.input_tokens, 4)

        # lmproxy's own errors, in Anthropic's shape: the SDK's classes.
        error = await deferToThread(
            _status_error,
            lambda: client.messages.create(model="nope", max_tokens=8, messages=MESSAGES),
        )
        self.assertIsInstance(error, anthropic.NotFoundError)
        self.assertEqual(error.type, "not_found_error")
        self.assertEqual(error.response.headers["x-should-retry"], "false")
        for key, why in ((None, "needs an API key"), ("wrong", "Incorrect API key")):
            count = self.client(api, key).messages.count_tokens
            error = await deferToThread(
                _status_error, partial(count, model=model, messages=MESSAGES)
            )
            self.assertIsInstance(error, anthropic.AuthenticationError)
            self.assertEqual(error.type, "authentication_error")
            self.assertIn(why, str(error.api_message))
            self.assertEqual(error.response.headers["x-should-retry"], "false")
        # The model server's own error passes through as it sent it.
        error = await deferToThread(
            _status_error,
            lambda: client.messages.create(model=model, max_tokens=8, messages="hi"),  # type: ignore[arg-type]
        )
        self.assertIsInstance(error, anthropic.BadRequestError)
        self.assertEqual(error.type, "invalid_request_error")
        self.assertIn("'messages' must be a list", str(error.api_message))
        self.assertNotIn("x-should-retry", error.response.headers)

    async def test_llama_cpp(self) -> None:
        """llama.cpp's own Messages API, started on the first request: plain, streamed, counted."""
        require_llama()
        api, target = free_ports(2)
        lmproxy = Lmproxy(self, llama_config(api, target))
        await lmproxy.start()
        client = self.client(api, "unused")
        client = client.with_options(timeout=120)

        def use() -> tuple[anthropic.types.Message, list[str], int]:
            message = client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
            with client.messages.stream(model=MODEL, max_tokens=8, messages=MESSAGES) as stream:
                texts = list(stream.text_stream)
            counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
            return message, texts, counted.input_tokens

        message, texts, counted = await deferToThread(use)
        self.assertEqual(message.content[0].type, "text")
        self.assertGreater(message.usage.output_tokens, 0)
        self.assertGreater(len(texts), 1, "a streamed answer arrives in several events")
        self.assertGreater(counted, 0)
        self.assertEqual(await lmproxy.stop(), 0)
