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

from collections.abc import Iterable
from functools import partial
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import Interface, implementer

from lmproxy.listen.agentresponse import AgentReceiver
from lmproxy.listen.backendconn import BackendConnection, StaleConnection

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


def request_bytes(
    method: bytes,
    target: bytes,
    authority: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    """
    A whole HTTP/1.1 request in one piece: its head, with C{Host} and
    C{Content-Length} of lmproxy's own, then its body.

    @param method: the method.
    @param target: the request target (path and query).
    @param authority: the backend's C{host[:port]}, for C{Host}.
    @param headers: the end-to-end headers to send (never C{Host} nor
        C{Content-Length}).
    @param body: the whole body.
    """
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, authority)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


def authority(host: str, port: int) -> bytes:
    """The C{Host} header of a backend at C{host:port} (an IP address or a name)."""
    name = b"[%s]" % host.encode("ascii") if ":" in host else host.encode("ascii")
    return name if port == 80 else name + b":%d" % port


def _exchange(connection: BackendConnection, data: bytes) -> Deferred[IResponse]:
    """Send a whole request on C{connection}; fires with its response once its head is in."""
    receiver = AgentReceiver(connection)
    connection.send(data, receiver)
    return receiver.waiting


class IBackendConnections(Interface):
    """Connections to backends, kept open between requests."""

    def idle_connection(host: str, port: int) -> BackendConnection | None:
        """An idle connection to C{host:port}, taken from the pool, if any."""

    def new_connection(host: str, port: int) -> Deferred[BackendConnection]:
        """
        A new connection to C{host:port}, which the pool takes back once an
        answer on it is over (unless it must close); errs with the
        endpoint's C{ConnectError}.
        """

    def own_connection(host: str, port: int, protocol: Protocol) -> Deferred[Protocol]:
        """
        A connection to C{host:port} that C{protocol} speaks, never pooled
        (the passthrough's: L{lmproxy.listen.upstream}); fires with
        C{protocol} once connected, errs as L{new_connection} does.
        """


@implementer(IAgent, IBackendConnections)
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
        body: bytes = getattr(bodyProducer, "body", b"")
        pairs = [] if headers is None else headers.getAllRawHeaders()
        data = request_bytes(
            method,
            target,
            authority(host, port),
            ((name, value) for name, values in pairs for value in values),
            body,
        )
        idle = self.idle_connection(host, port)
        if idle is None:
            return self.new_connection(host, port).addCallback(_exchange, data)

        def again(failure: Failure) -> Deferred[IResponse]:
            failure.trap(StaleConnection)  # the backend closed it while idle
            return self.new_connection(host, port).addCallback(_exchange, data)

        return _exchange(idle, data).addErrback(again)

    def idle_connection(self, host: str, port: int) -> BackendConnection | None:
        idle = self._pools.get((host, port))
        return idle.pop() if idle else None

    def new_connection(self, host: str, port: int) -> Deferred[BackendConnection]:
        factory = _ConnectionFactory(self, (host, port))
        connecting = _endpoint(self._reactor, host, port).connect(factory)
        return connecting  # type: ignore[return-value]  # the factory builds BackendConnections

    def own_connection(self, host: str, port: int, protocol: Protocol) -> Deferred[Protocol]:
        return connectProtocol(_endpoint(self._reactor, host, port), protocol)

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
