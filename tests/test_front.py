"""
Tests for L{lmproxy.listen.front}, L{lmproxy.listen.leanforward} and
L{lmproxy.listen.requesthead}: the OpenAI port's hot path and its hand-over
to twisted.web, on one connection.  Both the client's and the backends'
connections are C{StringTransport}s (L{tests.test_openai.Wire}); the clock
is a fake one.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, Secret
from lmproxy.interfaces import ServiceState
from lmproxy.listen.requesthead import head_end, parse_head
from lmproxy.listen.timeouts import BODY_STALL_SECONDS, HEADERS_SECONDS, IDLE_SECONDS
from tests.test_openai import CONFIG, RecordingBackends, Wire, forwarded

CHAT = b'{"model": "llama-3"}'


def post(body: bytes = CHAT, path: bytes = b"/v1/chat/completions", extra: bytes = b"") -> bytes:
    """A whole request, its body sized."""
    return b"POST %s HTTP/1.1\r\nHost: lmproxy\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path,
        extra,
        len(body),
        body,
    )


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class HotPathTests(SynchronousTestCase):
    """Requests that the hot path forwards, and those it leaves to twisted.web."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def answer(self, data: bytes = OK) -> None:
        protocol, _ = self.wire.backend()
        protocol.dataReceived(data)

    def test_hot_then_twisted_web_then_hot(self) -> None:
        """One kept connection: a forwarded request, the model list, a forwarded one."""
        self.wire.channel.dataReceived(post())
        protocol, backend = self.wire.backend()
        protocol.dataReceived(OK)
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))
        self.wire.channel.dataReceived(b"GET /v1/models HTTP/1.1\r\nHost: lmproxy\r\n\r\n")
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn("llama-3", [m["id"] for m in json.loads(body)["data"]])
        backend.clear()
        self.wire.channel.dataReceived(post())
        # The pooled backend connection takes the third request.
        self.assertEqual(forwarded(backend)[0], b"POST /v1/chat/completions HTTP/1.1")
        protocol.dataReceived(OK)
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))
        self.assertFalse(self.wire.client.disconnecting)

    def test_stale_kept_connection(self) -> None:
        """
        The backend closed the kept connection while it was idle: the next
        request goes again on a new connection, and is answered.
        """
        self.wire.channel.dataReceived(post())
        protocol, backend = self.wire.backend()
        protocol.dataReceived(OK)
        self.wire.response()
        backend.clear()
        self.wire.channel.dataReceived(post())
        self.assertEqual(forwarded(backend)[2], CHAT)  # on the kept connection
        protocol.connectionLost(Failure(ConnectionDone()))
        fresh, second = self.wire.backend()
        self.assertEqual(forwarded(second)[2], CHAT)
        fresh.dataReceived(OK)
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_pipelined_requests_answered_in_order(self) -> None:
        """Two requests in one segment: the second is read once the first is answered."""
        self.wire.channel.dataReceived(
            post() + b"GET /v1/models/llama-3 HTTP/1.1\r\nHost: lmproxy\r\n\r\n"
        )
        self.assertEqual(self.wire.client.value(), b"")  # the model waits its turn
        self.answer()
        first, _, rest = self.wire.client.value().partition(b"ok")
        self.assertTrue(first.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b'"id": "llama-3"', rest)

    def test_bad_json_answered_by_the_route(self) -> None:
        """A body that is not JSON gets the route's own 400, and the connection goes on."""
        self.wire.channel.dataReceived(post(b"{nope"))
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 400 Bad Request")
        self.assertIn("not valid JSON", json.loads(body)["error"]["message"])
        self.wire.channel.dataReceived(post())
        self.answer()
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))

    def test_unknown_model_answered_by_the_route(self) -> None:
        self.wire.channel.dataReceived(post(b'{"model": "nope"}'))
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(json.loads(body)["error"]["code"], "model_not_found")
        self.assertEqual(self.backends.acquired, [])

    def test_body_in_pieces(self) -> None:
        request = post()
        for i in range(len(request)):
            self.wire.channel.dataReceived(request[i : i + 1])
        _, backend = self.wire.backend()
        self.assertEqual(forwarded(backend)[2], CHAT)

    def test_expect_continue(self) -> None:
        """A client that waits for 100 Continue gets it, then its body is forwarded."""
        request = post(extra=b"Expect: 100-continue\r\n")
        head = request[: head_end(request)]
        self.wire.channel.dataReceived(head)
        self.assertEqual(self.wire.client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wire.client.clear()
        self.wire.channel.dataReceived(CHAT)
        _, backend = self.wire.backend()
        self.assertEqual(forwarded(backend)[2], CHAT)
        self.assertNotIn(b"Expect: 100-continue", forwarded(backend)[1])

    def test_connection_close(self) -> None:
        """A client that says close gets Connection: close, then the connection closes."""
        self.wire.channel.dataReceived(post(extra=b"Connection: close\r\n"))
        self.answer()
        status, headers, body = self.wire.response()
        self.assertEqual(
            (status, headers[b"connection"], body), (b"HTTP/1.1 200 OK", [b"close"], b"ok")
        )
        self.assertTrue(self.wire.client.disconnecting)

    def test_chunked_answer_passes_as_chunks(self) -> None:
        self.wire.channel.dataReceived(post())
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        # A stream: its head goes out before its first event.
        self.assertTrue(self.wire.client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        protocol.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(self.wire.response(raw=True)[2], b"3\r\nabc\r\n0\r\n\r\n")

    def test_answer_ending_with_the_connection_is_chunked(self) -> None:
        self.wire.channel.dataReceived(post())
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        _status, headers, body = self.wire.response()
        self.assertEqual((headers[b"transfer-encoding"], body), ([b"chunked"], b"abc"))
        self.assertFalse(self.wire.client.disconnecting)

    def test_no_body_answer(self) -> None:
        self.wire.channel.dataReceived(post())
        self.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 204 No Content", b""))
        self.assertNotIn(b"content-length", headers)
        self.assertNotIn(b"transfer-encoding", headers)


class HandOverTests(SynchronousTestCase):
    """Heads the hot path is not sure of go to twisted.web, with the rest of the connection."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def test_chunked_request_body(self) -> None:
        """twisted.web reads a chunked body, forwards it, and keeps the connection."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
        )
        protocol, backend = self.wire.backend()
        self.assertEqual(forwarded(backend)[2], CHAT)
        protocol.dataReceived(OK)
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))
        # Later requests on it are twisted.web's too, and work.
        backend.clear()
        self.wire.channel.dataReceived(post())
        self.assertEqual(forwarded(backend)[2], CHAT)

    def test_length_and_chunked_is_not_smuggled(self) -> None:
        """Content-Length beside Transfer-Encoding: twisted.web frames it, nothing is smuggled."""
        smuggled = b"GET /v1/models HTTP/1.1\r\nHost: lmproxy\r\n\r\n"
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
            % (5 + len(smuggled), smuggled)
        )
        self.assertEqual(self.backends.acquired, [])
        self.assertTrue(self.wire.client.value().startswith(b"HTTP/1.1 400"))

    def test_two_lengths(self) -> None:
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Content-Length: 20\r\nContent-Length: 2\r\n\r\n" + CHAT
        )
        self.assertEqual(self.backends.acquired, [])
        self.assertTrue(self.wire.client.value().startswith(b"HTTP/1.1 400"))

    def test_bare_line_feeds(self) -> None:
        """Lines that end in LF alone end no head, as with twisted.web: a 408 in time."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\nHost: lmproxy\nContent-Length: 20\n\n" + CHAT
        )
        self.wire.reactor.advance(HEADERS_SECONDS + 0.1)
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(self.backends.acquired, [])

    def test_body_over_the_limit(self) -> None:
        """The limit's 413 comes before the body, as twisted.web's site answers it."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\nContent-Length: 5000\r\n\r\n"
        )
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(json.loads(body)["error"]["code"], "request_too_large")
        self.assertTrue(self.wire.client.disconnecting)

    def test_key_refused(self) -> None:
        config = Config(services=CONFIG.services, openai_api_keys=(Secret("k"),))
        backends = RecordingBackends(config)
        backends.set_state("chat", ServiceState.RUNNING)
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(post())
        status, _, _body = wire.response()
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(backends.acquired, [])
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(post(extra=b"Authorization: Bearer k\r\n"))
        self.assertEqual(backends.acquired, ["chat"])


