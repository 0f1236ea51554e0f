"""
Tests of L{lmproxy.listen.sites} and L{lmproxy.listen.timeouts}: what each
HTTP port refuses before its routes see a request (bodies over the limit,
clients too slow to send their request), and that answers are never cut.
A real C{HTTPChannel} over C{StringTransport}s, on a fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lmproxy.listen.sites import (
    MANAGEMENT_MAX_BODY_BYTES,
    BodyLimitedSite,
    ManagementSite,
)
from lmproxy.listen.timeouts import (
    BODY_MIN_BYTES_PER_SECOND,
    BODY_STALL_SECONDS,
    HEADERS_SECONDS,
    IDLE_SECONDS,
)
from lmproxy.manage.api import ManagementApi
from lmproxy.testing import ScriptedBackends
from tests.test_management import ALPHA, make_config

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)
LIMIT = 1000
HUGE = b"99999999999999999999"


class Held(Resource):
    """Answers every request with 200, at once or (C{hold}) when the test says."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[Request] = []
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.bodies.append(request.content.read())
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b"ok"


class Connection:
    """One client connection to a site, fed bytes by the test."""

    def __init__(self, site: Any) -> None:
        self.transport = StringTransport(peerAddress=CLIENT)
        self.channel = site.buildProtocol(CLIENT)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The status, headers and body written so far (the first answer)."""
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        if headers.get(b"transfer-encoding") == b"chunked":
            body = dechunk(body)
        return int(status_line.split()[1]), headers, body


def dechunk(data: bytes) -> bytes:
    """The body of a chunked answer (its complete chunks)."""
    body = b""
    while b"\r\n" in data:
        size, _, data = data.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        body, data = body + data[:length], data[length + 2 :]
    return body


class SiteCase(SynchronousTestCase):
    """An OpenAI-shaped L{BodyLimitedSite} over L{Held}, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Held()
        self.site = BodyLimitedSite(self.resource, LIMIT, self.clock)

    def connect(self) -> Connection:
        return Connection(self.site)


class BodyLimitTests(SiteCase):
    """413 before the body is read."""

    def test_huge_content_length_refused_at_once(self) -> None:
        """A Content-Length of 20 digits is answered 413 and closed, not waited for."""
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % HUGE)
        status, headers, body = connection.answer()
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"]["code"], "request_too_large")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(connection.closed)
        self.assertEqual(self.resource.bodies, [])

    def test_chunked_body_refused_as_it_grows(self) -> None:
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        connection.send(b"%x\r\n%s\r\n" % (LIMIT, b"a" * LIMIT))
        self.assertEqual(connection.transport.value(), b"")
        connection.send(b"1\r\na\r\n")
        self.assertEqual(connection.answer()[0], 413)
        self.assertTrue(connection.closed)

    def test_body_at_the_limit_is_rendered(self) -> None:
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % LIMIT)
        connection.send(b"b" * LIMIT)
        self.assertEqual(connection.answer()[0], 200)
        self.assertEqual(self.resource.bodies, [b"b" * LIMIT])


class HeaderTimeoutTests(SiteCase):
    """The headers of a request must be in within HEADERS_SECONDS of its first byte."""

    def test_slowloris_headers_get_408(self) -> None:
        """A byte a second: answered 408 and closed once HEADERS_SECONDS have passed."""
        connection = self.connect()
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for byte in request[: int(HEADERS_SECONDS) - 1]:
            connection.send(bytes([byte]))
            self.clock.advance(1)
        self.assertFalse(connection.closed)
        for byte in request[int(HEADERS_SECONDS) - 1 :]:
            if connection.closed:
                break
            connection.send(bytes([byte]))
            self.clock.advance(1)
        status, headers, body = connection.answer()
        self.assertEqual(status, 408)
        self.assertEqual(json.loads(body)["error"]["code"], "request_timeout")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(connection.closed)
        self.assertEqual(self.clock.seconds(), HEADERS_SECONDS)

    def test_each_request_has_its_own_clock(self) -> None:
        """A keep-alive connection's second request is timed from its own first byte."""
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(IDLE_SECONDS - 1)
        connection.send(b"GET / HTTP/1.1\r\n")
        self.clock.advance(HEADERS_SECONDS - 1)
        connection.send(b"Host: x\r\n\r\n")
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(connection.closed)

    def test_idle_keep_alive_connection_closed(self) -> None:
        """Between requests, IDLE_SECONDS of silence close the connection (no 408: no request)."""
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.transport.clear()
        self.clock.advance(IDLE_SECONDS - 1)
        self.assertFalse(connection.closed)
        self.clock.advance(1)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.transport.value(), b"")

    def test_silent_new_connection_closed(self) -> None:
        connection = self.connect()
        self.clock.advance(IDLE_SECONDS)
        self.assertTrue(connection.closed)


