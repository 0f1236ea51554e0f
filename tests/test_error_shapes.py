"""
Tests of the shape and the retry headers of every error lmproxy answers
itself on the OpenAI port (L{lmproxy.openai_errors}): Anthropic's shape on
C{/v1/messages} and C{/v1/messages/count_tokens}, OpenAI's everywhere else;
C{Retry-After} where waiting helps, C{x-should-retry: false} where retrying
cannot.  Each forwarding failure is tried on both paths of the port: the hot
path (a sized body) and twisted.web's routes (the same request with a
chunked body); the early refusals of the site on both of its channels.  The
client and backend connections are C{StringTransport}s
(L{tests.test_openai.Wire}); the clock is a fake one.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, Secret
from lmproxy.core.waiters import RETRY_AFTER_RESOURCES, Waiters
from lmproxy.interfaces import ServiceState, ServiceUnavailable
from lmproxy.listen.openai import OpenAiApi
from lmproxy.listen.timeouts import BODY_STALL_SECONDS, HEADERS_SECONDS
from lmproxy.openai_errors import ANTHROPIC_PATHS, anthropic_type, error_body, retry_headers
from tests.test_openai import CONFIG, FakeModelServer, RecordingBackends, Wire, forwarded

MESSAGES = b"/v1/messages"
COUNT_TOKENS = b"/v1/messages/count_tokens"
CHAT = b"/v1/chat/completions"
ANTHROPIC = (MESSAGES, COUNT_TOKENS)
BODY = b'{"model": "llama-3", "max_tokens": 8, "messages": []}'
KEYED = Config(services=CONFIG.services, openai_api_keys=(Secret("k"),))


def request(path: bytes, body: bytes = BODY, chunked: bool = False, extra: bytes = b"") -> bytes:
    """
    A whole POST: with a sized body the hot path takes it, with a chunked
    one twisted.web's route does.
    """
    head = b"POST %s HTTP/1.1\r\nHost: lmproxy\r\n%s" % (path, extra)
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class ShapeAssertions(SynchronousTestCase):
    """Checks of a raw answer's error."""

    def assertShape(
        self, path: bytes, body: bytes, status: int, message: str | None = None
    ) -> dict[str, Any]:
        """
        C{body} is an error in the shape of C{path}'s API (with C{message}, if
        given), and no more: Anthropic's type follows C{status}.

        @return: the error object.
        """
        document = json.loads(body)
        if path in ANTHROPIC_PATHS:
            self.assertEqual(set(document), {"type", "error"})
            self.assertEqual(document["type"], "error")
            self.assertEqual(set(document["error"]), {"type", "message"})
            self.assertEqual(document["error"]["type"], anthropic_type(status))
        else:
            self.assertEqual(list(document), ["error"])
            self.assertEqual(set(document["error"]), {"message", "type", "param", "code"})
        if message is not None:
            self.assertEqual(document["error"]["message"], message)
        error: dict[str, Any] = document["error"]
        return error


class HelperTests(SynchronousTestCase):
    """L{error_body} and L{retry_headers} themselves."""

    def test_anthropic_types(self) -> None:
        """Anthropic's documented type of each status lmproxy answers."""
        expected = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            405: "invalid_request_error",
            408: "timeout_error",
            413: "request_too_large",
            429: "rate_limit_error",
            500: "api_error",
            502: "api_error",
            503: "api_error",
        }
        self.assertEqual({status: anthropic_type(status) for status in expected}, expected)

    def test_shape_by_path(self) -> None:
        """Anthropic's on its two paths only; OpenAI's elsewhere, and when the path is unknown."""
        anthropic = {"type": "error", "error": {"type": "not_found_error", "message": "m"}}
        openai = {"error": {"message": "m", "type": "t", "param": "model", "code": "c"}}
        for path in ANTHROPIC:
            self.assertEqual(error_body(path, 404, "m", "t", "model", "c"), anthropic)
        for other in (CHAT, b"/v1/messages/", b"/v1/messages/batches", b"/v1/message", None):
            self.assertEqual(error_body(other, 404, "m", "t", "model", "c"), openai)

    def test_retry_headers(self) -> None:
        """Every 4xx but 408, 409 and 429, and a 500, say not to retry; C{Retry-After} rounds up."""
        never = [(b"x-should-retry", b"false")]
        for status in (400, 401, 403, 404, 405, 413, 500):
            self.assertEqual(retry_headers(status), never)
        for status in (408, 409, 429, 502, 503):
            self.assertEqual(retry_headers(status), [])
        self.assertEqual(retry_headers(503, 0.2), [(b"Retry-After", b"1")])
        self.assertEqual(retry_headers(503, 4.5, retryable=False), [(b"Retry-After", b"5"), *never])

    def test_resources_wait_says_when(self) -> None:
        """A client that gave up waiting for resources may ask again in a few seconds."""
        clock = Clock()
        waiting = Waiters("A", clock, 30.0, lambda: None).add(with_deadline=True)
        clock.advance(30)
        error = self.failureResultOf(waiting, ServiceUnavailable).value
        self.assertEqual((error.retry_after, error.retryable), (RETRY_AFTER_RESOURCES, True))

    def test_messages_are_hot_json_routes(self) -> None:
        """Both paths of the port take the Messages paths (the hot path's come from the route)."""
        api = OpenAiApi(
            RecordingBackends(), CONFIG, RequestTraversalAgent(FakeModelServer()), Clock()
        )
        self.assertLessEqual(set(ANTHROPIC), api.json_paths())