class ExchangeTests(SynchronousTestCase):
    """The lease and the backend connection of a forwarded request, through its ends."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.wire = Wire(self.backends)

    def test_client_leaves_while_the_service_starts(self) -> None:
        self.wire.channel.dataReceived(post())
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.backends.finish_start("chat")
        self.assertEqual(self.wire.reactor.tcpClients, [])

    def test_client_leaves_while_the_backend_connects(self) -> None:
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire.channel.dataReceived(post())
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        # The connection attempt is given up.
        self.assertTrue(self.wire.reactor.connectors[-1].stoppedConnecting)

    def test_unavailable(self) -> None:
        self.wire.channel.dataReceived(post())
        self.backends.fail_start("chat", "it broke")
        status, _headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(json.loads(body)["error"]["message"], "it broke")
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertFalse(self.wire.client.disconnecting)

    def test_connect_refused_reconnects_once(self) -> None:
        self.backends.set_state("embed", ServiceState.RUNNING)
        self.wire.channel.dataReceived(post(b'{"model": "embedder"}', b"/v1/embeddings"))
        for _ in range(2):
            _, _, factory, _, _ = self.wire.reactor.tcpClients[-1]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.backends.reconnects, ["embed"])
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertIn("Could not connect", json.loads(body)["error"]["message"])
        self.assertEqual(self.backends.counts("embed"), (0, 0))

    def test_backend_closes_without_an_answer(self) -> None:
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire.channel.dataReceived(post())
        protocol, _ = self.wire.backend()
        protocol.connectionLost(Failure(ConnectionDone()))
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertEqual(json.loads(body)["error"]["code"], "bad_gateway")
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_client_full_pauses_the_next_answer(self) -> None:
        """A client whose connection is full when a request goes out pauses its backend at once."""
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire.channel.pauseProducing()
        self.wire.channel.dataReceived(post())
        _, backend = self.wire.backend()
        self.assertEqual(backend.producerState, "paused")


class DeadlineTests(SynchronousTestCase):
    """The hot path's own bounds on slow clients and idle connections."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def test_slow_head(self) -> None:
        self.wire.channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\n")
        self.wire.reactor.advance(HEADERS_SECONDS - 0.1)
        self.assertEqual(self.wire.client.value(), b"")
        self.wire.reactor.advance(0.2)
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(json.loads(body)["error"]["code"], "request_timeout")
        self.assertTrue(self.wire.client.disconnecting)

    def test_stalled_body(self) -> None:
        request = post()
        self.wire.channel.dataReceived(request[:-5])
        self.wire.reactor.advance(BODY_STALL_SECONDS + 0.1)
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(self.backends.acquired, [])

    def test_no_deadline_while_answering(self) -> None:
        self.wire.channel.dataReceived(post())
        self.wire.reactor.advance(IDLE_SECONDS * 3)
        self.assertFalse(self.wire.client.disconnecting)
        self.wire.backend()[0].dataReceived(OK)
        self.assertEqual(self.wire.response()[::2], (b"HTTP/1.1 200 OK", b"ok"))

    def test_idle_after_an_answer(self) -> None:
        """A kept connection idles out from its last answer, not from its first request."""
        self.wire.reactor.advance(IDLE_SECONDS - 1)
        self.wire.channel.dataReceived(post())
        self.wire.backend()[0].dataReceived(OK)
        self.wire.reactor.advance(IDLE_SECONDS - 1)
        self.assertFalse(self.wire.client.disconnecting)
        self.wire.reactor.advance(2)
        self.assertTrue(self.wire.client.disconnecting)


