"""
Tests for L{lmproxy.listen.loadingfeedback}: what a stream for a model that
has to start gets meanwhile (C{OpenAiApi.LoadingFeedback}).  The port's own
site over C{StringTransport}s (L{tests.test_openai.Wire}): the hot path gives
such a request back to the twisted.web route, which streams the feedback,
then the model's stream.  The clock is a fake one.
"""

from __future__ import annotations

import json
from typing import Any, cast

from attrs import evolve
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import (
    LOADING_FEEDBACK_COMMENTS,
    LOADING_FEEDBACK_OFF,
    LOADING_FEEDBACK_PROGRESS,
    Config,
)
from lmproxy.interfaces import ServiceState, Shortage, WaitingFor
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.leanroutes import LeanRoutes
from lmproxy.listen.limits import RequestLimit
from lmproxy.listen.loadingfeedback import LoadingFeedback, progress_text
from lmproxy.listen.requesthead import RequestHead
from lmproxy.testing import ScriptedBackends
from tests.test_front import CHAT, post
from tests.test_openai import CONFIG, RecordingBackends, Wire, dechunk

STREAM = b'{"model": "llama-3", "stream": true}'
EVENTS = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def feedback_config(mode: str = LOADING_FEEDBACK_PROGRESS) -> Config:
    return evolve(CONFIG, openai_loading_feedback=mode)


def chunks(raw: bytes) -> list[bytes]:
    """The payloads of the chunks of a chunked body, in order (the last, empty, one too)."""
    found = []
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        found.append(raw[:length])
        raw = raw[length + 2 :]
    return found


def progress(data: bytes) -> list[str]:
    """The reasoning texts of the chat.completion.chunk events in C{data}."""
    texts = []
    for line in data.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[len(b"data: ") :])
            if chunk.get("object") == "chat.completion.chunk" and chunk["id"] == "lmproxy-loading":
                texts.append(chunk["choices"][0]["delta"]["reasoning_content"])
    return texts


def comments(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.startswith(b":")]


class FeedbackTestCase(SynchronousTestCase):
    mode = LOADING_FEEDBACK_PROGRESS

    def setUp(self) -> None:
        self.backends = RecordingBackends(feedback_config(self.mode))
        self.wire = Wire(self.backends, config=feedback_config(self.mode))

    def body(self) -> bytes:
        """The body the client has received since the last call (its head dropped)."""
        data = self.wire.client.value()
        self.wire.client.clear()
        if data.startswith(b"HTTP/1.1"):
            data = data.partition(b"\r\n\r\n")[2]
        return b"".join(chunks(data))

    def head(self) -> bytes:
        return self.wire.client.value().partition(b"\r\n\r\n")[0]

    def answer_stream(self) -> None:
        """The service has started; the model streams L{EVENTS}."""
        self.backends.finish_start("chat")
        protocol, backend = self.wire.backend()
        self.assertIn(b'"stream": true', backend.value())
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(EVENTS), EVENTS)
        )


