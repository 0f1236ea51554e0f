"""
The OpenAI port's site when it has a hot path (L{lmproxy.listen.front}):
the routes that path hands requests to, and what its connections expect of
a forwarded request.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.web.resource import IResource

from lmproxy.listen.cors import CorsPolicy, CorsSite
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.requesthead import RequestHead
from lmproxy.listen.timeouts import GuardedChannel


class LeanRoutes(TypingProtocol):
    """The hot path's routes, which a L{FrontSite} hands requests to."""

    def takes(self, head: RequestHead) -> bool:
        """
        Whether the route of C{head} is a hot one: the channel then reads its
        body (which its C{Content-Length} bounds) and calls L{forward}.
        """

    def forward(self, channel: FrontChannel, head: RequestHead, body: bytes, raw: bytes) -> None:
        """
        Forward the request, answer on C{channel}, and call its
        L{FrontChannel.answered} once done; or give it back to twisted.web
        with L{FrontChannel.fall_back}C{(raw)}.

        @param raw: the whole request as it came, head and body.
        """


class Exchange(TypingProtocol):
    """A request on its way through the hot path, as its channel sees it."""

    def pause(self) -> None:
        """The client reads slower than the answer comes: stop reading it."""

    def resume(self) -> None:
        """The client caught up."""

    def client_left(self) -> None:
        """The client's connection is gone: drop the request."""


class Tunnel(Exchange, TypingProtocol):
    """A request that has the rest of its connection (L{Tunnels.open})."""

    def data_received(self, data: bytes) -> None:
        """More bytes of the client's, as they come."""


class Tunnels(TypingProtocol):
    """The requests that take the rest of their connection, as they come."""

    def takes(self, head: RequestHead) -> bool:
        """Whether C{head}'s request is one: the channel then calls L{open}."""

    def open(self, channel: FrontChannel, head: RequestHead, body: bytes) -> Tunnel | None:
        """
        Serve the request, which now has the connection; set it as the
        channel's C{exchange}, or answer and close.

        @param body: what came after its head so far.
        @return: what takes the connection's next bytes, if anything.
        """


class FrontSite(CorsSite):
    """
    A L{CorsSite} whose connections are L{FrontChannel}s: its hot routes
    are L{LeanRoutes}, its L{Tunnels} take their connections; twisted.web
    serves the rest with the site's resource.
    """

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        clock: IReactorTime,
        gate: Any,
        routes: LeanRoutes,
        tunnels: Tunnels,
        cors: CorsPolicy | None = None,
    ) -> None:
        """
        @param resource: the root resource, for twisted.web.
        @param max_body_bytes: larger request bodies are refused with 413.
        @param clock: drives the timeouts.
        @param gate: see L{lmproxy.listen.guard.GatedSite.gate}.
        @param routes: the hot routes.
        @param tunnels: the requests that take the rest of their connection.
        @param cors: see L{CorsSite.cors}.
        """
        super().__init__(resource, max_body_bytes, clock, gate, cors)
        self.routes = routes
        self.tunnels = tunnels

    def buildProtocol(self, addr: IAddress | None) -> FrontChannel:  # type: ignore[override]
        """A L{FrontChannel} for a new connection."""
        return FrontChannel(self, addr)

    def inner_channel(self, addr: IAddress | None) -> GuardedChannel:
        """A twisted.web channel of this site, for the requests it serves."""
        channel = super().buildProtocol(addr)
        assert isinstance(channel, GuardedChannel)
        channel.timeOut = None  # its front channel times the idle connection
        return channel
