"""
Per-service TCP forwarding: a ``portforward.ProxyFactory`` whose connections
ask the supervisor for a running backend before they connect to it.

While the client waits for its service, what it sends is read and held (up to
ClientRequestBufferLimitBytes, then reading pauses: backpressure).  Reading on
is what lets lmproxy notice at once that a waiting client has left; a client
that leaves cancels its wait.  Once connected, bytes flow both ways with flow
control (each transport is the other's producer), and when either side closes
the other is closed too.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTCP, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import portforward
from twisted.python.failure import Failure

from lmproxy.interfaces import IBackends, ILease, ServiceUnavailable, UnknownService
from lmproxy.logs import log_observer

READ_SIZE = 256 * 1024


def _tune(transport: object) -> None:
    if ITCPTransport.providedBy(transport):
        # Small request/response exchanges must not wait for Nagle's algorithm.
        ITCPTransport(transport).setTcpNoDelay(True)
        # Fewer, larger reads and writes for bulk transfers (Twisted reads 64 KiB).
        transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]


class BackendConnection(portforward.ProxyClient):
    """lmproxy's connection to the backend, peer of a L{ServiceConnection}."""

    peer: ServiceConnection

    def connectionMade(self) -> None:
        _tune(self.transport)
        held = self.peer.take_held_data()
        if held:
            assert self.transport is not None
            self.transport.write(held)
        super().connectionMade()


class BackendConnectionFactory(portforward.ProxyClientFactory):
    """Connects one L{ServiceConnection} to its backend."""

    protocol = BackendConnection
    noisy = False
    server: ServiceConnection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.server.backend_connection_failed(reason)


class ServiceConnection(portforward.ProxyServer):
    """A client of one service, from accept to close."""

    log = Logger(observer=log_observer)
    clientProtocolFactory = BackendConnectionFactory
    factory: ServiceProxyFactory

    def connectionMade(self) -> None:
        _tune(self.transport)
        self.log.debug(
            "{service}: client {peer} connected",
            service=self.factory.service,
            peer=self.transport.getPeer(),
        )
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._lease: ILease | None = None
        self._closed = False
        self._waiting: Deferred[ILease] | None = self.factory.backends.acquire(self.factory.service)
        self._waiting.addCallbacks(self._connect, self._unavailable)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)  # type: ignore[union-attr]
            return
        self._held.append(data)
        self._held_bytes += len(data)
        limit = self.factory.buffer_limit
        if limit and self._held_bytes >= limit:
            self.transport.pauseProducing()

    def take_held_data(self) -> bytes:
        held, self._held, self._held_bytes = b"".join(self._held), [], 0
        return held

    def _connect(self, lease: ILease) -> None:
        self._waiting = None
        self._lease = lease
        if self._closed:
            lease.release()
            return
        client = self.clientProtocolFactory()
        client.setServer(self)
        self.factory.reactor.connectTCP(lease.host, lease.port, client)

    def _unavailable(self, reason: Failure) -> None:
        self._waiting = None
        if reason.check(CancelledError):
            return  # the client left while waiting
        if reason.check(ServiceUnavailable, UnknownService):
            self.log.info(
                "{service}: closing client {peer}: {why}",
                service=self.factory.service,
                peer=self.transport.getPeer(),
                why=reason.getErrorMessage(),
            )
        else:
            self.log.failure("{service}: no backend", reason, service=self.factory.service)
        self.transport.loseConnection()

    def backend_connection_failed(self, reason: Failure) -> None:
        lease, self._lease = self._lease, None
        if lease is None or self._closed:
            return
        self.log.warn(
            "{service}: cannot connect to {host}:{port}: {why}",
            service=self.factory.service,
            host=lease.host,
            port=lease.port,
            why=reason.getErrorMessage(),
        )
        if not lease.may_reconnect:
            lease.release()
            self.transport.loseConnection()
            return
        self._waiting = lease.reconnect()
        self._waiting.addCallbacks(self._connect, self._unavailable)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.debug(
            "{service}: client {peer} gone",
            service=self.factory.service,
            peer=self.transport.getPeer(),
        )
        self._closed = True
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        super().connectionLost(reason)
        if self._lease is not None:
            self._lease.release()


class ServiceProxyFactory(portforward.ProxyFactory):
    """Listens for the clients of one service."""

    protocol = ServiceConnection
    noisy = False

    def __init__(
        self,
        backends: IBackends,
        service: str,
        buffer_limit: int,
        reactor: IReactorTCP,
    ) -> None:
        self.backends = backends
        self.service = service
        self.buffer_limit = buffer_limit
        self.reactor = reactor
