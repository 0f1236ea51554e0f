"""
Tests for L{lmproxy.listen.cors}: CORS on the OpenAI port, on both of its
paths (the hot path and twisted.web's routes), through the port's own site
over C{StringTransport}s (L{tests.test_openai.Wire}); no sockets, no real
time.  L{tests.test_cors_browser} has a real browser call a real lmproxy.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lmproxy.config import Config, Secret
from lmproxy.interfaces import ServiceState
from lmproxy.listen.cors import (
    DEFAULT_ALLOWED_HEADERS,
    EXPOSED,
    METHODS,
    CorsPolicy,
    backend_headers,
    forwarded,
)
from lmproxy.listen.leanforward import LeanExchange
from lmproxy.listen.timeouts import BODY_STALL_SECONDS, HEADERS_SECONDS
from tests.test_openai import CONFIG, RecordingBackends, Wire
from tests.test_openai import forwarded as forwarded_request

PAGE = b"http://page.example:3000"
KEY = "sk-cors-key"
CHAT = b'{"model": "llama-3"}'
WITH_CORS = attrs.evolve(
    CONFIG, openai_api_keys=(Secret(KEY),), openai_allowed_origins=(PAGE.decode(),)
)
OWN = {
    b"access-control-allow-origin": [PAGE],
    b"vary": [b"Origin"],
    b"access-control-expose-headers": [EXPOSED],
}
"""The headers lmproxy adds to every answer to the page (Wire's lowercase names)."""

# A backend that allows CORS itself (llama.cpp does).
BACKEND_CORS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Credentials: true\r\n"
    b"Vary: Accept-Encoding\r\n"
)


def request(
    method: bytes = b"POST",
    path: bytes = b"/v1/chat/completions",
    body: bytes | None = CHAT,
    origin: bytes | None = PAGE,
    key: bool = True,
    extra: bytes = b"",
) -> bytes:
    """A whole request; its body sized (C{None}: no body, no length)."""
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: 127.0.0.1:7070"]
    if origin is not None:
        lines.append(b"Origin: " + origin)
    if key:
        lines.append(b"Authorization: Bearer " + KEY.encode())
    head = b"\r\n".join(lines) + b"\r\n" + extra
    if body is None:
        return head + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def cors_of(headers: dict[bytes, list[bytes]]) -> dict[bytes, list[bytes]]:
    """The CORS headers among C{headers}, and Vary."""
    return {
        name: values
        for name, values in headers.items()
        if name.startswith(b"access-control-") or name == b"vary"
    }


