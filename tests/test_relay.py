"""
Unit tests for L{lmproxy.listen.relay}: a relay between two socket pairs,
watched by a memory reactor (whose readers and writers show the relay's
interest), with fake transports; and one real connection through a service's
port (L{lmproxy.listen.tcp}) on the real reactor.
"""

from __future__ import annotations

import contextlib
import socket

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor, ISystemHandle
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from lmproxy.config import Config, ServiceConfig
from lmproxy.interfaces import ServiceState
from lmproxy.listen import relay
from lmproxy.listen.relay import Relay
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.testing import FakeBackends


@implementer(IReadDescriptor)
class FakeTransport:
    """Records what a relay asks of a transport."""

    def __init__(self) -> None:
        self.paused = False
        self.resumed = False
        self.written = b""
        self.lost: Failure | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.resumed = True

    def write(self, data: bytes) -> None:
        self.written += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


@implementer(ISystemHandle)
class HandleTransport(FakeTransport):
    """A fake transport over a socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._socket = sock

    def getHandle(self) -> socket.socket:
        return self._socket


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair: the relay's end (non-blocking) and the peer's."""
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    return mine, theirs


def _read_all(sock: socket.socket) -> bytes:
    """What C{sock} has to read now."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return data


class RelayTests(SynchronousTestCase):
    """A relay between a client's socket and a backend's."""

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        client, self.client_peer = _pair()
        backend, self.backend_peer = _pair()
        for sock in (client, backend, self.client_peer, self.backend_peer):
            self.addCleanup(sock.close)
        self.client_transport, self.backend_transport = FakeTransport(), FakeTransport()
        self.relay = Relay(
            self.reactor, (client, self.client_transport), (backend, self.backend_transport)
        )
        self.client, self.backend = self.relay._client, self.relay._backend

    def test_start_takes_both_sockets_and_sends_what_was_held(self) -> None:
        self.relay.start(b"held")
        self.assertTrue(self.client_transport.paused)
        self.assertTrue(self.backend_transport.paused)
        self.assertEqual(self.reactor.readers, {self.client, self.backend})
        self.assertEqual(self.reactor.writers, set())
        self.assertEqual(self.backend_peer.recv(100), b"held")

    def test_bytes_both_ways_at_once(self) -> None:
        """Each readable event is sent on at once, without write interest."""
        self.relay.start(b"")
        self.client_peer.sendall(b"request")
        self.client.doRead()
        self.assertEqual(self.backend_peer.recv(100), b"request")
        self.backend_peer.sendall(b"response")
        self.backend.doRead()
        self.assertEqual(self.client_peer.recv(100), b"response")
        self.assertEqual(self.reactor.writers, set())

    def test_full_peer_stops_reading_until_it_drains(self) -> None:
        """Flow control: a side whose peer cannot take more is not read; all arrives in order."""
        self.relay.start(b"")
        self.backend.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = b""
        self.client_peer.setblocking(False)
        while not self.reactor.writers:
            chunk = bytes([len(sent) % 251]) * 65536
            with contextlib.suppress(BlockingIOError):
                sent += chunk[: self.client_peer.send(chunk)]
            self.client.doRead()
        self.assertEqual(self.reactor.writers, {self.backend})
        self.assertEqual(self.reactor.readers, {self.backend})
        # An event polled before the client stopped being read changes nothing.
        self.client.doRead()
        self.assertTrue(self.backend.unsent)
        received = b""
        while self.backend in self.reactor.writers:
            received += _read_all(self.backend_peer)
            self.backend.doWrite()
        self.assertEqual(self.reactor.readers, {self.client, self.backend})
        while len(received) < len(sent):
            self.client.doRead()
            received += _read_all(self.backend_peer)
        self.assertEqual(received, sent)

    def test_end_of_file_gives_the_sockets_back(self) -> None:
        """
        The side that saw the end is resumed (its transport sees it again and
        closes, as Twisted does); what a side did not take goes to its transport.
        """
        self.relay.start(b"")
        self.client.unsent = b"pending"
        self.client_peer.close()
        self.client.doRead()
        self.assertTrue(self.relay.ended)
        self.assertEqual((self.reactor.readers, self.reactor.writers), (set(), set()))
        self.assertTrue(self.client_transport.resumed)
        self.assertFalse(self.backend_transport.resumed)
        self.assertEqual(self.client_transport.written, b"pending")
        self.assertEqual(self.client.unsent, b"")
        self.relay.end(self.backend)
        self.assertFalse(self.backend_transport.resumed)

    def test_failed_send_ends_on_that_side(self) -> None:
        self.relay.start(b"")
        self.backend_peer.close()
        self.client_peer.setblocking(False)
        while not self.relay.ended:
            self.client_peer.send(b"x" * 1000)
            self.client.doRead()
        self.assertTrue(self.backend_transport.resumed)
        self.assertFalse(self.client_transport.resumed)
        self.assertEqual(self.backend_transport.written, b"x" * 1000)

    def test_dropped_by_the_reactor(self) -> None:
        """A hang-up, or the reactor stopping, reaches that side's transport."""
        self.relay.start(b"")
        self.client.unsent = b"for the client"
        reason = Failure(ConnectionDone())
        self.backend.connectionLost(reason)
        self.assertEqual(self.client_transport.written, b"for the client")
        self.assertIs(self.backend_transport.lost, reason)
        self.assertFalse(self.backend_transport.resumed)
        self.assertEqual(self.reactor.readers, set())
        self.client.connectionLost(reason)
        self.assertIs(self.client_transport.lost, reason)

    def test_transports_without_a_socket_are_not_relayed(self) -> None:
        self.assertIsNone(Relay.between(self.reactor, FakeTransport(), FakeTransport()))

    def test_closed_socket_is_not_relayed(self) -> None:
        """A client that left while its backend connection was made keeps Twisted's path."""
        closed, other = socket.socketpair()
        closed.close()
        other.close()
        open_one = self.backend.socket
        self.assertIsNone(
            Relay.between(self.reactor, HandleTransport(closed), HandleTransport(open_one))
        )
        self.assertIsInstance(
            Relay.between(
                self.reactor, HandleTransport(self.client.socket), HandleTransport(open_one)
            ),
            Relay,
        )