class ProgressTests(FeedbackTestCase):
    """C{LoadingFeedback: true}: comments, and progress text for chat completions."""

    def test_comments_every_second_then_the_model(self) -> None:
        """The head and a comment at once, one each second, then the model's stream."""
        self.wire.channel.dataReceived(post(STREAM))
        status, headers, _ = self.wire.response(raw=True)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], [b"text/event-stream"])
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        self.assertEqual(headers[b"cache-control"], [b"no-cache"])
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        seen = []
        for _ in range(2):
            self.wire.reactor.advance(1)
            seen.append(self.body())
        self.assertEqual(
            [comments(data) for data in seen],
            [[b": lmproxy: starting chat, 1 s so far"], [b": lmproxy: starting chat, 2 s so far"]],
        )
        self.assertEqual(
            [progress(data) for data in seen],
            [["starting chat, 1 s so far\n"], ["starting chat, 2 s so far\n"]],
        )
        self.answer_stream()
        self.assertEqual(self.body(), EVENTS)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.wire.reactor.advance(5)
        self.assertEqual(self.wire.client.value(), b"")  # no more comments
        self.assertFalse(self.wire.client.disconnecting)
        self.assertEqual(self.wire.api.stats.of("chat").answered, {("llama-3", 200): 1})

    def test_first_comment_at_once(self) -> None:
        self.wire.channel.dataReceived(post(STREAM))
        data = self.wire.client.value()
        self.assertTrue(data.startswith(SSE_HEAD.split(b"\r\n")[0]))
        body = b"".join(chunks(data.partition(b"\r\n\r\n")[2]))
        self.assertEqual(comments(body), [b": lmproxy: starting chat"])
        self.assertEqual(progress(body), ["starting chat\n"])

    def test_cors_headers(self) -> None:
        """A page of an allowed origin can read the feedback: lmproxy's CORS headers."""
        config = evolve(feedback_config(), openai_allowed_origins=("http://ui.example",))
        wire = Wire(RecordingBackends(config), config=config)
        wire.channel.dataReceived(post(STREAM, extra=b"Origin: http://ui.example\r\n"))
        _, headers, _ = wire.response(raw=True)
        self.assertEqual(headers[b"access-control-allow-origin"], [b"http://ui.example"])
        self.assertEqual(headers[b"content-type"], [b"text/event-stream"])
        wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_the_whole_stream_parses(self) -> None:
        """Every event of the stream is an SSE comment or a JSON data line, then [DONE]."""
        self.wire.channel.dataReceived(post(STREAM))
        self.wire.reactor.advance(1)
        self.answer_stream()
        _, _, body = self.wire.response()
        events = body.split(b"\n\n")
        self.assertEqual(events[-1], b"")
        for event in events[:-2]:
            if not event.startswith(b":"):
                self.assertTrue(event.startswith(b"data: "))
                json.loads(event[len(b"data: ") :])
        self.assertEqual(events[-2], b"data: [DONE]")

    def test_estimate_and_the_start_in_progress(self) -> None:
        backends = ScriptedBackends(feedback_config())
        backends.set_state("chat", ServiceState.STARTING)
        backends.service_changes["chat"] = {"start_estimate": 11.6, "starting_since": -3.0}
        wire = Wire(backends, config=feedback_config())
        wire.channel.dataReceived(post(STREAM))
        self.assertEqual(
            progress(dechunk(wire.client.value().partition(b"\r\n\r\n")[2] + b"0\r\n\r\n")),
            ["starting chat, about 12 s (learned), 3 s so far\n"],
        )
        wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_start_fails(self) -> None:
        """The reason, as an error event; the stream ends."""
        self.wire.channel.dataReceived(post(STREAM))
        self.wire.reactor.advance(1)
        self.body()
        self.backends.fail_start("chat", "service 'chat' failed to start: exit status 1")
        data = self.wire.client.value()
        self.assertTrue(data.endswith(b"0\r\n\r\n"))
        event = self.body()
        self.assertTrue(event.startswith(b"data: ") and event.endswith(b"\n\n"))
        self.assertEqual(
            json.loads(event[len(b"data: ") :]),
            {
                "error": {
                    "message": "service 'chat' failed to start: exit status 1",
                    "type": "server_error",
                    "param": None,
                    "code": "service_unavailable",
                }
            },
        )
        self.assertFalse(self.wire.client.disconnecting)  # the connection is kept
        self.wire.reactor.advance(5)
        self.assertEqual(self.wire.client.value(), b"")
        self.assertEqual(self.wire.api.stats.of("chat").answered, {("llama-3", 503): 1})

    def test_model_answers_an_error(self) -> None:
        """The model's own error, as an error event."""
        self.wire.channel.dataReceived(post(STREAM))
        self.body()
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        error = {"error": {"message": "context too long", "type": "x", "param": None, "code": 7}}
        document = json.dumps(error).encode()
        protocol.dataReceived(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(document), document)
        )
        event = self.body()
        self.assertEqual(json.loads(event[len(b"data: ") :]), error)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.wire.api.stats.of("chat").answered, {("llama-3", 400): 1})

    def test_anthropic_error(self) -> None:
        """An error in Anthropic's shape is an error event, as Anthropic's SDKs expect."""
        self.wire.channel.dataReceived(post(STREAM))
        self.body()
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        document = json.dumps(error).encode()
        protocol.dataReceived(
            b"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(document), document)
        )
        event = self.body()
        self.assertTrue(event.startswith(b"event: error\ndata: "))
        self.assertEqual(json.loads(event.partition(b"data: ")[2]), error)

    def test_anthropic_start_fails(self) -> None:
        """On C{/v1/messages}: comments, then an error event in Anthropic's shape."""
        body = b'{"model": "llama-3", "stream": true, "max_tokens": 9, "messages": []}'
        self.wire.channel.dataReceived(post(body, b"/v1/messages"))
        self.assertEqual(comments(self.body()), [b": lmproxy: starting chat"])
        self.backends.fail_start("chat", "it broke")
        event = self.body()
        self.assertTrue(event.startswith(b"event: error\ndata: "))
        self.assertEqual(
            json.loads(event.partition(b"data: ")[2]),
            {"type": "error", "error": {"type": "api_error", "message": "it broke"}},
        )

    def test_model_answers_500_text(self) -> None:
        self.wire.channel.dataReceived(post(STREAM))
        self.body()
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom")
        error = json.loads(self.body()[len(b"data: ") :])["error"]
        self.assertEqual(error["message"], "Service 'chat' answered 500: boom")
        self.assertEqual(error["type"], "server_error")

    def test_model_answers_until_it_closes(self) -> None:
        """A body without a length, ended by its connection, is quoted too."""
        self.wire.channel.dataReceived(post(STREAM))
        self.body()
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nbusy")
        protocol.connectionLost(Failure(ConnectionDone()))
        error = json.loads(self.body()[len(b"data: ") :])["error"]
        self.assertEqual(error["message"], "Service 'chat' answered 503: busy")

    def test_model_answers_without_a_stream(self) -> None:
        self.wire.channel.dataReceived(post(STREAM))
        self.body()
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        error = json.loads(self.body()[len(b"data: ") :])["error"]
        self.assertEqual(error["message"], "Service 'chat' answered without a stream: {}")

    def test_client_leaves_while_waiting(self) -> None:
        """Its wait and its comments end; the start then forwards nothing."""
        self.wire.channel.dataReceived(post(STREAM))
        self.wire.reactor.advance(1)
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.wire.reactor.getDelayedCalls(), [])
        self.backends.finish_start("chat")
        self.assertEqual(self.wire.reactor.tcpClients, [])
        self.assertEqual(self.wire.api.stats.of("chat").answered, {("llama-3", 499): 1})

    def test_client_leaves_mid_stream(self) -> None:
        """After the feedback, the model's stream is dropped as usual."""
        self.wire.channel.dataReceived(post(STREAM))
        self.backends.finish_start("chat")
        protocol, backend = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n"
        )
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        # Stopped (a real transport closes): the model stops generating.
        self.assertEqual(backend.producerState, "stopped")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_progress_only_for_chat_completions(self) -> None:
        body = b'{"model": "llama-3", "stream": true, "prompt": "x"}'
        self.wire.channel.dataReceived(post(body, b"/v1/completions"))
        data = self.body()
        self.assertEqual(comments(data), [b": lmproxy: starting chat"])
        self.assertEqual(progress(data), [])
        self.assertNotIn(b"data:", data)
        self.wire.channel.connectionLost(Failure(ConnectionLost()))