class PolicyTests(SynchronousTestCase):
    """L{CorsPolicy} alone: which requests get which headers."""

    def setUp(self) -> None:
        self.policy = CorsPolicy(["http://page.example:3000"])

    def headers(self, origin: bytes | None = PAGE, **more: bytes) -> Headers:
        headers = Headers({b"host": [b"127.0.0.1:7070"]})
        if origin is not None:
            headers.setRawHeaders(b"origin", [origin])
        for name, value in more.items():
            headers.setRawHeaders(name.replace("_", "-").encode(), [value])
        return headers

    def test_allowed_page(self) -> None:
        """The origin echoed as sent, Vary: Origin, and what the page may read."""
        self.assertEqual(
            self.policy.headers_for(self.headers()),
            [
                (b"Access-Control-Allow-Origin", PAGE),
                (b"Vary", b"Origin"),
                (b"Access-Control-Expose-Headers", EXPOSED),
            ],
        )

    def test_none_for_others(self) -> None:
        """No Origin, the port's own origin, or an origin that is not allowed: nothing."""
        for origin in (None, b"http://127.0.0.1:7070", b"http://other.example:3000", b"null"):
            self.assertEqual(self.policy.headers_for(self.headers(origin)), [], origin)

    def test_any(self) -> None:
        """With ["*"], any page's origin is echoed (so that it works with credentials too)."""
        policy = CorsPolicy(["*"])
        for origin in (b"http://other.example", b"null"):
            self.assertEqual(
                policy.headers_for(self.headers(origin))[0],
                (b"Access-Control-Allow-Origin", origin),
            )
        self.assertEqual(policy.headers_for(self.headers(None)), [])

    def test_allow_changes_it(self) -> None:
        self.policy.allow(["http://other.example"])
        self.assertEqual(self.policy.headers_for(self.headers()), [])
        self.assertNotEqual(self.policy.headers_for(self.headers(b"http://other.example")), [])

    def test_preflight_echoes_the_asked_headers(self) -> None:
        asked = b"authorization, content-type, x-stainless-os"
        self.assertEqual(
            self.policy.preflight(
                self.headers(
                    access_control_request_method=b"POST", access_control_request_headers=asked
                )
            ),
            [
                (b"Access-Control-Allow-Methods", METHODS),
                (b"Access-Control-Allow-Headers", asked),
                (b"Access-Control-Max-Age", b"600"),
            ],
        )

    def test_preflight_too_long_or_malformed(self) -> None:
        """Headers asked for that are too long to echo, or not a list of names: the usual ones."""
        for asked in (b"x-a, " * 500 + b"x-b", b"x-a; x-b", b"x-a,,x-b"):
            answer = self.policy.preflight(
                self.headers(
                    access_control_request_method=b"PUT", access_control_request_headers=asked
                )
            )
            assert answer is not None
            self.assertIn((b"Access-Control-Allow-Headers", DEFAULT_ALLOWED_HEADERS), answer)

    def test_preflight_private_network(self) -> None:
        """Chromium's question for a public page calling a private address is answered."""
        answer = self.policy.preflight(
            self.headers(
                access_control_request_method=b"POST",
                access_control_request_private_network=b"true",
            )
        )
        assert answer is not None
        self.assertIn((b"Access-Control-Allow-Private-Network", b"true"), answer)

    def test_not_a_preflight(self) -> None:
        """No Access-Control-Request-Method, or not from an allowed page on another origin."""
        self.assertIsNone(self.policy.preflight(self.headers()))
        for origin in (None, b"http://127.0.0.1:7070", b"http://other.example"):
            self.assertIsNone(
                self.policy.preflight(self.headers(origin, access_control_request_method=b"POST"))
            )


class ForwardedHeadersTests(SynchronousTestCase):
    """A forwarded answer's headers: the backend's own CORS headers give way to lmproxy's."""

    own = [(b"Access-Control-Allow-Origin", PAGE), (b"Vary", b"Origin")]
    backend = [
        (b"Content-Type", b"application/json"),
        (b"access-control-allow-origin", b"*"),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"Vary", b"Accept-Encoding"),
    ]

    def test_unchanged_without_own(self) -> None:
        self.assertIs(forwarded(self.backend, []), self.backend)

    def test_replaced(self) -> None:
        self.assertEqual(
            forwarded(self.backend, self.own),
            [
                (b"Content-Type", b"application/json"),
                (b"Vary", b"Accept-Encoding"),
                *self.own,
            ],
        )

    def test_vary_not_repeated(self) -> None:
        """A backend whose Vary names Origin (or is *) keeps it, alone."""
        for vary in (b"origin", b"Accept, Origin", b"*"):
            merged = forwarded([(b"Vary", vary)], self.own)
            self.assertEqual(merged, [(b"Vary", vary), self.own[0]])

    def test_twisted_web_copy(self) -> None:
        """For an answer with lmproxy's headers set, the copy lacks the backend's CORS ones."""
        answer = Headers({b"Access-Control-Allow-Origin": [PAGE], b"Vary": [b"Origin"]})
        backend = Headers({name: [value] for name, value in self.backend})
        copied = backend_headers(answer, backend)
        self.assertEqual(copied.getRawHeaders(b"vary"), [b"Accept-Encoding", b"Origin"])
        self.assertFalse(copied.hasHeader(b"access-control-allow-origin"))
        self.assertFalse(copied.hasHeader(b"access-control-allow-credentials"))
        self.assertIs(backend_headers(Headers(), backend), backend)


class CorsWireCase(SynchronousTestCase):
    """The port's site with a key and an allowed page; its chat service is running."""

    config: Config = WITH_CORS

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.connect()

    def connect(self) -> None:
        """A new client connection (an early refusal closes the last one)."""
        self.wire = Wire(self.backends, config=self.config)

    def send(self, data: bytes) -> None:
        self.wire.channel.dataReceived(data)

    def answer(self, data: bytes) -> None:
        """The backend the proxy connected to last answers C{data}."""
        protocol, _ = self.wire.backend()
        protocol.dataReceived(data)


