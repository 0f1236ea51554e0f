"""
Listening ports that open before the reactor runs.

lmproxy binds and listens on every port of its config while it builds its
service tree (L{bind_ports}), so that a port that cannot be opened stops it
at once with an error naming the port, and clients that connect right after
launch wait in the kernel's accept queue instead of being refused.  When the
tree starts, each socket is adopted into the reactor (L{AdoptedPort}, through
the public C{IReactorSocket.adoptStreamPort}).  L{LazySite} lets a port open
before the heavier imports that its web site needs.

This module imports no twisted.web: it is on the path to the first listener.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory, IReactorSocket
from twisted.internet.protocol import Protocol, ServerFactory

if TYPE_CHECKING:
    from twisted.web.server import Site

LISTEN_BACKLOG = 1024
"""
The accept queue of every port: bursts of new clients (hundreds of concurrent
requests) must not overflow it (with Twisted's default of 50 they are dropped,
and retry after 1 s).
"""


def bind_ports(ports: Iterable[int], backlog: int = LISTEN_BACKLOG) -> dict[int, socket.socket]:
    """
    Bind a TCP socket to each port on every IPv4 interface, and listen.

    @param ports: the port numbers.
    @param backlog: the length of each accept queue.
    @return: the listening (non-blocking) sockets, by port.
    @raise CannotListenError: a port cannot be opened; its message names the
        port.  The sockets bound before it are closed.
    """
    bound: dict[int, socket.socket] = {}
    try:
        for port in ports:
            bound[port] = _bind(port, backlog)
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def _bind(port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As Twisted's own TCP ports do on POSIX: a restarted lmproxy can listen
        # again while connections of the previous one are in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        # The message Twisted gives for a port it cannot open itself.
        raise CannotListenError("", port, e) from None
    return sock


class AdoptedPort(Service):
    """
    Serves C{factory} on a socket that is already listening (see
    L{bind_ports}), from the moment the service starts until it stops.
    """

    def __init__(
        self, reactor: IReactorSocket, listening: socket.socket, factory: IProtocolFactory
    ) -> None:
        """
        @param reactor: adopts the socket.
        @param listening: a bound, listening, non-blocking IPv4 TCP socket;
            this service owns it from now on.
        @param factory: builds a protocol for each connection.
        """
        self._reactor = reactor
        self._socket: socket.socket | None = listening
        self._factory = factory
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        """Adopt the socket: the reactor accepts the connections the kernel queued, and more."""
        super().startService()
        assert self._socket is not None, "an AdoptedPort starts once"
        listening, self._socket = self._socket, None
        # Twisted annotates a ServerFactory; it takes any IProtocolFactory, as listenTCP does.
        factory = cast(ServerFactory, self._factory)
        try:
            self._port = self._reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, factory)
        finally:
            # The reactor listens on its own duplicate of the descriptor.
            listening.close()

    def stopService(self) -> Deferred[None]:
        """Stop listening; fires once the port is closed."""
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            # Never started: the socket bound for it still needs closing.
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return succeed(None)
        stopped = port.stopListening()
        return succeed(None) if stopped is None else stopped


class LazySite(ServerFactory):
    """
    Serves a C{Site} that is built on first use, so that opening the port
    does not wait for the imports the site needs.
    """

    noisy = False  # the port's own "starting on" line says it

    def __init__(self, build: Callable[[], Site]) -> None:
        """
        @param build: builds the site (it may import what the site needs).
        """
        self._build = build
        self._site: Site | None = None

    def site(self) -> Site:
        """The site, built now if it has not been yet."""
        if self._site is None:
            self._site = self._build()
            self._site.noisy = False
            self._site.doStart()
        return self._site

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """The site's protocol for a new connection."""
        return self.site().buildProtocol(addr)

    def stopFactory(self) -> None:
        """Stop the site, if it was built."""
        if self._site is not None:
            self._site.doStop()
