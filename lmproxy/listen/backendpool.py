"""
A lean HTTP/1.1 client on pooled raw backend connections: the OpenAI port's
C{IAgent} (L{lmproxy.listen.httpforward.backend_agent}).

twisted.web's C{Agent} spent a fifth of the OpenAI port's CPU per request in
its request writer, response parser, Deferred chains and pool.  This one
builds the request in one piece and sends it on an idle connection of its
C{(host, port)}, or a new one (L{lmproxy.listen.backendconn}, which keeps the
C{Agent}'s contract); a failed connection errs with the endpoint's
C{ConnectError}.  Only what lmproxy forwards is supported: requests whose
body is in memory (L{lmproxy.listen.httpforward.BytesProducer}), never
C{HEAD}.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IProtocol, IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from lmproxy.listen.backendconn import BackendConnection

MAX_IDLE_PER_HOST = 128
"""
Idle connections kept per backend: enough for bursts of concurrent requests
(a burst wider than this opens and closes connections at each request).
"""


class _ConnectionFactory(Factory):
    """Builds the connections of one backend; logs no "Starting factory" lines."""

    noisy = False

    def __init__(self, pool: BackendAgent, key: tuple[str, int]) -> None:
        self._pool = pool
        self._key = key

    def buildProtocol(self, addr: Any) -> BackendConnection:
        return BackendConnection(
            partial(self._pool._idle, self._key), partial(self._pool._forget, self._key)
        )


def _split(uri: bytes) -> tuple[str, int, bytes]:
    """
    The host, port and request target of an C{http://} URL, without the cost
    of C{URI.fromBytes} (a tenth of this agent's CPU per request).
    """
    if not uri.startswith(b"http://"):
        raise ValueError(f"not an http:// URL: {uri!r}")
    authority, slash, rest = uri[7:].partition(b"/")
    if authority.startswith(b"["):
        host, _, port = authority[1:].partition(b"]")
        port = port[1:]
    else:
        host, _, port = authority.partition(b":")
    return host.decode("ascii"), int(port) if port else 80, slash + rest or b"/"


def _endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamClientEndpoint:
    """
    An IP address (what leases carry) is connected to directly, without
    getaddrinfo in the reactor's thread pool for each new connection.
    """
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host.encode("idna"), port)


@implementer(IAgent)
class BackendAgent:
    """
    Sends each request on an idle connection to its backend, or a new one.

    @param reactor: connects to the backends.
    @param max_idle: idle connections kept per C{(host, port)}; more are closed.
    """

    def __init__(self, reactor: IReactorTCP, max_idle: int = MAX_IDLE_PER_HOST) -> None:
        self._reactor = reactor
        self._max_idle = max_idle
        self._pools: dict[tuple[str, int], list[BackendConnection]] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """
        Send a request whose body producer holds its body (C{body}, as
        L{lmproxy.listen.httpforward.BytesProducer} does), or none.
        """
        host, port, target = _split(uri)
        authority = b"[%s]" % host.encode("ascii") if ":" in host else host.encode("ascii")
        if port != 80:
            authority += b":%d" % port
        body: bytes = getattr(bodyProducer, "body", b"")
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, authority)]
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                for value in values:
                    lines.append(b"%s: %s\r\n" % (name, value))
        if bodyProducer is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        lines.append(body)
        data = b"".join(lines)
        key = (host, port)
        idle = self._pools.get(key)
        if idle:
            return idle.pop().exchange(data)
        connecting = _endpoint(self._reactor, host, port).connect(_ConnectionFactory(self, key))

        def exchange(connection: IProtocol) -> Deferred[IResponse]:
            assert isinstance(connection, BackendConnection)
            return connection.exchange(data)

        return connecting.addCallback(exchange)

    def _idle(self, key: tuple[str, int], connection: BackendConnection) -> None:
        idle = self._pools.setdefault(key, [])
        if len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.transport.loseConnection()  # type: ignore[union-attr]

    def _forget(self, key: tuple[str, int], connection: BackendConnection) -> None:
        idle = self._pools.get(key)
        if idle and connection in idle:
            idle.remove(connection)
