"""
Tests for L{lmproxy.listen.backendpool} and L{lmproxy.listen.backendconn}:
the OpenAI port's lean HTTP/1.1 client, over C{StringTransport}s that a
C{MemoryReactorClock} hands out.  No sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from lmproxy.listen.backendconn import StaleConnection
from lmproxy.listen.backendpool import BackendAgent
from lmproxy.listen.httpforward import BytesProducer


class Body(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended = reason


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A C{StringTransport} that says it is TCP, and records TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class BackendAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.agent = BackendAgent(self.reactor)

    def send(
        self, body: bytes = b"{}", url: bytes = b"http://127.0.0.1:9001/v1/x?y=1"
    ) -> Deferred[IResponse]:
        headers = Headers({b"Content-Type": [b"application/json"]})
        return self.agent.request(b"POST", url, headers, BytesProducer(body))

    def accept(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Accept a connection the agent opened, by default the last one."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, answer: bytes) -> tuple[IResponse, Body, Any, StringTransport]:
        """Send a request on a new connection, answer it with C{answer}."""
        d = self.send()
        protocol, transport = self.accept()
        protocol.dataReceived(answer)
        response = self.successResultOf(d)
        body = Body()
        response.deliverBody(body)
        return response, body, protocol, transport

    def test_no_nagle_delay(self) -> None:
        """A backend connection over TCP asks for TCP_NODELAY."""
        self.send()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        transport = TCPStringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        self.assertTrue(transport.no_delay)

    def test_request_bytes(self) -> None:
        """The head and body go in one write, with Host and Content-Length."""
        self.send(b'{"a": 1}')
        _, transport = self.accept()
        self.assertEqual(
            transport.value(),
            b"POST /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"
            b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n"
            b'{"a": 1}',
        )

    def test_ipv6(self) -> None:
        """An IPv6 address is connected to as such, and bracketed in Host."""
        self.send(url=b"http://[::1]:9001/v1/x")
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("::1", 9001))
        _, transport = self.accept()
        self.assertIn(b"Host: [::1]:9001\r\n", transport.value())

    def test_sized_answer_and_reuse(self) -> None:
        """A sized answer: its headers without the connection ones; the connection is reused."""
        response, body, protocol, transport = self.exchange(
            b"HTTP/1.1 201 Made\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n"
            b"Connection: keep-alive\r\nX-A: 1\r\n\r\nhel"
        )
        self.assertEqual((response.code, response.phrase, response.length), (201, b"Made", 5))
        self.assertEqual(list(response.headers.getAllRawHeaders()), [(b"X-A", [b"1"])])
        self.assertEqual((body.data, body.ended), (b"hel", None))
        protocol.dataReceived(b"lo")
        self.assertEqual(body.data, b"hello")
        assert body.ended is not None
        body.ended.trap(ResponseDone)
        transport.clear()
        self.send(b"x")
        self.assertEqual(len(self.reactor.tcpClients), 1, "the idle connection was reused")
        self.assertIn(b"Content-Length: 1\r\n\r\nx", transport.value())

    def test_chunked_byte_by_byte(self) -> None:
        """A chunked answer, however it is cut, with trailers; then reusable."""
        d = self.send()
        protocol, _ = self.accept()
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        protocol.dataReceived(answer[:50])
        response = self.successResultOf(d)
        self.assertIs(response.length, UNKNOWN_LENGTH)
        body = Body()
        response.deliverBody(body)
        for i in range(50, len(answer)):
            protocol.dataReceived(answer[i : i + 1])
        self.assertEqual(body.data, b"hello!")
        assert body.ended is not None
        body.ended.trap(ResponseDone)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_close_delimited(self) -> None:
        """No length and no chunks: the body ends with the connection, never reused."""
        response, body, protocol, _ = self.exchange(b"HTTP/1.1 200 OK\r\n\r\nab")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        protocol.dataReceived(b"cd")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(body.data, b"abcd")
        assert body.ended is not None
        body.ended.trap(PotentialDataLoss)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_connection_close(self) -> None:
        """C{Connection: close}: the connection is closed once the answer is in."""
        _, body, _, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertEqual(body.data, b"x")
        self.assertTrue(transport.disconnecting)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_http10(self) -> None:
        """An HTTP/1.0 answer without keep-alive closes its connection."""
        _, _, _, transport = self.exchange(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(transport.disconnecting)

    def test_no_body_codes(self) -> None:
        """A 204 has no body, whatever its headers say."""
        response, body, _, transport = self.exchange(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
        )
        self.assertEqual(response.length, 0)
        assert body.ended is not None
        body.ended.trap(ResponseDone)
        self.assertFalse(transport.disconnecting)

    def test_informational_skipped(self) -> None:
        """A 100 Continue before the answer is skipped."""
        response, body, _, _ = self.exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual((response.code, body.data), (200, b"ok"))

    def test_bytes_after_answer(self) -> None:
        """Bytes after a complete answer: the connection is not reused."""
        _, _, _, transport = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxjunk")
        self.assertTrue(transport.disconnecting)

    def test_bad_status_line(self) -> None:
        d = self.send()
        protocol, transport = self.accept()
        protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertTrue(transport.disconnected)

    def test_lost_before_answer(self) -> None:
        d = self.send()
        protocol, _ = self.accept()
        protocol.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(d, ResponseNeverReceived)
        failure.value.reasons[0].trap(ConnectionLost)

    def test_stale_kept_connection_sent_again(self) -> None:
        """
        A kept connection the backend had closed while idle (lost before a
        byte of the next answer): the request goes again on a new one.
        """
        _, _, kept, _ = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        d = self.send(b"again")
        self.assertEqual(len(self.reactor.tcpClients), 1, "sent on the kept connection")
        kept.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.reactor.tcpClients), 2, "a new connection")
        fresh, transport = self.accept()
        self.assertTrue(transport.value().endswith(b"\r\n\r\nagain"))
        fresh.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_not_sent_again(self) -> None:
        """
        Not stale: a new connection lost before its answer, and a kept one
        lost after a byte of it.  The request fails, and is not sent again.
        """
        d = self.send()
        protocol, _ = self.accept()
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertNotIsInstance(self.failureResultOf(d).value, StaleConnection)
        _, _, protocol, _ = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        d = self.send()
        protocol.dataReceived(b"HTTP/1.1 2")
        protocol.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(d, ResponseNeverReceived)
        self.assertNotIsInstance(failure.value, StaleConnection)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_lost_mid_body(self) -> None:
        """A sized body cut short ends with C{ResponseFailed}."""
        _, body, protocol, _ = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
        protocol.connectionLost(Failure(ConnectionLost()))
        assert body.ended is not None
        body.ended.trap(ResponseFailed)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2, "a lost connection is not reused")

    def test_cancel_before_answer(self) -> None:
        """Cancelling drops the connection; the failure is that of a cancel."""
        d = self.send()
        _, transport = self.accept()
        d.cancel()
        failure = self.failureResultOf(d, ResponseNeverReceived)
        failure.value.reasons[0].trap(CancelledError)
        self.assertTrue(transport.disconnected)

    def test_connect_refused(self) -> None:
        d = self.send()
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
        self.failureResultOf(d, ConnectionRefusedError)

    def test_flow_control(self) -> None:
        """The body's transport pauses, resumes and stops the backend connection."""
        _, body, _, transport = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
        assert body.transport is not None
        body.transport.pauseProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "paused")
        body.transport.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "producing")
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "stopped")

    def test_idle_limit(self) -> None:
        """Idle connections beyond the limit are closed."""
        self.agent = BackendAgent(self.reactor, max_idle=1)
        first, second = self.send(), self.send()
        (p1, t1), (p2, t2) = self.accept(0), self.accept(1)
        for protocol in (p1, p2):
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(first), self.successResultOf(second)
        self.assertEqual((t1.disconnecting, t2.disconnecting), (False, True))

    def test_idle_connection_closed(self) -> None:
        """An idle connection that the backend closes is forgotten."""
        _, _, protocol, _ = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_bytes_from_idle_connection(self) -> None:
        """Bytes that nobody asked for close the idle connection."""
        _, _, protocol, transport = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(transport.disconnected)
