"""
Tests for L{lmproxy.listen.upstream}: C{/upstream/{model}/{path}} passed
through to the model's service on the OpenAI port's front channel.  The
client's and the backend's connections are C{StringTransport}s
(L{tests.test_openai.Wire}); the clock is a fake one.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, Secret, ServiceConfig
from lmproxy.interfaces import ServiceState, ServiceUnavailable
from lmproxy.listen.timeouts import HEADERS_SECONDS, IDLE_SECONDS
from lmproxy.listen.upstream import HELD_BYTES
from lmproxy.listen.upstreamheads import resolve
from lmproxy.requeststats import CLIENT_LEFT
from tests.test_openai import CONFIG, RecordingBackends, Wire, forwarded

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def request(
    method: bytes = b"GET",
    target: bytes = b"/upstream/llama-3/props",
    extra: bytes = b"",
    body: bytes = b"",
) -> bytes:
    """A request's bytes: its head, with C{extra} header lines, and C{body}."""
    return b"%s %s HTTP/1.1\r\nHost: lmproxy\r\n%s\r\n%s" % (method, target, extra, body)


class ResolveTests(SynchronousTestCase):
    """Which model a path names, and what the backend's target is."""

    models = {"llama": "a", "org": "b", "org/model": "c", "Модель": "d", "a b+c": "e"}

    def test_plain(self) -> None:
        self.assertEqual(resolve(b"/upstream/llama/props", self.models), ("llama", b"/props"))

    def test_root(self) -> None:
        """No path after the model: C{/}; a trailing slash stays."""
        self.assertEqual(resolve(b"/upstream/llama", self.models), ("llama", b"/"))
        self.assertEqual(resolve(b"/upstream/llama/", self.models), ("llama", b"/"))
        self.assertEqual(resolve(b"/upstream/llama?x=1", self.models), ("llama", b"/?x=1"))

    def test_query(self) -> None:
        self.assertEqual(
            resolve(b"/upstream/llama/ws?clientId=1&a=%2F", self.models),
            ("llama", b"/ws?clientId=1&a=%2F"),
        )

    def test_longest_id_with_slash(self) -> None:
        self.assertEqual(resolve(b"/upstream/org/model/v1/x", self.models), ("org/model", b"/v1/x"))
        self.assertEqual(resolve(b"/upstream/org/model", self.models), ("org/model", b"/"))
        self.assertEqual(resolve(b"/upstream/org/other", self.models), ("org", b"/other"))

    def test_prefix_of_a_segment_is_not_a_model(self) -> None:
        """C{llama} is not the model of C{/upstream/llamas/x}."""
        self.assertIsNone(resolve(b"/upstream/llamas/x", self.models))
        self.assertEqual(resolve(b"/upstream/org/modelx", self.models), ("org", b"/modelx"))

    def test_percent_encoded(self) -> None:
        """An id may be percent-encoded, its slashes too; the rest stays as sent."""
        self.assertEqual(
            resolve(b"/upstream/org%2Fmodel/files/a%20b", self.models),
            ("org/model", b"/files/a%20b"),
        )
        self.assertEqual(
            resolve(b"/upstream/%D0%9C%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C/x", self.models),
            ("Модель", b"/x"),
        )
        self.assertEqual(resolve(b"/upstream/a%20b+c/x", self.models), ("a b+c", b"/x"))

    def test_unknown(self) -> None:
        self.assertIsNone(resolve(b"/upstream/", self.models))
        self.assertIsNone(resolve(b"/upstream/nope/x", self.models))
        self.assertIsNone(resolve(b"/upstream/%FF/x", self.models))


