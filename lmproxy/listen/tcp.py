"""
Per-service TCP forwarding: a C{twisted.protocols.portforward.ProxyFactory} whose connections ask
the supervisor for a running backend before they connect to it.

While the client waits for its service, what it sends is read and held (up to
ClientRequestBufferLimitBytes, then reading pauses: backpressure).  Reading on is what lets lmproxy
notice at once that a waiting client has left; a client that leaves cancels its wait.  Once
connected, bytes flow both ways with flow control, through a L{lmproxy.listen.relay.Relay} between
the two sockets (or, for transports without a socket, through the transports, each the other's
producer), and when either side closes the other is closed too.  A client that waited for a start
gets the connection that found the backend ready, if its lease offers one
(C{ILease.take_connection}), instead of opening another.  A failed connection to the backend is
retried after L{ILease.reconnect} as long as the lease allows it (L{ILease.may_reconnect}: once per
client), as the OpenAI port does.

With C{MaxConnections}, a client first takes a turn of the service's L{RequestLimit}, and only then
asks for the backend: at most that many clients have a backend (or wait for one) at once, the
others wait for a turn, first come first served, reading and holding what they send as above.  A
turn is given back as soon as either side of its proxied connection closes (or the client is closed
unserved).  A client waiting for a turn is not a waiting connection of the service (the supervisor
never hears of it: it starts nothing, holds nothing up and keeps nothing from being stopped); the
factory counts them (L{ServiceProxyFactory.queued}), as the OpenAI port counts its queued requests
apart.  Its wait counts in the one bound of
C{MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds}, from its arrival: a client still
waiting for its turn then is closed, and so is one that got its turn but still waits for its
service, unless that service is starting (the supervisor's own rule: a start, once begun, has its
own timeout).

Unlike the HTTP ports (L{lmproxy.listen.timeouts}), nothing here times out a client that has its
backend: the protocol is the service's, and its clients may rightly be silent for long (a
websocket, a database session), as upstream allows.  A client that does not read holds only its own
connection: the backend is not read while the client's socket is full.  A reload gives the port its
service's new settings (L{ServiceProxyFactory.reconfigure}).
"""

from __future__ import annotations

import socket
import sys
from functools import partial

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import portforward
from twisted.python.failure import Failure

from lmproxy.config import ServiceConfig
from lmproxy.config.model import DEFAULT_MAX_WAIT_SECONDS
from lmproxy.interfaces import IBackends, ILease, ServiceState, ServiceUnavailable, UnknownService
from lmproxy.listen.limits import RequestLimit, Turn
from lmproxy.listen.relay import Relay
from lmproxy.logs import address_text, debugging, log_observer
from lmproxy.timers import Timer


def _tune(transport: object) -> None:
    if ITCPTransport.providedBy(transport):
        # Small request/response exchanges must not wait for Nagle's algorithm.
        ITCPTransport(transport).setTcpNoDelay(True)


class BackendConnection(portforward.ProxyClient):
    """lmproxy's connection to the backend, peer of a L{ServiceConnection}."""

    peer: ServiceConnection

    def connectionMade(self) -> None:
        """
        Send what the client sent while it waited, then forward both ways:
        through a L{Relay} between the sockets, or else the transports.
        """
        assert self.transport is not None
        if self.peer.closed:
            # The client left while this connection was being made (its
            # lease is released already): nobody to forward for.
            self.transport.loseConnection()
            return
        _tune(self.transport)
        held = self.peer.take_held_data()
        relay = Relay.between(self.peer.reactor, self.peer.transport, self.transport)
        if relay is not None:
            self.peer.setPeer(self)
            relay.start(held)
            return
        if held:
            self.transport.write(held)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Close the client too (C{ProxyClient}), and give its turn back now."""
        peer = self.peer  # Proxy.connectionLost forgets it
        super().connectionLost(reason)
        if peer is not None:
            peer.give_back_turn()


class BackendConnectionFactory(portforward.ProxyClientFactory):
    """Connects one L{ServiceConnection} to its backend."""

    protocol = BackendConnection
    noisy = False
    server: ServiceConnection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        """Let the client's connection decide: reconnect, or close."""
        self.server.backend_connection_failed(reason)


