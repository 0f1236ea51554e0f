"""
Unit tests of C{MaxConnections} on a service's TCP port
(L{lmproxy.listen.tcp} over L{lmproxy.listen.limits.RequestLimit}), with
C{StringTransport}s, a memory reactor and fake backends: no sockets, no real
time; and of its config key.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ConfigError, parse_config
from lmproxy.interfaces import ServiceState
from lmproxy.listen.tcp import ServiceConnection, ServiceProxyFactory
from lmproxy.testing import FakeBackends
from tests.test_forward import service_config

MAX_WAIT = 60.0


def _config(max_connections: int | None) -> Config:
    return service_config(MAX_WAIT, max_connections=max_connections)


class Client:
    """One client of the port: its protocol, its transport, its backend's."""

    def __init__(self, test: TcpLimitTests, number: int) -> None:
        self.test = test
        peer = IPv4Address("TCP", "127.0.0.1", 50000 + number)
        protocol = test.factory.buildProtocol(peer)
        assert isinstance(protocol, ServiceConnection)
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=peer)
        self.backend: StringTransport | None = None
        protocol.makeConnection(self.transport)

    def connected(self) -> bool:
        """Whether the listener connects (or connected) this client to the backend."""
        if self.backend is not None:
            return True
        for _, _, factory, _, _ in self.test.reactor.tcpClients:
            if factory.server is self.protocol:
                backend = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 18081))
                self.backend = StringTransport()
                backend.makeConnection(self.backend)
                return True
        return False

    def leave(self) -> None:
        """The client closes its connection."""
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def backend_closes(self) -> None:
        """The model server closes this client's connection."""
        assert self.connected() and self.protocol.peer is not None
        self.protocol.peer.connectionLost(Failure(ConnectionDone()))


