"""
Unit tests for the per-service TCP forwarder (L{lmproxy.listen.tcp}), with
C{StringTransport}s, a memory reactor and fake backends: no sockets, no time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.interfaces import ServiceState
from lmproxy.listen.tcp import ServiceConnection, ServiceProxyFactory
from lmproxy.testing import FakeBackends

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)


def service_config(max_wait: float | None = None, **keys: Any) -> Config:
    """One service, C{llm} on port 8081 to 18081, with C{keys} (and the config's max wait)."""
    service = ServiceConfig(
        name="llm", command="true", listen_port=8081, proxy_target_port=18081, **keys
    )
    if max_wait is None:
        return Config(services=(service,))
    return Config(services=(service,), max_wait=max_wait)


def _config(restart: bool = False) -> Config:
    return service_config(restart_on_connection_failure=restart)


class ForwarderTests(SynchronousTestCase):
    """A client of a service's port, from accept to close."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.use_config(_config())

    def use_config(self, config: Config) -> None:
        """Serve the first service of C{config}, from fresh fake backends."""
        self.backends = FakeBackends(config)
        self.factory = ServiceProxyFactory(self.backends, config.services[0], 10, self.reactor)

    def connect_client(self) -> tuple[ServiceConnection, StringTransport]:
        protocol = self.factory.buildProtocol(CLIENT)
        assert isinstance(protocol, ServiceConnection)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def connect_backend(self) -> StringTransport:
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 18081))
        backend = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        backend.makeConnection(transport)
        return transport

    def waiting(self) -> int:
        return self.backends.snapshot().services[0].waiting_connections

    def proxied(self) -> int:
        return self.backends.snapshot().services[0].proxied_connections

    def test_waits_for_the_service_then_forwards_what_it_held(self) -> None:
        """Bytes sent while the service starts reach the backend first, in order."""
        protocol, _client = self.connect_client()
        self.assertEqual(self.waiting(), 1)
        protocol.dataReceived(b"GET / ")
        protocol.dataReceived(b"HTTP/1.1")
        self.assertEqual(self.reactor.tcpClients, [])
        self.backends.finish_start("llm")
        self.assertEqual((self.waiting(), self.proxied()), (0, 1))
        backend = self.connect_backend()
        self.assertEqual(backend.value(), b"GET / HTTP/1.1")
        protocol.dataReceived(b"\r\n\r\n")
        self.assertEqual(backend.value(), b"GET / HTTP/1.1\r\n\r\n")

    def test_backend_bytes_reach_the_client(self) -> None:
        self.backends.set_state("llm", ServiceState.RUNNING)
        protocol, client = self.connect_client()
        backend = self.connect_backend()
        assert protocol.peer is not None
        protocol.peer.dataReceived(b"hello")
        self.assertEqual(client.value(), b"hello")
        self.assertEqual(backend.value(), b"")

    def test_buffer_limit_pauses_reading(self) -> None:
        """Past ClientRequestBufferLimitBytes the client is not read any more."""
        protocol, client = self.connect_client()
        protocol.dataReceived(b"123456789")
        self.assertEqual(client.producerState, "producing")
        protocol.dataReceived(b"0")
        self.assertEqual(client.producerState, "paused")
        self.backends.finish_start("llm")
        backend = self.connect_backend()
        self.assertEqual(backend.value(), b"1234567890")
        self.assertEqual(client.producerState, "producing")

    def test_unbounded_buffer_never_pauses(self) -> None:
        self.factory.buffer_limit = 0
        protocol, client = self.connect_client()
        protocol.dataReceived(b"x" * 100_000)
        self.assertEqual(client.producerState, "producing")

    def test_client_leaving_while_waiting_is_dropped_at_once(self) -> None:
        protocol, _client = self.connect_client()
        self.assertEqual(self.waiting(), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.waiting(), 0)
        self.backends.finish_start("llm")
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.proxied(), 0)

    def test_failed_start_closes_the_client(self) -> None:
        _protocol, client = self.connect_client()
        self.backends.fail_start("llm", "boom")
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_client_close_closes_backend_and_releases_once(self) -> None:
        self.backends.set_state("llm", ServiceState.RUNNING)
        protocol, _client = self.connect_client()
        backend = self.connect_backend()
        self.assertEqual(self.proxied(), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backend.disconnecting)
        self.assertEqual(self.proxied(), 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.proxied(), 0)

    def test_client_leaving_while_the_backend_connects(self) -> None:
        """
        A client gone after its lease was given, before the backend connection
        is made: the lease is released at once, and the backend connection,
        once made, is closed rather than left open for nobody.
        """
        self.backends.set_state("llm", ServiceState.RUNNING)
        protocol, _client = self.connect_client()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.proxied(), 0)
        backend = self.connect_backend()
        self.assertTrue(backend.disconnecting)
        self.assertEqual(self.proxied(), 0)

    def test_backend_close_closes_client(self) -> None:
        self.backends.set_state("llm", ServiceState.RUNNING)
        protocol, client = self.connect_client()
        self.connect_backend()
        assert protocol.peer is not None
        protocol.peer.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(client.disconnecting)

    def test_flow_control_both_ways(self) -> None:
        """Each transport is registered as the producer of the other."""
        self.backends.set_state("llm", ServiceState.RUNNING)
        _protocol, client = self.connect_client()
        backend = self.connect_backend()
        self.assertIs(backend.producer, client)
        self.assertIs(client.producer, backend)
        self.assertTrue(backend.streaming and client.streaming)

    def test_connection_failure_without_restart_closes_client(self) -> None:
        self.backends.set_state("llm", ServiceState.RUNNING)
        _protocol, client = self.connect_client()
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.proxied(), 0)

    def test_connection_failure_with_restart_connects_again(self) -> None:
        """With RestartOnConnectionFailure the client waits for the new run."""
        self.use_config(_config(restart=True))
        self.backends.set_state("llm", ServiceState.RUNNING)
        protocol, client = self.connect_client()
        protocol.dataReceived(b"ping")
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.backends.reconnects, ["llm"])
        self.assertFalse(client.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        backend = self.connect_backend()
        self.assertEqual(backend.value(), b"ping")
        self.assertEqual(self.proxied(), 1)

    def test_connection_failure_after_reconnect_closes_client(self) -> None:
        """A client reconnects at most once: a second failure closes it and releases its lease."""
        self.use_config(_config(restart=True))
        self.backends.set_state("llm", ServiceState.RUNNING)
        _protocol, client = self.connect_client()
        for _ in range(2):
            _, _, factory, _, _ = self.reactor.tcpClients[-1]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.backends.reconnects, ["llm"])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(client.disconnecting)
        self.assertEqual((self.waiting(), self.proxied()), (0, 0))

    def test_factory_is_a_port_forwarder_of_the_configured_target(self) -> None:
        """
        The factory is a C{ProxyFactory} of the service's configured target,
        and its protocols connect through the factory's reactor.
        """
        self.assertEqual((self.factory.host, self.factory.port), ("localhost", 18081))
        protocol, _client = self.connect_client()
        self.assertIs(protocol.reactor, self.reactor)