class ServiceConnection(portforward.ProxyServer):
    """
    A client of one service, from accept to close.

    Unlike C{ProxyServer}, it reads (and holds) what the client sends while
    it waits, and connects to the address its lease gives, through the
    C{reactor} that its factory set.
    """

    log = Logger(observer=log_observer)
    clientProtocolFactory = BackendConnectionFactory
    factory: ServiceProxyFactory
    _deadline: Timer | None = None  # while it waits for a turn or for the service

    def connectionMade(self) -> None:
        """Ask for a backend; read the client meanwhile (see the module)."""
        _tune(self.transport)
        self._debug("{service}: client {peer} connected")
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._lease: ILease | None = None
        self._closed = False
        self._waiting: Deferred[ILease] | None = None
        self._turn: Turn | None = None
        self._taking: Deferred[Turn] | None = None
        self._deadline = None
        limit = self.factory.limit
        if limit is None:
            self._wait(self.factory.backends.acquire(self.factory.service))
            return
        taking = limit.take()
        if not taking.called:
            self._deadline = Timer(self.factory.clock)
            self._deadline.arm(self.factory.max_wait, self._gave_up)
        self._taking = taking
        taking.addCallbacks(self._turn_taken, self._turn_lost)

    def _debug(self, event: str) -> None:
        if debugging():  # else the event is not even built (a cold start waits for it)
            peer = address_text(self.transport.getPeer())
            self.log.debug(event, service=self.factory.service, peer=peer)

    def _turn_taken(self, turn: Turn) -> None:
        self._taking = None
        self._turn = turn
        self._wait(self.factory.backends.acquire(self.factory.service))

    def _turn_lost(self, reason: Failure) -> None:
        self._taking = None
        reason.trap(CancelledError)  # it left the queue: gone, or given up

    def give_back_turn(self) -> None:
        """Its proxied connection is over (or never will be): the next client goes."""
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.done()

    def _gave_up(self) -> None:
        if self._taking is not None:
            taking, self._taking = self._taking, None
            taking.cancel()
            why = "its turn (MaxConnections)"
        elif self._waiting is not None:
            service = self.factory.backends.service_status(self.factory.service)
            if service.status is ServiceState.STARTING:
                return  # the start has its own timeout, as for any waiting client
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
            self.give_back_turn()
            why = "its turn (MaxConnections) and resources"
        else:
            return
        self.log.warn(
            "{service}: closing client {peer}: it waited {seconds} s for {why}",
            service=self.factory.service,
            peer=address_text(self.transport.getPeer()),
            seconds=self.factory.max_wait,
            why=why,
        )
        self.transport.loseConnection()

    def _end_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        """Forward to the backend, or hold until connected to it."""
        if self.peer is not None:
            self.peer.transport.write(data)  # type: ignore[union-attr]
            return
        self._held.append(data)
        self._held_bytes += len(data)
        limit = self.factory.buffer_limit
        if limit and self._held_bytes >= limit:
            self.transport.pauseProducing()

    @property
    def closed(self) -> bool:
        """Whether the client's connection is gone."""
        return self._closed

    def take_held_data(self) -> bytes:
        """What the client sent before the backend connection was made; forgets it."""
        held, self._held, self._held_bytes = b"".join(self._held), [], 0
        return held

    def _wait(self, lease: Deferred[ILease]) -> None:
        self._waiting = lease
        lease.addCallbacks(self._connect, self._unavailable)

    def _connect(self, lease: ILease) -> None:
        self._waiting = None
        self._end_deadline()
        self._lease = lease
        if self._closed:
            lease.release()
            return
        client = self.clientProtocolFactory()
        client.setServer(self)
        assert self.reactor is not None  # set by ServiceProxyFactory.buildProtocol
        # The lease may hand over the connection that found a freshly started
        # backend ready.
        made: socket.socket | None = lease.take_connection()
        if made is not None:
            try:
                if IReactorSocket.providedBy(self.reactor):
                    # Twisted takes a copy of the descriptor; ours is closed
                    # below.  Any factory builds the protocol (typed as servers').
                    IReactorSocket(self.reactor).adoptStreamConnection(
                        made.fileno(),
                        made.family,
                        client,  # type: ignore[arg-type]
                    )
                    return
            finally:
                made.close()
        self.reactor.connectTCP(lease.host, lease.port, client)

    def _unavailable(self, reason: Failure) -> None:
        self._waiting = None
        if reason.check(CancelledError):
            return  # the client left while waiting, or gave up
        self._end_deadline()
        self.give_back_turn()
        if reason.check(ServiceUnavailable, UnknownService):
            self.log.info(
                "{service}: closing client {peer}: {why}",
                service=self.factory.service,
                peer=address_text(self.transport.getPeer()),
                why=reason.getErrorMessage(),
            )
        else:
            self.log.failure("{service}: no backend", reason, service=self.factory.service)
        self.transport.loseConnection()

    def backend_connection_failed(self, reason: Failure) -> None:
        """
        Connecting to the backend failed: reconnect if the lease allows it,
        else release it and close the client.

        @param reason: why the connection failed.
        """
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
            self.give_back_turn()
            self.transport.loseConnection()
            return
        # reconnect() releases this lease; a failure closes the client (_unavailable).
        self._wait(lease.reconnect())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the wait or close the backend connection; release the lease."""
        self._debug("{service}: client {peer} gone")
        self._closed = True
        self._end_deadline()
        if self._taking is not None:
            taking, self._taking = self._taking, None
            taking.cancel()  # leaves the queue at once
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        super().connectionLost(reason)
        if self._lease is not None:
            self._lease.release()
        self.give_back_turn()


class ServiceProxyFactory(portforward.ProxyFactory):
    """
    Listens for the clients of one service.

    Its C{host} and C{port} (those of C{ProxyFactory}) are the service's configured
    target; each connection goes to the address of its lease, which the supervisor
    resolved when it started the service.

    @ivar backends: hands out the backends.
    @ivar service: the service's name.
    @ivar buffer_limit: bytes held per waiting client before reading pauses (0: no limit).
    @ivar limit: the turns of its C{MaxConnections}, or C{None}: no limit.
    @ivar max_wait: seconds a client may wait for its turn and its service together.
    @ivar clock: times that wait.
    """

    protocol = ServiceConnection
    noisy = False

    def __init__(
        self,
        backends: IBackends,
        service: ServiceConfig,
        buffer_limit: int,
        reactor: IReactorTCP,
        max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        """
        @param backends: hands out the backends.
        @param service: the service whose port this is.
        @param buffer_limit: bytes held per waiting client before reading pauses (0: no limit).
        @param reactor: connects to the backends, and times the wait for a turn (it
            provides C{IReactorTime} too).
        @param max_wait: the config's C{max_wait}.
        """
        super().__init__(service.proxy_target_host, service.proxy_target_port)
        self.backends = backends
        self.service = service.name
        self.buffer_limit = buffer_limit
        self._reactor = reactor
        self.clock = IReactorTime(reactor)
        self.max_wait = max_wait
        self.limit = self._limit(service.max_connections)

    def _limit(self, turns: int | None) -> RequestLimit | None:
        notify = partial(self.backends.queued, self.service)
        return None if turns is None else RequestLimit(turns, None, notify=notify)

    def reconfigure(self, service: ServiceConfig, buffer_limit: int, max_wait: float) -> None:
        """
        Serve the new settings of the same service (a reload): its target, buffer limit and
        max wait for the clients from now on, its C{MaxConnections} at once
        (L{RequestLimit.resize}; without a limit any more, every waiting client gets its
        turn).  Live connections go on, giving their turns back to the limit they took.

        @param service: the service's new settings (the same name).
        @param buffer_limit: as for the constructor.
        @param max_wait: the config's new C{max_wait}.
        """
        if service.name != self.service:
            raise ValueError(f"the port of {self.service} cannot serve {service.name}")
        self.host, self.port = service.proxy_target_host, service.proxy_target_port
        self.buffer_limit, self.max_wait = buffer_limit, max_wait
        limit, turns = self.limit, service.max_connections
        if limit is not None and turns is not None:
            limit.resize(turns, None)
            return
        self.limit = self._limit(turns)
        if limit is not None:
            # Turns for all: counted by the old limit until they end.
            limit.resize(sys.maxsize, None)

    @property
    def queued(self) -> int:
        """Clients waiting for a turn now (C{MaxConnections}); 0 without a limit."""
        return 0 if self.limit is None else self.limit.waiting

    def buildProtocol(self, addr: IAddress | None) -> ServiceConnection:
        """A L{ServiceConnection} that connects through this factory's reactor."""
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, ServiceConnection)
        # ProxyServer's own hook for its reactor (else it uses the global one),
        # which portforward types as the global reactor's (private) type.
        protocol.reactor = self._reactor  # type: ignore[assignment]
        return protocol