class PreflightTests(CorsWireCase):
    """OPTIONS with Origin and Access-Control-Request-Method: 204 at once, without the key."""

    def preflight(self, origin: bytes = PAGE, method: bytes = b"OPTIONS") -> bytes:
        return request(
            method,
            body=None,
            origin=origin,
            key=False,
            extra=b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n",
        )

    def test_answered_before_the_key(self) -> None:
        self.send(self.preflight())
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 204 No Content", b""))
        self.assertEqual(
            cors_of(headers),
            {
                **OWN,
                b"access-control-allow-methods": [METHODS],
                b"access-control-allow-headers": [b"authorization, content-type"],
                b"access-control-max-age": [b"600"],
            },
        )
        self.assertNotIn(b"content-type", headers)
        self.assertEqual(self.backends.acquired, [])
        # The connection goes on: the request the page asked about follows on it.
        self.assertFalse(self.wire.client.disconnecting)
        self.send(request())
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"ok"))
        self.assertEqual(cors_of(headers), OWN)

    def test_every_path(self) -> None:
        """Any path of the port: a page may ask about any of them."""
        for path in (b"/v1/models", b"/v1/audio/transcriptions", b"/upstream/llama-3/props"):
            self.send(
                request(
                    b"OPTIONS",
                    path,
                    None,
                    key=False,
                    extra=b"Access-Control-Request-Method: GET\r\n",
                )
            )
            self.assertEqual(self.wire.response()[0], b"HTTP/1.1 204 No Content", path)

    def test_foreign_origin_refused(self) -> None:
        self.send(self.preflight(b"http://evil.example"))
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(json.loads(body)["error"]["code"], "origin_not_allowed")
        self.assertEqual(cors_of(headers), {})

    def test_not_options_is_gated(self) -> None:
        """Another method with the preflight's headers and no body still needs the key."""
        self.send(self.preflight(method=b"GET").replace(b"/v1/chat/completions", b"/v1/models"))
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(cors_of(headers), OWN)
        self.assertEqual(self.backends.acquired, [])

    def test_options_without_request_method(self) -> None:
        """Not a preflight: the key is needed, and the route answers 405; the page reads both."""
        self.send(request(b"OPTIONS", body=None, key=False))
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(cors_of(headers), OWN)
        self.connect()
        self.send(request(b"OPTIONS", body=None))
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 405 Method Not Allowed")
        self.assertEqual(headers[b"allow"], [b"POST"])
        self.assertEqual(cors_of(headers), OWN)


class HotPathTests(CorsWireCase):
    """Forwarded by the hot path: lmproxy's headers, never the backend's beside them."""

    def test_taken_and_answered(self) -> None:
        self.send(request())
        self.assertIsInstance(self.wire.channel.exchange, LeanExchange)
        self.answer(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + BACKEND_CORS
            + b"Content-Length: 2\r\n\r\n{}"
        )
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"{}"))
        self.assertEqual(cors_of(headers), {**OWN, b"vary": [b"Accept-Encoding", b"Origin"]})

    def test_stream(self) -> None:
        """A streamed answer's head, sent before its first event, carries them."""
        self.send(request())
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + BACKEND_CORS
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        _, headers, _ = self.wire.response(raw=True)
        self.assertEqual(headers[b"access-control-allow-origin"], [PAGE])
        protocol.dataReceived(b"6\r\ndata: \r\n0\r\n\r\n")
        self.assertEqual(self.wire.client.value(), b"6\r\ndata: \r\n0\r\n\r\n")

    def test_no_origin_passes_the_backends_headers(self) -> None:
        self.send(request(origin=None))
        self.answer(b"HTTP/1.1 200 OK\r\n" + BACKEND_CORS + b"Content-Length: 2\r\n\r\nok")
        _, headers, _ = self.wire.response()
        self.assertEqual(
            cors_of(headers),
            {
                b"access-control-allow-origin": [b"*"],
                b"access-control-allow-credentials": [b"true"],
                b"vary": [b"Accept-Encoding"],
            },
        )

    def test_same_origin_passes_the_backends_headers(self) -> None:
        self.send(request(origin=b"http://127.0.0.1:7070"))
        self.answer(b"HTTP/1.1 200 OK\r\n" + BACKEND_CORS + b"Content-Length: 2\r\n\r\nok")
        _, headers, _ = self.wire.response()
        self.assertEqual(headers[b"access-control-allow-origin"], [b"*"])

    def test_unavailable(self) -> None:
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.send(request())
        self.assertIsInstance(self.wire.channel.exchange, LeanExchange)
        self.backends.fail_start("chat", "it broke")
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(cors_of(headers), OWN)

    def test_no_response(self) -> None:
        self.send(request())
        protocol, _ = self.wire.backend()
        protocol.connectionLost(Failure(ConnectionDone()))
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertEqual(cors_of(headers), OWN)

    def test_client_leaves_while_it_starts(self) -> None:
        """Nothing is written for a page that left; the wait is dropped."""
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.send(request())
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.wire.client.value(), b"")


