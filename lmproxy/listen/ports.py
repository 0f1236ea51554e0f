"""
Listening ports that open before the reactor runs.

Every port of the config listens before the service tree is built
(L{lmproxy.listen.sockets}), so that a port that cannot be opened stops
lmproxy at once with an error naming the port, and clients that connect right
after launch wait in the kernel's accept queue instead of being refused.  When
the tree starts, each socket is handed to the reactor (L{AdoptedPort}, through
an L{lmproxy.listen.acceptor.AcceptingPort}), which accepts the connections
queued meanwhile.  L{LazySite} lets a port open before the heavier
imports that its web site needs.

This module imports no twisted.web: it is on the path to the first listener.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Protocol, ServerFactory

from lmproxy.listen.acceptor import AcceptingPort
from lmproxy.listen.sockets import ListeningSocket

if TYPE_CHECKING:
    from twisted.web.server import Site


class AdoptedPort(Service):
    """
    Serves C{factory} on a socket that is already listening (see
    L{lmproxy.listen.sockets}), from the moment the service starts until it
    stops.
    """

    def __init__(
        self,
        reactor: Any,
        listening: ListeningSocket,
        factory: IProtocolFactory,
        banner: str | None = None,
    ) -> None:
        """
        @param reactor: an C{IReactorFDSet}, C{IReactorSocket} and C{IReactorTime}:
            watches the socket, adopts its clients.
        @param listening: a bound, listening, non-blocking IPv4 or IPv6 TCP socket
            (L{lmproxy.listen.sockets.listen_socket}); this service owns it
            from now on.
        @param factory: builds a protocol for each connection.
        @param banner: the line logged when it starts listening (see
            L{AcceptingPort}).
        """
        self._reactor = reactor
        self._banner = banner
        self._socket: ListeningSocket | None = listening
        self._factory = factory
        self._port: AcceptingPort | None = None

    def startService(self) -> None:
        """Adopt the socket: the reactor accepts the connections the kernel queued, and more."""
        super().startService()
        assert self._socket is not None, "an AdoptedPort starts once"
        listening, self._socket = self._socket, None
        # Not the reactor's adoptStreamPort: an AcceptingPort outlives a
        # shortage of file descriptors (see lmproxy.listen.acceptor).
        port = AcceptingPort(
            self._reactor,
            socket.socket(fileno=listening.detach()),
            self._factory,
            banner=self._banner,
        )
        port.startListening()
        self._port = port

    def serve(self, factory: IProtocolFactory, banner: str | None = None) -> None:
        """
        Serve C{factory} from the next accepted connection on, on the same
        socket (see L{AcceptingPort.serve}: the banner is logged again if it
        changed); before the service starts, serve it from the start.

        @param factory: builds a protocol for each connection from now on.
        @param banner: what the port serves now.
        """
        self._factory, self._banner = factory, banner
        if self._port is not None:
            self._port.serve(factory, banner)

    @property
    def factory(self) -> IProtocolFactory:
        """What builds the protocol of each connection."""
        return self._factory

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
