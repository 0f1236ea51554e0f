"""
Tests of L{lmproxy.listen.porttable}: the ports of a reload, on real sockets
on 127.0.0.1 with ports chosen by the OS, and the real reactor.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from lmproxy.listen.porttable import PortTable
from lmproxy.listen.sockets import PortsUnavailable, listen_socket
from lmproxy.testing.ports import free_ports


class Greeter(Protocol):
    """Says its factory's name, then echoes."""

    factory: Named

    def connectionMade(self) -> None:
        self.factory.live.append(self)
        self.transport.write(self.factory.name + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.live.remove(self)


class Named(Factory):
    protocol = Greeter
    noisy = False

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.live: list[Greeter] = []
        self.starts = self.stops = 0

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1


class Client(Protocol):
    """Collects what it receives; C{expect} fires once it has received that much."""

    def __init__(self) -> None:
        self.received = b""
        self._wanted: tuple[bytes, Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def expect(self, data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._wanted = (data, d)
        self._check()
        return d.addTimeout(10, reactor)

    def _check(self) -> None:
        if self._wanted is not None and self.received.endswith(self._wanted[0]):
            (_, d), self._wanted = self._wanted, None
            d.callback(self.received)


class PortTableTests(TestCase):
    def setUp(self) -> None:
        self.table = PortTable(reactor)
        self.a, self.b = Named(b"A"), Named(b"B")
        self.port = self.add(self.a, "A")
        self.table.startService()
        self.addCleanup(self.table.stopService)
        self.clients: list[Client] = []

    def add(self, factory: Named, banner: str, address: str = "127.0.0.1") -> int:
        listening = listen_socket(0, address)
        port: int = listening.getsockname()[1]
        self.table.add(port, listening, factory, banner)
        return port

    @inlineCallbacks
    def connect(self, port: int, host: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
        client = Client()
        yield TCP4ClientEndpoint(reactor, host, port, timeout=10).connect(
            Factory.forProtocol(lambda: client)
        )
        self.addCleanup(lambda: client.transport.loseConnection())
        return client

    def keys(self, *ports: int, address: str = "127.0.0.1") -> dict[int, tuple[str, str]]:
        return {
            port: (f'Services[{i}] ("s{i}").ListenPort', address) for i, port in enumerate(ports)
        }

    def refused(self, port: int, host: str = "127.0.0.1") -> bool:
        probe = socket.socket()
        try:
            return probe.connect_ex((host, port)) == errno.ECONNREFUSED
        finally:
            probe.close()

    @inlineCallbacks
    def test_keep_same_factory(self):  # type: ignore[no-untyped-def]
        """A port kept with the same factory: same socket, no stop, no banner again."""
        with capturedLogs() as events:
            yield self.table.apply(
                self.table.prepare(self.keys(self.port)), {self.port: (self.a, "A")}
            )
        self.assertEqual([e for e in events if e.get("banner")], [])
        client = yield self.connect(self.port)
        yield client.expect(b"A\n")
        self.assertEqual((self.a.starts, self.a.stops), (1, 0))

    @inlineCallbacks
    def test_move_keeps_the_socket(self):  # type: ignore[no-untyped-def]
        """
        A port that another factory serves now keeps its socket: a client
        queued in the kernel before the change is served by the new factory.
        """
        queued = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(queued.close)
        with capturedLogs() as events:
            plan = self.table.prepare(self.keys(self.port))
            yield self.table.apply(plan, {self.port: (self.b, "Port now serves B")})
        self.assertEqual([e["banner"] for e in events if e.get("banner")], ["Port now serves B"])
        self.assertIs(self.table.factory(self.port), self.b)
        self.assertEqual((self.a.stops, self.b.starts), (1, 1))
        # Read through the reactor, which accepts it meanwhile.
        queued.setblocking(False)
        client = Client()
        reactor.adoptStreamConnection(
            queued.fileno(), socket.AF_INET, Factory.forProtocol(lambda: client)
        )
        self.addCleanup(lambda: client.transport.loseConnection())
        yield client.expect(b"B\n")  # accepted after the apply, by B
        self.assertEqual(client.received, b"B\n")

    @inlineCallbacks
    def test_close_live_connection_survives(self):  # type: ignore[no-untyped-def]
        client = yield self.connect(self.port)
        yield client.expect(b"A\n")
        yield self.table.apply(self.table.prepare({}), {})
        self.assertEqual(self.table.addresses, {})
        self.assertTrue(self.refused(self.port))
        client.transport.write(b"still here")
        yield client.expect(b"still here")
        self.assertEqual(len(self.a.live), 1)

    @inlineCallbacks
    def test_new_port(self):  # type: ignore[no-untyped-def]
        (new,) = free_ports(1)
        plan = self.table.prepare(self.keys(self.port, new))
        with capturedLogs() as events:
            yield self.table.apply(plan, {self.port: (self.a, "A"), new: (self.b, "B here")})
        self.assertEqual([e["banner"] for e in events if e.get("banner")], ["B here"])
        client = yield self.connect(new)
        yield client.expect(b"B\n")

    def test_unavailable_port_refused(self) -> None:
        """The port held elsewhere is named with its key; the other new one is closed again."""
        held = listen_socket(0, "127.0.0.1")
        self.addCleanup(held.close)
        taken = held.getsockname()[1]
        (free,) = free_ports(1)
        keys = self.keys(self.port, free, taken)
        error = self.assertRaises(PortsUnavailable, self.table.prepare, keys)
        self.assertEqual(len(error.problems), 1)
        self.assertIn(f'Services[2] ("s2").ListenPort {taken} on 127.0.0.1: address', str(error))
        listen_socket(free, "127.0.0.1").close()  # free again
        self.assertEqual(self.table.addresses, {self.port: "127.0.0.1"})

    def test_cancel(self) -> None:
        (free,) = free_ports(1)
        plan = self.table.prepare(self.keys(self.port, free))
        self.assertFalse(self.refused(free))  # opened by the plan
        plan.cancel()
        self.assertTrue(self.refused(free))
        self.assertRaises(ValueError, self.table.apply, plan, {})
        self.assertEqual(list(self.table.addresses), [self.port])

    @inlineCallbacks
    def test_readdress_beside(self):  # type: ignore[no-untyped-def]
        """127.0.0.1 to 127.0.0.2: the new socket opens at prepare, the old closes at apply."""
        plan = self.table.prepare(self.keys(self.port, address="127.0.0.2"))
        yield self.table.apply(plan, {self.port: (self.a, "A")})
        self.assertTrue(self.refused(self.port))
        client = yield self.connect(self.port, "127.0.0.2")
        yield client.expect(b"A\n")
        self.assertEqual((self.a.starts, self.a.stops), (1, 0))  # kept started across

    @inlineCallbacks
    def test_readdress_rebinds_at_apply(self):  # type: ignore[no-untyped-def]
        """127.0.0.1 to every interface: held by our own socket, so re-bound at apply."""
        plan = self.table.prepare(self.keys(self.port, address="0.0.0.0"))
        self.assertEqual(self.table.addresses, {self.port: "127.0.0.1"})
        yield self.table.apply(plan, {self.port: (self.b, "B")})
        self.assertEqual(self.table.addresses, {self.port: "0.0.0.0"})
        client = yield self.connect(self.port)
        yield client.expect(b"B\n")

    @inlineCallbacks
    def test_rebind_that_fails_listens_again(self):  # type: ignore[no-untyped-def]
        """Someone else holds the new address: the old one listens again, the key is logged."""
        other = listen_socket(self.port, "127.0.0.2")
        self.addCleanup(other.close)
        plan = self.table.prepare(self.keys(self.port, address="0.0.0.0"))
        with capturedLogs() as events:
            yield self.table.apply(plan, {self.port: (self.a, "A")})
        errors = [e["problem"] for e in events if "problem" in e]
        self.assertEqual(len(errors), 1)
        self.assertIn(f'Services[0] ("s0").ListenPort {self.port}', errors[0])
        self.assertEqual(self.table.addresses, {self.port: "127.0.0.1"})
        client = yield self.connect(self.port)
        yield client.expect(b"A\n")

    @inlineCallbacks
    def test_factory_moving_between_ports_never_stops(self):  # type: ignore[no-untyped-def]
        """A's port closes while A serves the other port now: A is never stopped."""
        other = self.add(self.b, "B")
        yield self.table.apply(self.table.prepare(self.keys(other)), {other: (self.a, "A")})
        self.assertEqual((self.a.starts, self.a.stops), (1, 0))
        self.assertEqual((self.b.starts, self.b.stops), (1, 1))
        self.assertTrue(self.refused(self.port))

    @inlineCallbacks
    def test_stop_closes_every_port(self):  # type: ignore[no-untyped-def]
        other = self.add(self.b, "B")
        yield self.table.stopService()
        self.assertTrue(self.refused(self.port) and self.refused(other))
        self.assertEqual((self.a.stops, self.b.stops), (1, 1))

    def test_stale_plan_refused(self) -> None:
        first = self.table.prepare(self.keys(self.port))
        second = self.table.prepare(self.keys(self.port))
        self.table.apply(first, {self.port: (self.a, "A")})
        self.assertRaises(ValueError, self.table.apply, second, {self.port: (self.a, "A")})
        self.assertRaises(
            ValueError, self.table.apply, self.table.prepare(self.keys(self.port)), {}
        )