class PassthroughTestCase(SynchronousTestCase):
    """A wire whose chat service runs, unless a test says otherwise."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def connect(self) -> tuple[Protocol, StringTransport]:
        return self.wire.backend()

    def answered(self, service: str = "chat") -> dict[tuple[str, int], int]:
        return self.wire.api.stats.of(service).answered


class ForwardingTests(PassthroughTestCase):
    """What the backend gets, and what the client gets back."""

    def test_every_method(self) -> None:
        """Any method, the path rewritten, the query kept, the answer as the backend's."""
        for method in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"FOO"):
            wire = Wire(self.backends)
            body = b"" if method in (b"GET", b"OPTIONS") else b"xyz"
            extra = b"Content-Length: %d\r\n" % len(body) if body else b""
            wire.channel.dataReceived(request(method, b"/upstream/llama-3/a/b?c=1", extra, body))
            protocol, backend = wire.backend()
            line, _, sent = forwarded(backend)
            self.assertEqual((line, sent), (method + b" /a/b?c=1 HTTP/1.1", body))
            protocol.dataReceived(OK)
            self.assertEqual(wire.client.value(), OK)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(wire.client.disconnecting)
            self.assertEqual(wire.api.stats.of("chat").answered, {("llama-3", 200): 1})
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_headers(self) -> None:
        """Hop-by-hop headers dropped, Host the backend's, keys passed on, Connection: close."""
        self.wire.channel.dataReceived(
            request(
                b"POST",
                extra=b"Authorization: Bearer sk-1\r\n"
                b"x-api-key: sk-2\r\n"
                b"Connection: keep-alive, X-Hop\r\n"
                b"X-Hop: 1\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"Proxy-Authorization: Basic eA==\r\n"
                b"TE: trailers\r\n"
                b"Expect: 100-continue\r\n"
                b"Content-Length: 2\r\n",
                body=b"{}",
            )
        )
        _, backend = self.connect()
        self.assertEqual(
            forwarded(backend),
            (
                b"POST /props HTTP/1.1",
                [
                    b"Authorization: Bearer sk-1",
                    b"Connection: close",
                    b"Content-Length: 2",
                    b"Expect: 100-continue",
                    b"Host: 127.0.0.1:9001",
                    b"x-api-key: sk-2",
                ],
                b"{}",
            ),
        )

    def test_alias_and_encoded_id(self) -> None:
        """A model id with a slash and a space, percent-encoded, reaches its service."""
        self.wire.channel.dataReceived(request(target=b"/upstream/org%2Fmodel+v1%20beta/health"))
        _, backend = self.connect()
        self.assertEqual(forwarded(backend)[0], b"GET /health HTTP/1.1")
        self.assertEqual(self.backends.acquired, ["chat"])

    def test_body_streamed_before_it_is_complete(self) -> None:
        """A body far over the port's limit goes on as it comes."""
        size = 200 * 1024 * 1024
        self.wire.channel.dataReceived(
            request(b"POST", extra=b"Content-Length: %d\r\n" % size, body=b"a" * 1000)
        )
        _, backend = self.connect()
        self.assertEqual(forwarded(backend)[2], b"a" * 1000)
        self.wire.channel.dataReceived(b"b" * 5000)
        self.assertTrue(backend.value().endswith(b"a" * 1000 + b"b" * 5000))
        self.assertEqual(self.wire.client.value(), b"")  # no 413, no 100

    def test_chunked_body_passes_as_sent(self) -> None:
        chunks = b"3\r\nabc\r\n0\r\n\r\n"
        self.wire.channel.dataReceived(
            request(b"PUT", extra=b"Transfer-Encoding: chunked\r\n", body=chunks)
        )
        _, backend = self.connect()
        _, lines, body = forwarded(backend)
        self.assertIn(b"Transfer-Encoding: chunked", lines)
        self.assertEqual(body, chunks)

    def test_answer_streamed(self) -> None:
        """Each piece of the answer reaches the client as it comes (an SSE stream)."""
        self.wire.channel.dataReceived(request())
        protocol, _ = self.connect()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        protocol.dataReceived(head + b"data: 1\n\n")
        self.assertEqual(self.wire.client.value(), head + b"data: 1\n\n")
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        protocol.dataReceived(b"data: 2\n\n")
        self.assertTrue(self.wire.client.value().endswith(b"data: 2\n\n"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_status_after_continue(self) -> None:
        """A 100 Continue passes, and the final status is the one counted."""
        self.wire.channel.dataReceived(request(b"POST", extra=b"Content-Length: 2\r\n"))
        protocol, _ = self.connect()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n")
        protocol.dataReceived(b"\r\nHTTP/1.1 201 Created\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.answered(), {("llama-3", 201): 1})
        self.assertTrue(self.wire.client.value().startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))

    def test_websocket_upgrade(self) -> None:
        """An upgrade keeps its headers, and then bytes flow both ways."""
        self.wire.channel.dataReceived(
            request(
                target=b"/upstream/llama-3/ws?clientId=1",
                extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n",
            )
        )
        protocol, backend = self.connect()
        line, lines, _ = forwarded(backend)
        self.assertEqual(line, b"GET /ws?clientId=1 HTTP/1.1")
        self.assertIn(b"Upgrade: websocket", lines)
        self.assertIn(b"Connection: upgrade", lines)
        self.assertNotIn(b"Connection: close", lines)
        protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        backend.clear()
        self.wire.channel.dataReceived(b"\x81\x02hi")
        self.assertEqual(backend.value(), b"\x81\x02hi")
        protocol.dataReceived(b"\x81\x02yo")
        self.assertTrue(self.wire.client.value().endswith(b"\x81\x02yo"))
        # Silent for long: a proxied connection has no deadline.
        self.wire.reactor.advance(IDLE_SECONDS * 10)
        self.assertFalse(self.wire.client.disconnecting)
        self.wire.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backend.disconnecting)
        self.assertEqual(self.answered(), {("llama-3", CLIENT_LEFT): 1})

    def test_after_a_hot_request(self) -> None:
        """A kept connection may pass through after a forwarded request."""
        self.wire.channel.dataReceived(request(b"GET", b"/v1/models"))
        self.assertTrue(self.wire.response()[0].startswith(b"HTTP/1.1 200"))
        self.wire.channel.dataReceived(request())
        _, backend = self.connect()
        self.assertEqual(forwarded(backend)[0], b"GET /props HTTP/1.1")


class CorsTests(SynchronousTestCase):
    """A page of an allowed origin: lmproxy's CORS headers, as on every path."""

    page = b"http://page.example:3000"

    def setUp(self) -> None:
        config = Config(services=CONFIG.services, openai_allowed_origins=(self.page.decode(),))
        self.backends = RecordingBackends(config)
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends, config=config)

    def test_answer_gets_lmproxy_headers(self) -> None:
        """The backend's own CORS headers give way to lmproxy's; the rest passes."""
        self.wire.channel.dataReceived(request(extra=b"Origin: %s\r\n" % self.page))
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\n"
            b"Content-Type: text/plain\r\n\r\nbody"
        )
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"body"))
        self.assertEqual(headers[b"access-control-allow-origin"], [self.page])
        self.assertEqual(headers[b"content-type"], [b"text/plain"])

    def test_error_gets_lmproxy_headers(self) -> None:
        self.wire.channel.dataReceived(
            request(target=b"/upstream/nope/x", extra=b"Origin: %s\r\n" % self.page)
        )
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(headers[b"access-control-allow-origin"], [self.page])

    def test_preflight_answered_by_lmproxy(self) -> None:
        self.wire.channel.dataReceived(
            request(
                b"OPTIONS",
                extra=b"Origin: %s\r\nAccess-Control-Request-Method: PUT\r\n" % self.page,
            )
        )
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 204 No Content")
        self.assertEqual(headers[b"access-control-allow-origin"], [self.page])
        self.assertEqual(self.backends.acquired, [])

    def test_other_origin_refused(self) -> None:
        self.wire.channel.dataReceived(request(extra=b"Origin: http://evil.example\r\n"))
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(self.backends.acquired, [])