class BodyTimeoutTests(SiteCase):
    """A request body must keep moving."""

    def head(self, connection: Connection, length: int) -> None:
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)

    def test_stalled_body_gets_408(self) -> None:
        connection = self.connect()
        self.head(connection, 10)
        connection.send(b"12345")
        self.clock.advance(BODY_STALL_SECONDS - 1)
        self.assertFalse(connection.closed)
        self.clock.advance(1)
        self.assertEqual(connection.answer()[0], 408)
        self.assertTrue(connection.closed)
        self.assertEqual(self.resource.bodies, [])

    def test_trickling_body_gets_408(self) -> None:
        """A byte every second never stalls, but is far below the minimum rate."""
        connection = self.connect()
        self.head(connection, LIMIT)
        seconds = 0
        while not connection.closed:
            connection.send(b"x")
            self.clock.advance(1)
            seconds += 1
            self.assertLess(seconds, 2 * BODY_STALL_SECONDS)
        self.assertEqual(connection.answer()[0], 408)

    def test_steady_body_is_not_cut(self) -> None:
        """A body that arrives at the minimum rate, never stalling, is taken whole."""
        site = BodyLimitedSite(self.resource, 10 * 1024 * 1024, self.clock)
        connection = Connection(site)
        chunk = b"y" * BODY_MIN_BYTES_PER_SECOND * 10
        seconds = 300
        self.head(connection, len(chunk) * seconds // 10)
        for _ in range(seconds // 10):
            self.clock.advance(10)
            connection.send(chunk)
        self.assertEqual(connection.answer()[0], 200)
        self.assertEqual(len(self.resource.bodies[0]), len(chunk) * seconds // 10)


class AnswersAreNotCutTests(SiteCase):
    """Nothing bounds how long an answer takes, or how long it streams."""

    def test_long_answer_lasts(self) -> None:
        self.resource.hold = True
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        [request] = self.resource.held
        request.write(b"first")
        for _ in range(24):
            self.clock.advance(3600)
            request.write(b"more")
        self.assertFalse(connection.closed)
        request.finish()
        self.assertEqual(connection.answer()[0], 200)
        # And then the connection is an idle keep-alive one again.
        self.clock.advance(IDLE_SECONDS)
        self.assertTrue(connection.closed)

    def test_early_answer_is_not_followed_by_408(self) -> None:
        """A 413 stops the request's clock: no second answer after it."""
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        # (After IDLE_SECONDS twisted.web's own timeout closes it again, with no answer.)
        self.clock.advance(IDLE_SECONDS - 1)
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1"), 1)

    def test_twisted_web_400_is_not_followed_by_408(self) -> None:
        """A request twisted.web refuses itself (a header line without a colon) ends its clock."""
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n")
        self.assertTrue(connection.closed)
        self.clock.advance(HEADERS_SECONDS + BODY_STALL_SECONDS)
        self.assertEqual(connection.transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")


class ManagementSiteTests(SynchronousTestCase):
    """The management port: a small body bound, its own error shape, no tracebacks."""

    def setUp(self) -> None:
        self.clock = Clock()
        config = make_config(self.mktemp())
        self.backends = ScriptedBackends(config)
        api = ManagementApi(self.backends, config, self.clock)
        self.site = ManagementSite(api.app.resource(), self.clock)
        self.logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def request(self, raw: bytes) -> tuple[Connection, int, Any]:
        connection = Connection(self.site)
        connection.send(raw)
        status, _, body = connection.answer()
        return connection, status, json.loads(body)

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if "log_failure" in e or e.get("isError")]

    def test_undecodable_service_name_is_400(self) -> None:
        _, status, body = self.request(b"POST /services/%ff/start HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body), (400, {"error": "The URL is not valid UTF-8."}))
        self.assertEqual(self.failures(), [])

    def test_undecodable_host_is_400(self) -> None:
        _, status, _ = self.request(b"GET /status HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertEqual(self.failures(), [])

    def test_unknown_name_is_404(self) -> None:
        _, status, body = self.request(b"POST /services/%c3%a9/stop HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 404)
        self.assertIn("error", body)

    def test_body_over_the_bound_is_413_at_once(self) -> None:
        head = b"POST /services/%s/stop HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        connection, status, body = self.request(
            head % (ALPHA.encode(), MANAGEMENT_MAX_BODY_BYTES + 1)
        )
        self.assertEqual(status, 413)
        self.assertEqual(list(body), ["error"])
        self.assertTrue(connection.closed)
        self.assertEqual(self.backends.stop_calls, [])

    def test_huge_content_length_is_413(self) -> None:
        raw = b"POST /services/x/stop HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % HUGE
        connection, status, _ = self.request(raw)
        self.assertEqual(status, 413)
        self.assertTrue(connection.closed)

    def test_slow_headers_get_408_in_the_management_shape(self) -> None:
        connection = Connection(self.site)
        connection.send(b"GET /status HTTP/1.1\r\n")
        self.clock.advance(HEADERS_SECONDS)
        status, _, body = connection.answer()
        self.assertEqual(status, 408)
        self.assertEqual(list(json.loads(body)), ["error"])
        self.assertTrue(connection.closed)