class QueueFullTests(CorsWireCase):
    """The 429 of a full queue (the hot path answers it as the request comes)."""

    config = attrs.evolve(
        WITH_CORS,
        services=(
            attrs.evolve(WITH_CORS.services[0], max_concurrent_requests=1, max_queued_requests=0),
            *WITH_CORS.services[1:],
        ),
    )

    def test_queue_full(self) -> None:
        self.send(request())
        self.wire.backend()
        # A second connection to the port (the limits are the API's).
        client = StringTransport()
        channel = self.wire.api.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
        channel.makeConnection(client)
        channel.dataReceived(request())
        head = client.value().partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 429"), head)
        self.assertIn(b"\r\nAccess-Control-Allow-Origin: " + PAGE + b"\r\n", head)


class TwistedWebTests(CorsWireCase):
    """Answered by twisted.web: lmproxy's own answers and errors, and forwarded answers."""

    def test_model_list(self) -> None:
        self.send(request(b"GET", b"/v1/models", None))
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn("llama-3", [m["id"] for m in json.loads(body)["data"]])
        self.assertEqual(cors_of(headers), OWN)

    def test_own_errors(self) -> None:
        """400, 404 (model and path), 405: each readable by the page."""
        cases = [
            (request(body=b"{nope"), b"400"),
            (request(body=b'{"model": "nope"}'), b"404"),
            (request(b"GET", b"/nope", None), b"404"),
            (request(b"GET", b"/v1/chat/completions", None), b"405"),
        ]
        for data, code in cases:
            self.send(data)
            status, headers, _ = self.wire.response()
            self.assertTrue(status.startswith(b"HTTP/1.1 " + code), (data, status))
            self.assertEqual(cors_of(headers), OWN, data)
        self.assertEqual(self.backends.acquired, [])

    def test_early_refusals(self) -> None:
        """The 401 and the 413 sent before the body is read carry them too."""
        for data, code in [
            (request(key=False), b"401"),
            (request(body=b"x" * 2000), b"413"),
        ]:
            self.send(data)
            status, headers, _ = self.wire.response()
            self.assertTrue(status.startswith(b"HTTP/1.1 " + code), status)
            self.assertEqual(cors_of(headers), OWN)
            self.assertTrue(self.wire.client.disconnecting)
            self.connect()
        self.assertEqual(self.backends.acquired, [])

    def test_foreign_origin_refused(self) -> None:
        self.send(request(origin=b"http://evil.example"))
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(cors_of(headers), {})
        self.assertEqual(self.backends.acquired, [])

    def chunked(self, origin: bytes | None = PAGE) -> bytes:
        """A chat request with a chunked body: twisted.web forwards it."""
        return request(
            body=None, origin=origin, extra=b"Transfer-Encoding: chunked\r\n"
        ) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)

    def test_forwarded_answer(self) -> None:
        self.send(self.chunked())
        protocol, backend = self.wire.backend()
        self.assertEqual(forwarded_request(backend)[2], CHAT)
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + BACKEND_CORS
            + b"Content-Length: 2\r\n\r\n{}"
        )
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"{}"))
        self.assertEqual(cors_of(headers), {**OWN, b"vary": [b"Accept-Encoding", b"Origin"]})

    def test_forwarded_stream(self) -> None:
        self.send(self.chunked())
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n0\r\n\r\n"
        )
        status, headers, body = self.wire.response()
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"data: "))
        self.assertEqual(cors_of(headers), OWN)

    def test_unavailable(self) -> None:
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.send(self.chunked())
        self.backends.fail_start("chat", "it broke")
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(cors_of(headers), OWN)

    def test_no_origin_passes_the_backends_headers(self) -> None:
        self.send(self.chunked(origin=None))
        self.answer(b"HTTP/1.1 200 OK\r\n" + BACKEND_CORS + b"Content-Length: 2\r\n\r\nok")
        _, headers, _ = self.wire.response()
        self.assertEqual(
            cors_of(headers),
            {
                b"access-control-allow-origin": [b"*"],
                b"access-control-allow-credentials": [b"true"],
                b"vary": [b"Accept-Encoding"],
            },
        )