class FlowControlTests(PassthroughTestCase):
    """Each side pauses the other while it is full."""

    def test_client_full_pauses_the_backend(self) -> None:
        self.wire.channel.dataReceived(request())
        _, backend = self.connect()
        self.wire.channel.pauseProducing()
        self.assertEqual(backend.producerState, "paused")
        self.wire.channel.resumeProducing()
        self.assertEqual(backend.producerState, "producing")

    def test_client_full_when_connected(self) -> None:
        self.wire.channel.dataReceived(request())
        self.wire.channel.pauseProducing()
        _, backend = self.connect()
        self.assertEqual(backend.producerState, "paused")

    def test_backend_full_pauses_the_client(self) -> None:
        self.wire.channel.dataReceived(request(b"POST", extra=b"Content-Length: 99999\r\n"))
        _, backend = self.connect()
        assert backend.producer is not None
        backend.producer.pauseProducing()
        self.assertEqual(self.wire.client.producerState, "paused")
        backend.producer.resumeProducing()
        self.assertEqual(self.wire.client.producerState, "producing")

    def test_held_while_starting(self) -> None:
        """While the service starts, a held body past the bound pauses the client."""
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.wire.channel.dataReceived(
            request(b"POST", extra=b"Content-Length: 999999\r\n", body=b"a" * 1000)
        )
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.wire.channel.dataReceived(b"b" * HELD_BYTES)
        self.assertEqual(self.wire.client.producerState, "paused")
        self.backends.finish_start("chat")
        _, backend = self.connect()
        self.assertEqual(forwarded(backend)[2], b"a" * 1000 + b"b" * HELD_BYTES)
        self.assertEqual(self.wire.client.producerState, "producing")