class Collect(Protocol):
    """Collects what it receives; fires C{done} when the connection closes."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


class ServicePortTests(TestCase):
    """A real client of a service's port, relayed to a real backend."""

    async def test_round_trip_and_close(self) -> None:
        backends: list[Collect] = []
        relayed: list[bool] = []

        def relay_in_reactor() -> bool:
            """
            Whether a relay's sides, and not their (paused) transports, are
            in the reactor: the assumption that lets the relay take the
            transports' descriptors.
            """
            watched = global_reactor.getReaders() + global_reactor.getWriters()  # type: ignore[attr-defined]
            sides = [each for each in watched if isinstance(each, relay._Side)]
            return len(sides) == 2 and not any(side.transport in watched for side in sides)

        class Backend(Collect):
            def connectionMade(self) -> None:
                backends.append(self)

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if self.received.endswith(b"bye"):
                    relayed.append(relay_in_reactor())
                    self.transport.write(b"reply:" + self.received)  # type: ignore[union-attr]
                    self.transport.loseConnection()  # type: ignore[union-attr]

        backend_port = global_reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(Backend), interface="127.0.0.1"
        )
        self.addCleanup(backend_port.stopListening)
        service = ServiceConfig(
            name="svc",
            command="true",
            listen_port=1,
            proxy_target_port=backend_port.getHost().port,
        )
        fakes = FakeBackends(Config(services=(service,)))
        fakes.set_state("svc", ServiceState.RUNNING)
        factory = ServiceProxyFactory(fakes, service, 0, global_reactor)  # type: ignore[arg-type]
        port = global_reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

        client = Collect()
        client.connectionMade = lambda: client.transport.write(b"x" * 300_000 + b"bye")  # type: ignore[method-assign,union-attr]
        connector = ClientFactory.forProtocol(lambda: client)
        global_reactor.connectTCP("127.0.0.1", port.getHost().port, connector)  # type: ignore[attr-defined]
        received = await client.done
        self.assertEqual(received, b"reply:" + b"x" * 300_000 + b"bye")
        self.assertEqual((len(backends), relayed), (1, [True]))
        snapshot = fakes.snapshot().services[0]
        self.assertEqual(snapshot.proxied_connections, 0)
