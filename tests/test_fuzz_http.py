"""
Property tests (hypothesis) of both HTTP ports, as production builds them,
fed bytes in memory (a real C{HTTPChannel} over C{StringTransport}s, a fake
clock): random methods, paths (C{%ff}, C{..}, unicode), headers (duplicate
Content-Length, Transfer-Encoding tricks, bad UTF-8, huge ones) and bodies
(deep nesting, huge numbers, C{model} of every JSON type).  Whatever comes
in: never a 500, never a traceback logged, never a service started, every
request answered or closed (at once when it is complete), and the next
client answered meanwhile.

Derandomized, with a bounded number of examples, so that CI runs the same
cases every time, in seconds.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from zope.interface import implementer

from lmproxy.interfaces import ILease
from lmproxy.listen.backendpool import IBackendConnections
from lmproxy.listen.frontsite import FrontSite
from lmproxy.listen.guard import management_resource
from lmproxy.listen.openai import OpenAiApi
from lmproxy.listen.sites import ManagementSite
from lmproxy.listen.timeouts import BODY_STALL_SECONDS, HEADERS_SECONDS, IDLE_SECONDS
from lmproxy.manage.api import ManagementApi
from lmproxy.testing import ScriptedBackends
from tests.test_management import ALPHA, QWEN, make_config

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)
OPENAI_LIMIT = 64 * 1024
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Long enough for every bound of lmproxy.listen.timeouts to have passed.
EVERY_BOUND = IDLE_SECONDS + HEADERS_SECONDS + 2 * BODY_STALL_SECONDS + OPENAI_LIMIT / 1024

METHODS = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"BREW"]
) | st.binary(min_size=1, max_size=8).filter(lambda m: b" " not in m and b"\r" not in m)

_SEGMENTS = st.sampled_from(
    [
        b"v1",
        b"models",
        b"chat",
        b"completions",
        b"embeddings",
        b"audio",
        b"transcriptions",
        b"services",
        b"status",
        b"events",
        b"metrics",
        b"logs",
        b"start",
        b"stop",
        b"dashboard",
        b"%ff",
        b"%c3%a9",
        b"%00",
        b"..",
        b".",
        b"",
        b"%2f",
        b"\xff",
        b"\xc3\xa9",
        b"%",
        b"%zz",
        b"app.js",
        b"index.html",
        b"nope",
        b"a" * 300,
        ALPHA.encode(),
        b"Qwen%2FQwen%207B%20%C3%A9",
        b"?tail=-1",
        b"?follow=1&tail=x",
        b"?force=%ff",
    ]
) | st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass"))
PATHS = st.lists(_SEGMENTS, max_size=6).map(lambda parts: b"/" + b"/".join(parts))

_HEADER_NAMES = st.sampled_from(
    [
        b"Host",
        b"Origin",
        b"Content-Type",
        b"Accept",
        b"Authorization",
        b"x-api-key",
        b"Connection",
        b"Expect",
        b"Cookie",
        b"X-Forwarded-For",
        b"Referer",
        b"Range",
    ]
)
_HEADER_VALUES = st.sampled_from(
    [
        b"localhost",
        b"127.0.0.1:7071",
        b"\xff\xfe",
        b"http://[",
        b"http://localhost",
        b"null",
        b"application/json",
        b"multipart/form-data; boundary=x",
        b"text/plain",
        b"Bearer \xff",
        b"close",
        b"keep-alive",
        b"100-continue",
        b"a" * 9000,
        b"",
        b"rebind.evil.example",
        b"[::1]",
        b"\xc3\xa9",
    ]
) | st.binary(max_size=40).filter(lambda v: not set(v) & {0, 10, 13})
HEADERS = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6)

HUGE_LENGTH = b"Content-Length: 99999999999999999999"
# Framing that may or may not be complete: the no-hang property, with the clock.
FRAMING = st.sampled_from(
    [
        [b"Content-Length: 5", b"Content-Length: 6"],
        [HUGE_LENGTH],
        [b"Expect: 100-continue", HUGE_LENGTH],
        [b"Content-Length: -1"],
        [b"Content-Length: 1e3"],
        [b"Content-Length: 5, 5"],
        [b"Content-Length: 100"],
        [b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Transfer-Encoding: chunked, identity"],
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: \xffchunked"],
        [b"Transfer-Encoding : chunked"],
        [b"Content-Length:\t5"],
        [],
    ]
)
RAW_BODIES = st.sampled_from(
    [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\n", b"0\r\n\r\n", b"x" * 200]
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KNOWN_MODELS = [QWEN, "qwen"]
JSON_BODIES = (
    st.fixed_dictionaries({"model": JSON_VALUES})
    .filter(lambda d: d["model"] not in KNOWN_MODELS)
    .map(lambda d: json.dumps(d).encode())
    | st.integers(min_value=1, max_value=50_000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(min_value=1, max_value=50_000).map(lambda n: b'{"model":' * n + b"1" + b"}" * n)
    | st.integers(min_value=4301, max_value=20_000).map(lambda n: b'{"model": 1%s}' % (b"0" * n))
    | st.sampled_from([b'{"model": 1e999999}', b'{"model": "qw\\u0000en"}', b"{", b"\xff"])
    | st.binary(max_size=200)
)


@implementer(IAgent, IBackendConnections)
class NoAgent:
    """
    An agent that records every request and backend connection it is asked
    for (none may be).  It hands out its connections, so the OpenAI port is
    built with its hot path (L{lmproxy.listen.front}), as in production.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.requests.append(args)
        return Deferred()

    def idle_connection(self, host: str, port: int) -> None:
        self.requests.append((host, port))

    def new_connection(self, host: str, port: int) -> Deferred[Any]:
        self.requests.append((host, port))
        return Deferred()