class WireCase(ShapeAssertions):
    """Requests on a L{Wire}: the port's own site over C{StringTransport}s."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.wire = Wire(self.backends)

    def each(self, paths: tuple[bytes, ...] = (*ANTHROPIC, CHAT)) -> list[tuple[bytes, bool]]:
        """Every (path, chunked): each path on both paths of the port."""
        return [(path, chunked) for path in paths for chunked in (False, True)]

    def fresh(self, config: Config = CONFIG) -> Wire:
        """A new client connection, and new backends (each case starts from nothing)."""
        self.backends = RecordingBackends(config)
        self.wire = Wire(self.backends, config=config)
        return self.wire

    def answer(self) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        status, headers, body = self.wire.response()
        return int(status.split(b" ")[1]), headers, body


class ForwardingErrorTests(WireCase):
    """The answers of L{lmproxy.listen.forwarderrors}, on both paths, in each shape."""

    def test_unavailable_with_back_off(self) -> None:
        """A failed start: 503, its back-off as C{Retry-After}, the SDKs told not to retry."""
        error = ServiceUnavailable("it broke", retry_after=2.5, retryable=False)
        for path, chunked in self.each():
            wire = self.fresh()
            wire.channel.dataReceived(request(path, chunked=chunked))
            self.backends.fail_start("chat", error=error)
            status, headers, body = self.answer()
            self.assertEqual(status, 503)
            self.assertShape(path, body, 503, "it broke")
            self.assertEqual(headers[b"retry-after"], [b"3"])
            self.assertEqual(headers[b"x-should-retry"], [b"false"])

    def test_unavailable_retryable(self) -> None:
        """A wait for resources that timed out: retry after its wait, nothing else said."""
        error = ServiceUnavailable("gave up waiting", retry_after=RETRY_AFTER_RESOURCES)
        for path, chunked in self.each():
            wire = self.fresh()
            wire.channel.dataReceived(request(path, chunked=chunked))
            self.backends.fail_start("chat", error=error)
            status, headers, body = self.answer()
            self.assertShape(path, body, status, "gave up waiting")
            self.assertEqual(headers[b"retry-after"], [b"%d" % RETRY_AFTER_RESOURCES])
            self.assertNotIn(b"x-should-retry", headers)

    def test_queue_full(self) -> None:
        """Every turn taken, no room in the queue: 429 with C{Retry-After: 1}."""
        chat, *others = CONFIG.services
        config = evolve(
            CONFIG,
            services=(evolve(chat, max_concurrent_requests=1, max_queued_requests=0), *others),
        )
        for path, chunked in self.each():
            wire = self.fresh(config)
            self.backends.set_state("chat", ServiceState.RUNNING)
            self.successResultOf(wire.api.limits["chat"].take())  # the one turn
            wire.channel.dataReceived(request(path, chunked=chunked))
            status, headers, body = self.answer()
            self.assertEqual(status, 429)
            self.assertShape(path, body, 429)
            self.assertEqual(headers[b"retry-after"], [b"1"])
            self.assertNotIn(b"x-should-retry", headers)
            self.assertEqual(self.backends.acquired, [])

    def test_no_response(self) -> None:
        """A backend that closes without answering: 502, which the SDKs may retry."""
        for path, chunked in self.each():
            wire = self.fresh()
            self.backends.set_state("chat", ServiceState.RUNNING)
            wire.channel.dataReceived(request(path, chunked=chunked))
            protocol, _ = wire.backend()
            protocol.connectionLost(Failure(ConnectionDone()))
            status, headers, body = self.answer()
            self.assertEqual(status, 502)
            self.assertShape(path, body, 502)
            self.assertNotIn(b"x-should-retry", headers)
            self.assertNotIn(b"retry-after", headers)

    def test_connect_failed(self) -> None:
        """Refused, and refused again after the reconnect: 503, which the SDKs may retry."""
        for path, chunked in self.each():
            wire = self.fresh()
            self.backends.set_state("embed", ServiceState.RUNNING)
            wire.channel.dataReceived(request(path, b'{"model": "embedder"}', chunked))
            for _ in range(2):
                _, _, factory, _, _ = wire.reactor.tcpClients[-1]
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            status, headers, body = self.answer()
            self.assertEqual(status, 503)
            self.assertIn("Could not connect", self.assertShape(path, body, 503)["message"])
            self.assertNotIn(b"x-should-retry", headers)

    def test_internal_error(self) -> None:
        """A bug of lmproxy's: 500, and no retry (it would fail the same way)."""
        for path, chunked in self.each():
            wire = self.fresh()
            self.backends.acquire = lambda service: fail(RuntimeError("bug"))  # type: ignore[method-assign]
            wire.channel.dataReceived(request(path, chunked=chunked))
            status, headers, body = self.answer()
            self.assertEqual(status, 500)
            self.assertShape(path, body, 500, "Internal error in lmproxy.")
            self.assertEqual(headers[b"x-should-retry"], [b"false"])
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_backend_errors_pass_unchanged(self) -> None:
        """A model server's own error (any shape) reaches the client byte for byte, headers too."""
        own = b'{"error": {"code": 400, "message": "llama.cpp says no", "type": "x"}}'
        for path, chunked in self.each():
            wire = self.fresh()
            self.backends.set_state("chat", ServiceState.RUNNING)
            wire.channel.dataReceived(request(path, chunked=chunked))
            protocol, backend = wire.backend()
            self.assertEqual(forwarded(backend)[0], b"POST %s HTTP/1.1" % path)
            protocol.dataReceived(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(own), own)
            )
            status, headers, body = self.answer()
            self.assertEqual((status, body), (400, own))
            self.assertNotIn(b"x-should-retry", headers)

    def test_anthropic_stream_passes_unbuffered(self) -> None:
        """Anthropic's events reach the client one by one, as the backend sends them."""
        events = [
            b'event: message_start\ndata: {"type": "message_start"}\n\n',
            b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n',
            b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
        ]
        for chunked in (False, True):
            wire = self.fresh()
            self.backends.set_state("chat", ServiceState.RUNNING)
            wire.channel.dataReceived(request(MESSAGES, chunked=chunked))
            protocol, _ = wire.backend()
            protocol.dataReceived(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            seen = b""
            for event in events:
                protocol.dataReceived(b"%x\r\n%s\r\n" % (len(event), event))
                seen += event
                self.assertTrue(wire.client.value().endswith(b"%s\r\n" % event))
            protocol.dataReceived(b"0\r\n\r\n")
            self.assertEqual(wire.response()[2], seen)


class RouteErrorTests(WireCase):
    """The routes' own errors (the hot path hands these requests to them)."""

    def test_bad_requests(self) -> None:
        """Not JSON, not an object, no model, a model not a string: 400, never retried."""
        cases = [b'{"model": "llama-3",}', b"[]", b'{"messages": []}', b'{"model": 7}']
        for body in cases:
            for path, chunked in self.each():
                self.fresh().channel.dataReceived(request(path, body, chunked))
                status, headers, answer = self.answer()
                self.assertEqual(status, 400)
                self.assertShape(path, answer, 400)
                self.assertEqual(headers[b"x-should-retry"], [b"false"])
                self.assertEqual(self.backends.acquired, [])

    def test_unknown_model(self) -> None:
        for path, chunked in self.each():
            self.fresh().channel.dataReceived(request(path, b'{"model": "nope"}', chunked))
            status, headers, body = self.answer()
            self.assertEqual(status, 404)
            self.assertShape(path, body, 404, "The model 'nope' does not exist.")
            self.assertEqual(headers[b"x-should-retry"], [b"false"])

    def test_wrong_method(self) -> None:
        for path in (*ANTHROPIC, CHAT):
            wire = self.fresh()
            wire.channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: lmproxy\r\n\r\n" % path)
            status, headers, body = self.answer()
            self.assertEqual(status, 405)
            self.assertShape(path, body, 405)
            self.assertEqual(headers[b"allow"], [b"POST"])
            self.assertEqual(headers[b"x-should-retry"], [b"false"])

    def test_unknown_path(self) -> None:
        """Not one of Anthropic's paths, even under them: OpenAI's 404."""
        for path in (b"/v1/messages/batches", b"/v1/message"):
            self.fresh().channel.dataReceived(request(path))
            status, headers, body = self.answer()
            self.assertEqual(status, 404)
            self.assertShape(CHAT, body, 404)
            self.assertEqual(headers[b"x-should-retry"], [b"false"])

    def test_unroutable_url(self) -> None:
        self.fresh().channel.dataReceived(request(b"/v1/messages%FF"))
        status, headers, body = self.answer()
        self.assertEqual(status, 400)
        self.assertShape(CHAT, body, 400, "The URL is not valid UTF-8.")
        self.assertEqual(headers[b"x-should-retry"], [b"false"])


class EarlyRefusalTests(WireCase):
    """The site's refusals before the body is read: the path comes from the request line."""

    def test_no_key(self) -> None:
        """401 without a key or with a wrong one, in the path's shape; C{x-api-key} is accepted."""
        for path, chunked in self.each():
            for extra in (b"", b"x-api-key: wrong\r\n"):
                self.fresh(KEYED).channel.dataReceived(request(path, chunked=chunked, extra=extra))
                status, headers, body = self.answer()
                self.assertEqual(status, 401)
                self.assertShape(path, body, 401)
                self.assertEqual(headers[b"x-should-retry"], [b"false"])
                self.assertEqual(headers[b"www-authenticate"], [b"Bearer"])
        wire = self.fresh(KEYED)
        self.backends.set_state("chat", ServiceState.RUNNING)
        wire.channel.dataReceived(request(MESSAGES, extra=b"x-api-key: k\r\n"))
        self.assertEqual(self.backends.acquired, ["chat"])

    def test_body_too_large(self) -> None:
        """413 from Content-Length, and from a chunked body growing past the limit."""
        big = b'{"model": "llama-3", "pad": "%s"}' % (b"x" * 2000)
        for path, chunked in self.each():
            self.fresh().channel.dataReceived(request(path, big, chunked))
            status, headers, body = self.answer()
            self.assertEqual(status, 413)
            self.assertShape(path, body, 413)
            self.assertEqual(headers[b"x-should-retry"], [b"false"])
            self.assertTrue(self.wire.client.disconnecting)

    def test_query_is_not_the_path(self) -> None:
        self.fresh(KEYED).channel.dataReceived(request(MESSAGES + b"?beta=true"))
        status, _, body = self.answer()
        self.assertShape(MESSAGES, body, status)

    def test_hot_path_timeouts(self) -> None:
        """The hot path's 408s: headers too slow once the request line is in, a stalled body."""
        for path in (*ANTHROPIC, CHAT):
            wire = self.fresh()
            wire.channel.dataReceived(b"POST %s HTTP/1.1\r\nHost: lmproxy\r\n" % path)
            wire.reactor.advance(HEADERS_SECONDS + 0.1)
            status, headers, body = self.answer()
            self.assertEqual(status, 408)
            self.assertShape(path, body, 408)
            self.assertNotIn(b"x-should-retry", headers)  # the SDKs may retry a 408
            wire = self.fresh()
            wire.channel.dataReceived(request(path)[:-5])
            wire.reactor.advance(BODY_STALL_SECONDS + 0.1)
            status, _, body = self.answer()
            self.assertEqual(status, 408)
            self.assertShape(path, body, 408)

    def test_twisted_web_timeouts(self) -> None:
        """The same 408s from twisted.web's channel (a site without the hot path)."""
        for path in (*ANTHROPIC, CHAT):
            for sent in (b"POST %s HTTP/1.1\r\nHost: lmproxy\r\n" % path, request(path)[:-5]):
                clock = Clock()
                agent = RequestTraversalAgent(FakeModelServer())
                config = evolve(CONFIG, openai_max_body_bytes=1000)
                site = OpenAiApi(self.backends, config, agent, clock).site()
                channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
                client = StringTransport()
                channel.makeConnection(client)
                channel.dataReceived(sent)
                clock.advance(BODY_STALL_SECONDS + 0.1)
                head, _, body = client.value().partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 408 "), head)
                self.assertShape(path, body, 408)
                channel.connectionLost(Failure(ConnectionDone()))

    def test_timeout_before_the_request_line(self) -> None:
        """No request line yet, no path: OpenAI's shape."""
        wire = self.fresh()
        wire.channel.dataReceived(b"POST /v1/mess")
        wire.reactor.advance(HEADERS_SECONDS + 0.1)
        status, _, body = self.answer()
        self.assertEqual(status, 408)
        self.assertShape(CHAT, body, 408)