class CommentsTests(FeedbackTestCase):
    """C{LoadingFeedback: "comments"}: comments only."""

    mode = LOADING_FEEDBACK_COMMENTS

    def test_comments_only(self) -> None:
        self.wire.channel.dataReceived(post(STREAM))
        self.wire.reactor.advance(1)
        data = self.body()
        self.assertEqual(
            comments(data), [b": lmproxy: starting chat", b": lmproxy: starting chat, 1 s so far"]
        )
        self.assertNotIn(b"data:", data)
        self.answer_stream()
        self.assertEqual(self.body(), EVENTS)


class UnchangedTests(FeedbackTestCase):
    """What the feedback leaves as it was."""

    def test_not_streaming(self) -> None:
        self.wire.channel.dataReceived(post())
        self.wire.reactor.advance(3)
        self.assertEqual(self.wire.client.value(), b"")
        self.backends.finish_start("chat")
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 201 Made", b"ok"))

    def test_stream_false(self) -> None:
        self.wire.channel.dataReceived(post(b'{"model": "llama-3", "stream": false}'))
        self.assertEqual(self.wire.client.value(), b"")
        self.wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_running_service(self) -> None:
        """The stream is the model's, head and all."""
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire.channel.dataReceived(post(STREAM))
        self.assertEqual(self.wire.client.value(), b"")
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"X-Model: 1\r\nContent-Length: 12\r\n\r\ndata: [DONE]"
        )
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"data: [DONE]"))
        self.assertEqual(headers[b"x-model"], [b"1"])

    def test_off(self) -> None:
        wire = Wire(self.backends, config=feedback_config(LOADING_FEEDBACK_OFF))
        wire.channel.dataReceived(post(STREAM))
        wire.reactor.advance(3)
        self.assertEqual(wire.client.value(), b"")
        wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_reload(self) -> None:
        """The port follows a change of the key, both ways."""
        self.wire.api.reconfigure(feedback_config(LOADING_FEEDBACK_OFF))
        self.wire.channel.dataReceived(post(STREAM))
        self.assertEqual(self.wire.client.value(), b"")
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        wire = Wire(self.backends, config=feedback_config(LOADING_FEEDBACK_OFF))
        wire.api.reconfigure(feedback_config(LOADING_FEEDBACK_COMMENTS))
        wire.channel.dataReceived(post(STREAM))
        self.assertTrue(wire.client.value().startswith(b"HTTP/1.1 200 OK"))
        wire.channel.connectionLost(Failure(ConnectionLost()))