class RecordingBackends(ScriptedBackends):
    """Records every service asked for (to start it, or to forward to it)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.acquired: list[str] = []

    def acquire(self, service: str) -> Deferred[ILease]:
        self.acquired.append(service)
        return super().acquire(service)


class Ports:
    """Both ports, as lmproxy builds them, over recording fake backends."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.clock = Clock()
        config = make_config(case.mktemp())
        self.backends = RecordingBackends(config)
        self.agent = NoAgent()
        openai = OpenAiApi(
            self.backends,
            evolve(config, openai_max_body_bytes=OPENAI_LIMIT),
            self.agent,
            self.clock,
        )
        management = ManagementApi(self.backends, config, self.clock)
        self.openai = openai.site()
        assert isinstance(self.openai, FrontSite)
        self.management = ManagementSite(
            management_resource(management.app.resource(), config), self.clock
        )


class ClosingTransport(StringTransport):
    """A C{StringTransport} that, once closed, tells its protocol on the next turn, as TCP does."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(peerAddress=CLIENT)
        self._clock = clock
        self.protocol: Any = None

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self._clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))
        super().loseConnection()

    def abortConnection(self) -> None:
        self.loseConnection()


class Connection:
    def __init__(self, site: Any) -> None:
        self.transport = ClosingTransport(site.reactor)
        self.channel = site.buildProtocol(CLIENT)
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)

    def answered_or_closed(self) -> bool:
        return bool(self.transport.value()) or bool(self.transport.disconnecting)

    def statuses(self) -> list[int]:
        """The status code of every answer written so far."""
        return [
            int(line.split(b" ")[1])
            for line in self.transport.value().split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ")
            and len(line.split(b" ")) > 1
            and line.split(b" ")[1].isdigit()
        ]


def request_bytes(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n"


class FuzzCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.errors: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if (
            "log_failure" in event
            or event.get("isError")
            or level
            in (
                LogLevel.error,
                LogLevel.critical,
            )
        ):
            self.errors.append(event)

    def check(self, ports: Ports, connection: Connection, site: Any) -> None:
        """Never a 500, nothing logged as an error, nothing started, the next client served."""
        self.assertNotIn(500, connection.statuses(), connection.transport.value()[:500])
        self.assertEqual(self.errors, [])
        self.assertEqual(ports.backends.acquired, [])
        self.assertEqual(ports.agent.requests, [])
        other = Connection(site)
        path = b"/v1/models" if site is ports.openai else b"/status"
        other.channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
        self.assertEqual(other.statuses(), [200], other.transport.value()[:300])

    def both(self) -> list[tuple[Ports, Any]]:
        ports = Ports(self)
        return [(ports, ports.openai), (ports, ports.management)]


class CompleteRequestTests(FuzzCase):
    """Complete requests (framed right): answered at once."""

    @FUZZ
    @given(method=METHODS, path=PATHS, headers=HEADERS, body=st.binary(max_size=300))
    def test_answered_at_once(
        self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.errors.clear()
        for ports, site in self.both():
            connection = Connection(site)
            head = request_bytes(method, path, headers)
            connection.channel.dataReceived(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.assertTrue(connection.answered_or_closed(), head[:300])
            self.check(ports, connection, site)

    @FUZZ
    @given(
        method=st.sampled_from([b"GET", b"POST"]),
        path=st.sampled_from([b"/status", b"/v1/models", b"/services/alpha/stop", b"/"]),
        host=st.sampled_from([b"a" * 64, b"a" * 300 + b".example", b"x." * 200, b"-.-", b"a..b"])
        | st.binary(max_size=80).filter(lambda v: not set(v) & {0, 10, 13})
        | st.text(max_size=80)
        .map(lambda t: t.encode("utf-8", "surrogatepass"))
        .filter(lambda v: not set(v) & {0, 10, 13}),
    )
    def test_any_host(self, method: bytes, path: bytes, host: bytes) -> None:
        self.errors.clear()
        for ports, site in self.both():
            connection = Connection(site)
            connection.channel.dataReceived(
                method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            )
            self.assertTrue(connection.answered_or_closed())
            self.check(ports, connection, site)


class FramingTests(FuzzCase):
    """Any framing, complete or not: answered or closed once the bounds pass, never a 500."""

    @FUZZ
    @given(method=METHODS, path=PATHS, headers=HEADERS, framing=FRAMING, body=RAW_BODIES)
    def test_never_hangs(
        self,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: list[bytes],
        body: bytes,
    ) -> None:
        self.errors.clear()
        for ports, site in self.both():
            connection = Connection(site)
            head = request_bytes(method, path, headers) + b"".join(f + b"\r\n" for f in framing)
            connection.channel.dataReceived(head + b"\r\n" + body)
            if HUGE_LENGTH in framing:
                # Declared over every limit: refused at once, not waited for.
                self.assertTrue(connection.answered_or_closed(), head[:300])
            self.check(ports, connection, site)
            ports.clock.advance(EVERY_BOUND)
            self.assertTrue(connection.answered_or_closed(), head[:300])
            self.assertTrue(connection.transport.disconnecting or connection.statuses())
            self.assertNotIn(500, connection.statuses())


class OpenAiBodyTests(FuzzCase):
    """Bodies of the inference routes: a 4xx in OpenAI's shape, never a start."""

    @FUZZ
    @given(
        path=st.sampled_from([b"/v1/chat/completions", b"/v1/embeddings", b"/v1/completions"]),
        body=JSON_BODIES,
    )
    def test_bad_bodies(self, path: bytes, body: bytes) -> None:
        self.errors.clear()
        ports = Ports(self)
        connection = Connection(ports.openai)
        connection.channel.dataReceived(
            b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
        )
        [status] = connection.statuses()
        self.assertIn(status, (400, 404, 413))
        head, _, answer = connection.transport.value().partition(b"\r\n\r\n")
        if b"chunked" not in head:
            self.assertIn("error", json.loads(answer))
        self.check(ports, connection, ports.openai)