class RequestHeadTests(SynchronousTestCase):
    """L{parse_head} takes plain heads only."""

    def parse(self, head: bytes) -> object:
        return parse_head(head + b"\r\n\r\n")

    def test_plain(self) -> None:
        head = parse_head(post(b"")[: head_end(post(b""))])
        assert head is not None
        self.assertEqual(
            (head.method, head.path, head.content_length), (b"POST", b"/v1/chat/completions", 0)
        )
        self.assertEqual(head.getRawHeaders(b"HOST"), [b"lmproxy"])
        self.assertTrue(head.plain_host())

    def test_query(self) -> None:
        head = parse_head(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head is not None
        self.assertEqual((head.target, head.path), (b"/a?b=1", b"/a"))

    def test_not_plain(self) -> None:
        for head in [
            b"POST  /a HTTP/1.1",  # two spaces
            b"POST /a HTTP/2",
            b"POST http://x/a HTTP/1.1",  # absolute form
            b"POST /a HTTP/1.1\r\nHost : x",  # space before the colon
            b"POST /a HTTP/1.1\r\nHost: x\r\n folded",
            b"POST /a HTTP/1.1\r\nX: a\rb",
            b"POST /a HTTP/1.1\r\nX: a\x00b",
            b"POST /a HTTP/1.1\r\nno colon",
        ]:
            self.assertIsNone(self.parse(head), head)

    def test_framing(self) -> None:
        for fields, length in [
            (b"", 0),
            (b"Content-Length: 12", 12),
            (b"Content-Length: +12", None),
            (b"Content-Length: 1, 1", None),
            (b"Content-Length: 1\r\nContent-Length: 1", None),
            (b"Transfer-Encoding: chunked", None),
        ]:
            head = parse_head(
                b"POST /a HTTP/1.1\r\n%s\r\n\r\n" % fields
                if fields
                else b"POST /a HTTP/1.1\r\n\r\n"
            )
            assert head is not None
            self.assertEqual(head.content_length, length, fields)

    def test_hosts(self) -> None:
        for host, plain in [
            (b"localhost:8080", True),
            (b"[::1]:8080", True),
            (b"a." * 3 + b"b", True),
            (b"x" * 64, False),  # a label IDNA refuses
            (b"a..b", False),
            (b"caf\xc3\xa9", False),
        ]:
            head = parse_head(b"POST /a HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
            assert head is not None
            self.assertEqual(head.plain_host(), plain, host)


class LogLineTests(SynchronousTestCase):
    """A client that leaves is one plain line, saying when it left."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def left(self) -> list[str]:
        with capturedLogs() as events:
            self.wire.channel.connectionLost(Failure(ConnectionLost()))
        return [formatEvent(e) for e in events]

    def test_mid_answer(self) -> None:
        self.wire.channel.dataReceived(post())
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertEqual(
            self.left(), ["POST /v1/chat/completions -> chat: the client left mid-answer"]
        )

    def test_before_the_answer(self) -> None:
        self.wire.channel.dataReceived(post())
        self.assertEqual(
            self.left(), ["POST /v1/chat/completions -> chat: the client left before the response"]
        )