class SlowBodyTests(CorsWireCase):
    """The 408 of a body that stalls carries them, on both paths; a slow head's cannot."""

    def stall(self, data: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
        self.send(data)
        self.wire.reactor.advance(BODY_STALL_SECONDS + 1)
        status, headers, _ = self.wire.response()
        self.assertTrue(self.wire.client.disconnecting)
        return status, headers

    def test_hot_path(self) -> None:
        status, headers = self.stall(request()[: -len(CHAT) // 2])
        self.assertEqual(status, b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(cors_of(headers), OWN)

    def test_twisted_web(self) -> None:
        chunked = request(body=None, extra=b"Transfer-Encoding: chunked\r\n") + b"5\r\n{"
        status, headers = self.stall(chunked)
        self.assertEqual(status, b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(cors_of(headers), OWN)

    def test_after_an_answer(self) -> None:
        """A slow head after an answered request: no headers of that request's."""
        self.send(request(b"GET", b"/v1/models", None))
        self.wire.response()
        self.send(b"GET /v1/models HTTP/1.1\r\n")
        self.wire.reactor.advance(HEADERS_SECONDS + 1)
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(cors_of(headers), {})


class AnyOriginTests(CorsWireCase):
    """["*"]: every page, its origin echoed."""

    config = attrs.evolve(WITH_CORS, openai_allowed_origins=("*",))

    def test_any_page(self) -> None:
        origin = b"https://anyone.example"
        self.send(request(origin=origin))
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        _, headers, _ = self.wire.response()
        self.assertEqual(cors_of(headers), {**OWN, b"access-control-allow-origin": [origin]})


class DefaultTests(CorsWireCase):
    """No CorsAllowedOrigins: only the port's own pages and clients without Origin."""

    config = attrs.evolve(WITH_CORS, openai_allowed_origins=())

    def test_page_refused(self) -> None:
        self.send(request())
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(self.backends.acquired, [])

    def test_preflight_refused(self) -> None:
        self.send(
            request(
                b"OPTIONS", body=None, key=False, extra=b"Access-Control-Request-Method: POST\r\n"
            )
        )
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(cors_of(headers), {})


class KeylessTests(CorsWireCase):
    """No API keys: the gate lets every request of an allowed page in."""

    config = attrs.evolve(WITH_CORS, openai_api_keys=())

    def test_preflight_is_not_passed_through(self) -> None:
        """A preflight of /upstream/... is answered here: no service starts for it."""
        self.backends.set_state("chat", ServiceState.STOPPED)
        self.send(
            request(
                b"OPTIONS",
                b"/upstream/llama-3/props",
                None,
                key=False,
                extra=b"Access-Control-Request-Method: GET\r\n",
            )
        )
        status, headers, _ = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 204 No Content")
        self.assertEqual(headers[b"access-control-allow-origin"], [PAGE])
        self.assertEqual(self.backends.acquired, [])


class ReconfigureTests(CorsWireCase):
    """A reload changes who may call, from the next request of a kept connection on."""

    def test_reload(self) -> None:
        other = b"http://other.example"
        self.send(request())
        protocol, _ = self.wire.backend()  # pooled: it takes the next request too
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.wire.response()[1][b"access-control-allow-origin"], [PAGE])
        self.wire.api.reconfigure(attrs.evolve(WITH_CORS, openai_allowed_origins=(other.decode(),)))
        self.send(request(origin=other))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.wire.response()[1][b"access-control-allow-origin"], [other])
        self.assertFalse(self.wire.client.disconnecting)
        self.send(request(origin=PAGE))
        self.assertEqual(self.wire.response()[0], b"HTTP/1.1 403 Forbidden")