class _Channel:
    """Records what L{LeanRoutes.forward} gives back."""

    def __init__(self) -> None:
        self.given_back: list[bytes] = []

    def fall_back(self, raw: bytes) -> None:
        self.given_back.append(raw)


class HotPathTests(SynchronousTestCase):
    """L{LeanRoutes.forward} gives back the streams that would get feedback."""

    def forward(self, body: bytes, mode: str = LOADING_FEEDBACK_PROGRESS) -> list[bytes]:
        backends = RecordingBackends()
        feedback = LoadingFeedback(backends, Wire(backends).reactor, mode, {})
        routes = LeanRoutes(
            cast(Any, None), frozenset(), Wire(backends).api.models, lambda h: None, 100, feedback
        )
        channel = _Channel()
        routes.forward(cast(FrontChannel, channel), cast(RequestHead, None), body, b"raw")
        return channel.given_back

    def test_stream_for_a_stopped_service(self) -> None:
        self.assertEqual(self.forward(STREAM), [b"raw"])

    def test_comments_too(self) -> None:
        self.assertEqual(self.forward(STREAM, LOADING_FEEDBACK_COMMENTS), [b"raw"])

    def test_wanted(self) -> None:
        """Only a stream, for a service that is not running, with the feedback on."""
        backends = RecordingBackends()
        limits: dict[str, RequestLimit] = {}
        feedback = LoadingFeedback(
            backends, Wire(backends).reactor, LOADING_FEEDBACK_COMMENTS, limits
        )
        self.assertEqual(
            (feedback.wanted("chat", True), feedback.wanted("chat", False)), (True, False)
        )
        backends.set_state("chat", ServiceState.STARTING)
        self.assertTrue(feedback.wanted("chat", True))
        backends.set_state("chat", ServiceState.RUNNING)
        self.assertFalse(feedback.wanted("chat", True))
        limits["chat"] = limit = RequestLimit(1, None)
        self.assertFalse(feedback.wanted("chat", True))  # a turn is free
        limit.take()
        self.assertTrue(feedback.wanted("chat", True))  # it would wait for one
        backends.set_state("chat", ServiceState.STOPPED)
        feedback.mode = LOADING_FEEDBACK_OFF
        self.assertFalse(feedback.wanted("chat", True))