class TcpLimitTests(SynchronousTestCase):
    """Clients of a service with C{MaxConnections}, from accept to close."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.use(1)

    def use(self, max_connections: int | None, running: bool = True) -> None:
        config = _config(max_connections)
        self.backends = FakeBackends(config)
        if running:
            self.backends.set_state("llm", ServiceState.RUNNING)
        self.factory = ServiceProxyFactory(
            self.backends, config.services[0], 10, self.reactor, max_wait=MAX_WAIT
        )
        self.numbered = 0

    def client(self) -> Client:
        self.numbered += 1
        return Client(self, self.numbered)

    def counts(self) -> tuple[int, int, int]:
        """(queued for a turn, waiting for the service, proxied) now."""
        service = self.backends.service_status("llm")
        # What the factory counts is what /status shows (IBackends.queued).
        self.assertEqual(service.queued_connections, self.factory.queued)
        return self.factory.queued, service.waiting_connections, service.proxied_connections

    def test_no_limit(self) -> None:
        """Without MaxConnections every client is connected at once."""
        self.use(None)
        clients = [self.client() for _ in range(3)]
        self.assertTrue(all(c.connected() for c in clients))
        self.assertIsNone(self.factory.limit)
        self.assertEqual(self.counts(), (0, 0, 3))

    def test_one_at_a_time(self) -> None:
        """
        With MaxConnections 1 the second client is not connected, nor asks
        for the service (it is no waiting connection), until the first closes.
        """
        first, second = self.client(), self.client()
        self.assertTrue(first.connected())
        self.assertFalse(second.connected())
        self.assertEqual(self.counts(), (1, 0, 1))
        first.leave()
        self.assertTrue(second.connected())
        self.assertEqual(self.counts(), (0, 0, 1))

    def test_several_at_once(self) -> None:
        self.use(2)
        clients = [self.client() for _ in range(3)]
        self.assertEqual([c.connected() for c in clients], [True, True, False])
        clients[1].leave()
        self.assertTrue(clients[2].connected())

    def test_first_come_first_served(self) -> None:
        clients = [self.client() for _ in range(4)]
        for holder, after in zip(clients, range(1, 5), strict=True):
            self.assertEqual([c.connected() for c in clients[after:]], [False] * (4 - after))
            self.assertEqual(self.counts(), (4 - after, 0, 1))
            self.assertTrue(holder.connected())
            holder.leave()
        self.assertEqual(self.counts(), (0, 0, 0))

    def test_held_bytes_reach_the_backend_when_the_turn_comes(self) -> None:
        """A queued client is read and held, within ClientRequestBufferLimitBytes."""
        first, second = self.client(), self.client()
        second.protocol.dataReceived(b"12345")
        self.assertEqual(second.transport.producerState, "producing")
        second.protocol.dataReceived(b"67890")
        self.assertEqual(second.transport.producerState, "paused")
        first.leave()
        self.assertTrue(second.connected())
        assert second.backend is not None
        self.assertEqual(second.backend.value(), b"1234567890")
        self.assertEqual(second.transport.producerState, "producing")

    def test_queued_client_closed_at_the_max_wait(self) -> None:
        first, second = self.client(), self.client()
        self.reactor.advance(MAX_WAIT - 1)
        self.assertFalse(second.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(second.transport.disconnecting)
        self.assertEqual(self.counts(), (0, 0, 1))
        second.leave()  # its connection closes
        first.leave()
        self.assertFalse(second.connected())
        assert self.factory.limit is not None
        self.assertEqual(self.factory.limit.taken, 0)

    def test_served_client_has_no_deadline(self) -> None:
        first, second = self.client(), self.client()
        self.reactor.advance(MAX_WAIT / 2)
        first.leave()
        self.assertTrue(second.connected())
        self.reactor.advance(MAX_WAIT)
        self.assertFalse(second.transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_one_bound_for_the_turn_and_the_resources(self) -> None:
        """
        A client that waited for its turn waits for its service only what is
        left of the max wait: the two waits are one bound, not two.
        """
        self.use(1, running=False)
        first, second = self.client(), self.client()
        self.assertEqual(self.counts(), (1, 1, 0))
        self.reactor.advance(MAX_WAIT / 3)
        self.backends.fail_start("llm")  # the first is closed: the turn passes on
        self.assertTrue(first.transport.disconnecting)
        self.assertEqual(self.counts(), (0, 1, 0))
        self.reactor.advance(MAX_WAIT * 2 / 3)
        self.assertTrue(second.transport.disconnecting)
        self.assertEqual(self.counts(), (0, 0, 0))
        assert self.factory.limit is not None
        self.assertEqual(self.factory.limit.taken, 0)

    def test_a_start_under_way_is_not_cut_short(self) -> None:
        """As for any waiting client, a start once begun has its own timeout."""
        self.use(1, running=False)
        first, second = self.client(), self.client()
        self.backends.fail_start("llm")
        self.backends.set_state("llm", ServiceState.STARTING)
        self.reactor.advance(MAX_WAIT)
        self.assertFalse(second.transport.disconnecting)
        self.backends.finish_start("llm")
        self.assertTrue(second.connected())
        self.assertTrue(first.transport.disconnecting)

    def test_a_waiter_that_leaves_leaves_the_queue(self) -> None:
        first, second, third = self.client(), self.client(), self.client()
        second.leave()
        self.assertEqual(self.counts(), (1, 0, 1))
        first.leave()
        self.assertFalse(second.connected())
        self.assertTrue(third.connected())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_turn_passed_on_when_the_backend_closes(self) -> None:
        first, second = self.client(), self.client()
        first.backend_closes()
        self.assertTrue(first.transport.disconnecting)
        self.assertTrue(second.connected())
        first.leave()  # then the client's side closes too: the turn is given once
        third = self.client()
        self.assertFalse(third.connected())
        self.assertEqual(self.counts(), (1, 0, 1))

    def test_turn_passed_on_when_the_client_closes(self) -> None:
        first, second = self.client(), self.client()
        first.connected()
        first.leave()
        assert first.backend is not None
        self.assertTrue(first.backend.disconnecting)
        self.assertTrue(second.connected())

    def test_turn_passed_on_when_the_backend_refuses(self) -> None:
        first, second = self.client(), self.client()
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertTrue(first.transport.disconnecting)
        self.assertTrue(second.connected())

    def test_race_the_next_leaves_as_its_turn_comes(self) -> None:
        """
        The holder closes and, in the same turn of the reactor, the client its
        turn went to leaves: the turn goes on to the next, nothing leaks.
        """
        first, second, third = self.client(), self.client(), self.client()
        first.leave()
        second.leave()
        self.assertTrue(third.connected())
        self.assertEqual(self.counts(), (0, 0, 1))
        self.assertTrue(second.connected())  # its backend connection, once made, is closed
        assert second.backend is not None
        self.assertTrue(second.backend.disconnecting)
        self.assertEqual(self.counts(), (0, 0, 1))

    def test_race_the_next_leaves_just_before(self) -> None:
        first, second, third = self.client(), self.client(), self.client()
        second.leave()
        first.leave()
        self.assertFalse(second.connected())
        self.assertTrue(third.connected())
        self.assertEqual(self.counts(), (0, 0, 1))

    def test_race_leaves_while_waiting_for_the_service(self) -> None:
        """A client that got its turn and left while its service starts passes it on."""
        self.use(1, running=False)
        first, second, third = self.client(), self.client(), self.client()
        self.assertEqual(self.counts(), (2, 1, 0))
        first.leave()
        self.assertEqual(self.counts(), (1, 1, 0))
        second.leave()
        self.assertEqual(self.counts(), (0, 1, 0))
        self.backends.finish_start("llm")
        self.assertEqual([c.connected() for c in (first, second, third)], [False, False, True])
        self.assertEqual(self.counts(), (0, 0, 1))

    def test_race_deadline_just_before_the_turn(self) -> None:
        """
        The deadline and the holder's close at the same instant, the deadline
        first: the waiter is closed, the turn is given back, nothing leaks.
        """
        first, second = self.client(), self.client()
        self.reactor.callLater(MAX_WAIT, first.leave)  # due with the deadline, after it
        self.reactor.advance(MAX_WAIT)
        self.assertTrue(second.transport.disconnecting)
        self.assertFalse(second.connected())
        assert self.factory.limit is not None
        self.assertEqual((self.factory.limit.taken, self.factory.limit.waiting), (0, 0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_race_turn_just_before_the_deadline(self) -> None:
        """The same instant, the turn first: the waiter is served and stays."""
        first = self.client()
        self.reactor.callLater(MAX_WAIT, first.leave)  # due with the deadline, before it
        second = self.client()
        self.reactor.advance(MAX_WAIT)
        self.assertTrue(second.connected())
        self.assertFalse(second.transport.disconnecting)
        self.assertEqual(self.counts(), (0, 0, 1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ConfigTests(SynchronousTestCase):
    def load(self, **keys: object) -> Config:
        service = {"Name": "s", "Command": "x", "ProxyTargetPort": 9000, **keys}
        text = json.dumps({"OpenAiApi": {"ListenPort": 8080}, "Services": [service]})
        return parse_config(text, "config.json", "/tmp")

    def problems(self, **keys: object) -> str:
        return str(self.assertRaises(ConfigError, self.load, **keys))

    def test_loaded(self) -> None:
        (service,) = self.load(ListenPort=7000, MaxConnections=2).services
        self.assertEqual(service.max_connections, 2)
        (service,) = self.load(ListenPort=7000).services
        self.assertIsNone(service.max_connections)

    def test_bad_values(self) -> None:
        for value in (0, -1, "many", 1.5):
            self.assertIn(
                'Services[0] ("s").MaxConnections: expected a positive integer',
                self.problems(ListenPort=7000, MaxConnections=value),
            )

    def test_only_with_a_listen_port(self) -> None:
        self.assertIn(
            'Services[0] ("s").MaxConnections: given, but there is no ListenPort',
            self.problems(OpenAiApi=True, MaxConnections=1),
        )