class EndTests(PassthroughTestCase):
    """Either side leaving, at any moment: nothing leaks."""

    def test_client_leaves_while_the_service_starts(self) -> None:
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.wire.channel.dataReceived(request())
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.backends.finish_start("chat")
        self.assertEqual(self.wire.reactor.tcpClients, [])
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.answered(), {("llama-3", CLIENT_LEFT): 1})

    def test_client_leaves_while_the_backend_connects(self) -> None:
        self.wire.channel.dataReceived(request())
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertTrue(self.wire.reactor.connectors[-1].stoppedConnecting)

    def test_client_leaves_mid_answer(self) -> None:
        """The backend's connection is closed (which ends the generation)."""
        self.wire.channel.dataReceived(request())
        protocol, backend = self.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n")
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(backend.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        protocol.connectionLost(Failure(ConnectionDone()))  # later: changes nothing
        self.assertEqual(self.answered(), {("llama-3", CLIENT_LEFT): 1})

    def test_backend_closes_mid_answer(self) -> None:
        """The client's connection closes after what came: it sees the answer cut."""
        self.wire.channel.dataReceived(request())
        protocol, _ = self.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.wire.client.value().endswith(b"\r\n\r\nabc"))
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.wire.channel.dataReceived(request())  # the connection is over
        self.assertEqual(len(self.wire.reactor.tcpClients), 1)

    def test_backend_closes_without_an_answer(self) -> None:
        self.wire.channel.dataReceived(request())
        protocol, _ = self.connect()
        protocol.connectionLost(Failure(ConnectionDone()))
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertEqual(json.loads(body)["error"]["code"], "bad_gateway")
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_head_cut_short(self) -> None:
        """A backend that closes within its head: what came passes, a bad answer."""
        self.wire.channel.dataReceived(request())
        protocol, _ = self.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        self.assertEqual(self.wire.client.value(), b"")  # held until the head is whole
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.wire.client.value(), b"HTTP/1.1 200 OK\r\nContent-")
        self.assertEqual(self.answered(), {("llama-3", 502): 1})

    def test_not_http(self) -> None:
        """An answer that is not HTTP passes as it is, and counts as a bad one."""
        self.wire.channel.dataReceived(request())
        protocol, _ = self.connect()
        protocol.dataReceived(b"hello\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.wire.client.value(), b"hello\r\n")
        self.assertEqual(self.answered(), {("llama-3", 502): 1})

    def test_connect_refused_reconnects_once(self) -> None:
        self.backends.set_state("embed", ServiceState.RUNNING)
        self.wire.channel.dataReceived(request(target=b"/upstream/embedder/x"))
        for _ in range(2):
            _, _, factory, _, _ = self.wire.reactor.tcpClients[-1]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.backends.reconnects, ["embed"])
        status, _, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertIn("Could not connect", json.loads(body)["error"]["message"])
        self.assertEqual(self.backends.counts("embed"), (0, 0))


class RefusalTests(PassthroughTestCase):
    """What is answered before any backend is reached, in OpenAI's shape."""

    def test_unknown_model(self) -> None:
        self.wire.channel.dataReceived(request(target=b"/upstream/nope/props"))
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        error = json.loads(body)["error"]
        self.assertEqual(
            (error["code"], error["message"]),
            ("model_not_found", "The model 'nope' does not exist."),
        )
        self.assertEqual(headers[b"x-should-retry"], [b"false"])
        self.assertEqual(self.backends.acquired, [])
        self.assertTrue(self.wire.client.disconnecting)

    def test_start_fails(self) -> None:
        """A 503 with the reason, when to retry, and whether to."""
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.wire.channel.dataReceived(request(b"POST", extra=b"Content-Length: 9999\r\n"))
        error = ServiceUnavailable("it broke", retry_after=4.2, retryable=False)
        self.backends.fail_start("chat", error=error)
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(json.loads(body)["error"]["message"], "it broke")
        self.assertEqual(headers[b"retry-after"], [b"5"])
        self.assertEqual(headers[b"x-should-retry"], [b"false"])
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.answered(), {("llama-3", 503): 1})

    def test_key_refused(self) -> None:
        """The gate refuses as on every path (twisted.web's answer); a key lets in."""
        config = Config(services=CONFIG.services, openai_api_keys=(Secret("k"),))
        backends = RecordingBackends(config)
        backends.set_state("chat", ServiceState.RUNNING)
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(request(b"POST", extra=b"Content-Length: 5\r\n", body=b"12345"))
        status, _, body = wire.response()
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        self.assertEqual(backends.acquired, [])
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(request(extra=b"x-api-key: k\r\n"))
        self.assertEqual(backends.acquired, ["chat"])

    def test_slow_head(self) -> None:
        """The head must come in time, as on every path."""
        self.wire.channel.dataReceived(b"GET /upstream/llama-3/props HTTP/1.1\r\n")
        self.wire.reactor.advance(HEADERS_SECONDS + 0.1)
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(self.backends.acquired, [])

    def test_queue_full(self) -> None:
        """A service's MaxConcurrentRequests turn is taken as for any request."""
        chat = ServiceConfig(
            name="chat",
            command="x",
            proxy_target_port=9001,
            openai_api=True,
            openai_api_models=("llama-3",),
            max_concurrent_requests=1,
            max_queued_requests=0,
        )
        config = Config(services=(chat,))
        backends = RecordingBackends(config)
        backends.set_state("chat", ServiceState.RUNNING)
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(request())
        second = StringTransport()
        channel = wire.api.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
        channel.makeConnection(second)
        channel.dataReceived(request())
        self.assertTrue(second.value().startswith(b"HTTP/1.1 429 Too Many Requests"))
        self.assertEqual(backends.acquired, ["chat"])