class ProgressTextTests(SynchronousTestCase):
    """L{progress_text}: a few words on how far the start has come."""

    def status(self, **changes: Any) -> Any:
        backends = ScriptedBackends(CONFIG)
        backends.service_changes["chat"] = changes
        return backends.service_status("chat")

    def test_starting(self) -> None:
        self.assertEqual(progress_text(self.status(), 10.0, 10.0), "starting chat")
        self.assertEqual(progress_text(self.status(), 14.9, 10.0), "starting chat, 4 s so far")

    def test_estimate(self) -> None:
        status = self.status(start_estimate=12.4, status=ServiceState.STARTING, starting_since=6.0)
        self.assertEqual(
            progress_text(status, 10.0, 10.0), "starting chat, about 12 s (learned), 4 s so far"
        )

    def test_waiting_for_resources(self) -> None:
        waiting = WaitingFor(
            since=8.0,
            shortages=(Shortage("VRAM", 20, 8, held_by=("big", "small")),),
            behind=("other",),
        )
        status = self.status(status=ServiceState.WAITING_FOR_RESOURCES, waiting_for=waiting)
        self.assertEqual(
            progress_text(status, 10.0, 10.0),
            "waiting for resources: VRAM (needs 20, 8 free, held by big, small); behind other,"
            " 2 s so far",
        )

    def test_waiting_its_turn(self) -> None:
        status = self.status(
            status=ServiceState.WAITING_FOR_RESOURCES,
            waiting_for=WaitingFor(since=10.0, shortages=(Shortage("RAM", 1, None),)),
        )
        self.assertEqual(
            progress_text(status, 10.0, 10.0), "waiting for resources: RAM (needs 1, unknown free)"
        )


class TurnTests(SynchronousTestCase):
    """A stream that waits for a turn of a running service gets feedback too."""

    def setUp(self) -> None:
        chat, *others = CONFIG.services
        config = evolve(
            feedback_config(),
            services=(evolve(chat, max_concurrent_requests=1, max_queued_requests=1), *others),
        )
        self.backends = RecordingBackends(config)
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.first = Wire(self.backends, config=config)
        # A second client of the same port: its own connection, the port's turns.
        self.second = self.first.api.site().buildProtocol(None)
        self.second_client = StringTransport()
        self.second.makeConnection(self.second_client)

    def test_turn_then_the_model(self) -> None:
        """Comments say it waits for a turn; once the first answer is over, its stream."""
        self.first.channel.dataReceived(post(CHAT))  # holds the only turn
        protocol, backend = self.first.backend()
        self.second.dataReceived(post(STREAM))
        head, _, body = self.second_client.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(
            comments(b"".join(chunks(body))), [b": lmproxy: waiting for a turn of chat"]
        )
        self.second_client.clear()
        self.first.reactor.advance(1)
        self.assertEqual(
            progress(b"".join(chunks(self.second_client.value()))),
            ["waiting for a turn of chat, 1 s so far\n"],
        )
        self.second_client.clear()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # turn free
        # The second request goes on the pooled connection the first one left.
        self.assertIn(b'"stream": true', backend.value())
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(EVENTS), EVENTS)
        )
        self.assertEqual(b"".join(chunks(self.second_client.value())), EVENTS)
        self.assertEqual(self.first.api.stats.of("chat").answered, {("llama-3", 200): 2})

    def test_queue_wait_times_out(self) -> None:
        """A turn that never comes: the 429, as the event that ends the stream."""
        self.first.channel.dataReceived(post(CHAT))
        self.second.dataReceived(post(STREAM))
        self.second_client.clear()
        self.first.reactor.advance(CONFIG.max_wait + 1)
        events = b"".join(chunks(self.second_client.value())).split(b"\n\n")
        error = json.loads(events[-2][len(b"data: ") :])
        self.assertEqual(error["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(self.first.api.stats.of("chat").answered, {("llama-3", 429): 1})
