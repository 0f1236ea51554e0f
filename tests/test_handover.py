"""
The connection that finds a freshly started service ready, handed over to a
client served as it gets ready (L{lmproxy.core.lease.Lease.take_connection}),
on the fake reactor: the lifecycle's side and the TCP port's side.
"""

from __future__ import annotations

import os
import socket
from typing import cast

from twisted.internet.interfaces import IReactorSocket
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lmproxy.config import ServiceConfig
from lmproxy.core.lease import Lease
from lmproxy.core.lifecycle import ServiceLifecycle
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.startup import Launcher
from lmproxy.listen.tcp import BackendConnectionFactory, ServiceConnection
from lmproxy.testing import MemoryProcessReactor
from tests.test_lifecycle import RecordingOwner
from tests.test_readiness import FakeConnect

PORT = 9001


class LifecycleHandoverTests(SynchronousTestCase):
    """The lifecycle hands the probe's connection to one lease served at ready."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.connect = FakeConnect(self)
        config = ServiceConfig(
            name="A",
            command="true",
            proxy_target_host="127.0.0.1",
            proxy_target_port=PORT,
            log_file_path=os.path.join(os.path.abspath(self.mktemp()), "A.log"),
        )
        launcher = Launcher(
            cast(ReadinessReactor, self.reactor),
            self.reactor.signal_group,
            False,
            connect=self.connect,
        )
        self.lifecycle = ServiceLifecycle(config, RecordingOwner(), launcher, max_wait=30.0)
        self.addCleanup(self.end_processes)

    def end_processes(self) -> None:
        for process in self.reactor.live_processes():
            process.exit(0)

    def test_first_taker_of_the_start(self) -> None:
        """
        Two clients wait for the start: the first that asks gets the
        connection, the other none; a client served later gets none either.
        """
        taken: list[socket.socket | None] = []

        def take(lease: object) -> None:
            taken.append(cast(Lease, lease).take_connection())

        self.lifecycle.acquire().addCallback(take)
        self.lifecycle.acquire().addCallback(take)
        self.connect.listen()
        self.reactor.advance(0)
        self.assertEqual(taken, [self.connect.made[0], None])
        later = self.successResultOf(self.lifecycle.acquire())
        self.assertIsNone(cast(Lease, later).take_connection())

    def test_closed_when_nobody_takes_it(self) -> None:
        """Clients that do not ask (the OpenAI port's): closed once they are served."""
        leases = []
        self.lifecycle.acquire().addCallback(leases.append)
        self.connect.listen()
        self.reactor.advance(0)
        self.assertEqual(len(leases), 1)
        [made] = self.connect.made
        self.assertEqual(made.fileno(), -1)
        self.assertIsNone(cast(Lease, leases[0]).take_connection())

    def test_released_lease_takes_nothing(self) -> None:
        """A lease released in its callback (a client gone) leaves it, to be closed."""
        self.lifecycle.acquire().addCallback(lambda lease: lease.release())
        taken: list[socket.socket | None] = []
        self.lifecycle.acquire().addCallback(
            lambda lease: taken.append(cast(Lease, lease).take_connection())
        )
        self.connect.listen()
        self.reactor.advance(0)
        self.assertEqual(taken, [self.connect.made[0]])


@implementer(IReactorSocket)
class AdoptingReactor(MemoryReactorClock):
    """Records adopted connections (and still records C{connectTCP})."""

    def __init__(self) -> None:
        super().__init__()
        self.adopted: list[tuple[int, int, object]] = []

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: object, factory: object) -> None:
        raise NotImplementedError()

    def adoptStreamConnection(
        self, fileDescriptor: int, addressFamily: object, factory: object
    ) -> None:
        # What Twisted does first: a copy of the descriptor, which stays open.
        self.adopted.append((os.dup(fileDescriptor), cast(int, addressFamily), factory))

    def adoptDatagramPort(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError()


class FakeLease:
    """A lease that may hold a connection."""

    host = "127.0.0.1"
    port = PORT
    may_reconnect = True

    def __init__(self, made: socket.socket | None) -> None:
        self.made = made
        self.released = False

    def take_connection(self) -> socket.socket | None:
        made, self.made = self.made, None
        return made

    def release(self) -> None:
        self.released = True


class TcpHandoverTests(SynchronousTestCase):
    """A TCP client's connection to the backend: the one handed over, else its own."""

    def connection(self, reactor: object) -> ServiceConnection:
        server = ServiceConnection()
        server.reactor = reactor  # type: ignore[assignment]
        server.transport = StringTransport()
        server._closed = False
        server._held = []
        server._held_bytes = 0
        return server

    def pair(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return theirs

    def test_adopted(self) -> None:
        """The lease's connection is adopted (Twisted's copy), ours closed, no connectTCP."""
        reactor = AdoptingReactor()
        made = self.pair()
        family = made.family
        self.connection(reactor)._connect(FakeLease(made))  # type: ignore[arg-type]
        [(fd, adopted_family, factory)] = reactor.adopted
        self.addCleanup(os.close, fd)
        self.assertEqual(adopted_family, family)
        self.assertIsInstance(factory, BackendConnectionFactory)
        self.assertEqual(made.fileno(), -1)
        self.assertEqual(reactor.tcpClients, [])

    def test_nothing_to_adopt(self) -> None:
        """No connection handed over: it connects to the lease's address."""
        reactor = AdoptingReactor()
        self.connection(reactor)._connect(FakeLease(None))  # type: ignore[arg-type]
        self.assertEqual(reactor.adopted, [])
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("127.0.0.1", PORT)])

    def test_reactor_that_cannot_adopt(self) -> None:
        """A reactor without IReactorSocket: the connection is closed, and it connects."""
        reactor = TcpOnlyReactor()
        made = self.pair()
        self.connection(reactor)._connect(FakeLease(made))  # type: ignore[arg-type]
        self.assertEqual(made.fileno(), -1)
        self.assertEqual(reactor.connects, [("127.0.0.1", PORT)])


class TcpOnlyReactor:
    """Connects (records it), and cannot adopt a connection."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    def connectTCP(self, host: str, port: int, factory: object) -> None:
        self.connects.append((host, port))
