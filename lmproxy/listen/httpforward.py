"""
Forward one HTTP request to a backend and relay its response as it arrives.

The OpenAI listener's twisted.web routes (L{lmproxy.listen.openai}) forward
each request on its own through an C{IAgent} (in production a
L{lmproxy.listen.backendpool.BackendAgent}, on pooled connections).  This
module is the byte-moving half of that: the request body producer, and the
response relay that streams the backend's body to the client with flow
control; and the hop-by-hop header filtering that the hot path
(L{lmproxy.listen.leanforward}) shares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTCP
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from lmproxy.listen.backendpool import BackendAgent
from lmproxy.listen.cors import backend_headers
from lmproxy.logs import log_observer

log = Logger(observer=log_observer)

# RFC 9110 section 7.6.1, plus the Proxy-* family (checked by prefix).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

REQUEST_ONLY = frozenset({b"host", b"content-length", b"expect"})
"""
Not passed to the backend either: lmproxy writes its own Host and
Content-Length, and has answered any C{Expect: 100-continue} itself.
"""


def end_to_end_headers(headers: Headers, also_drop: frozenset[bytes] = frozenset()) -> Headers:
    """
    A copy of C{headers} without the hop-by-hop ones: those of L{HOP_BY_HOP},
    every C{Proxy-*} header, those the C{Connection} header names, and
    C{also_drop}.

    @param headers: the headers of a request or a response.
    @param also_drop: more names to drop, in lower case.
    """
    kept = Headers()
    _copy_end_to_end(headers, kept, also_drop)
    return kept


def _copy_end_to_end(headers: Headers, into: Headers, also_drop: frozenset[bytes]) -> None:
    """Set the end-to-end headers of C{headers} on C{into} (see L{end_to_end_headers})."""
    named = connection_named(headers.getRawHeaders(b"connection", []))
    for name, values in headers.getAllRawHeaders():
        if end_to_end(name.lower(), named, also_drop):
            into.setRawHeaders(name, list(values))


def connection_named(values: Iterable[bytes]) -> set[bytes]:
    """The lowercase tokens of C{Connection} header values: more hop-by-hop headers."""
    return {token.strip().lower() for value in values for token in value.split(b",")}


def end_to_end(lower: bytes, named: set[bytes], also_drop: frozenset[bytes]) -> bool:
    """
    Whether the header whose lowercase name is C{lower} goes on to the next
    hop: it is none of L{HOP_BY_HOP}, no C{Proxy-*} header, none that the
    C{Connection} header C{named}, and not in C{also_drop}.
    """
    return not (
        lower in HOP_BY_HOP or lower.startswith(b"proxy-") or lower in named or lower in also_drop
    )


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already held in memory, written in one go
    (L{BackendAgent} writes C{body} with the request's head).

    twisted.web has read the whole client body before the route runs, so there
    is nothing to stream; this also avoids C{FileBodyProducer}, whose default
    cooperator runs on the global reactor.
    """

    def __init__(self, body: bytes) -> None:
        """
        @param body: the whole body.
        """
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Write the whole body to C{consumer}; done at once."""
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing is left to pause once startProducing has returned."""

    def resumeProducing(self) -> None:
        """Nothing is left to resume once startProducing has returned."""

    def stopProducing(self) -> None:
        """Nothing is left to stop once startProducing has returned."""


def backend_agent(reactor: IReactorTCP) -> IAgent:
    """
    The agent to forward with: L{BackendAgent}, a lean client on pooled
    connections, which connects to IP addresses without name resolution.

    @param reactor: connects to the backends.
    """
    return BackendAgent(reactor)


def send(agent: IAgent, request: Request, host: str, port: int, body: bytes) -> Deferred[IResponse]:
    """
    Send C{request} (method, path and query, end-to-end headers) with
    C{body} to the backend at C{host:port}.  The agent sets Host.

    @param agent: sends it.
    @param request: the client's request.
    @param host: the backend's IP address.
    @param port: the backend's port.
    @param body: the client's request body.
    """
    authority = f"[{host}]" if ":" in host else host
    url = b"http://%s:%d%s" % (authority.encode("ascii"), port, request.uri)
    headers = end_to_end_headers(request.requestHeaders, REQUEST_ONLY)
    return agent.request(request.method, url, headers, BytesProducer(body))


def relay(
    response: IResponse, request: Request, service: str, cut: Callable[[], None]
) -> Deferred[None]:
    """
    Copy C{response} to C{request}: status, end-to-end headers, then the
    body as it arrives.  The result fires once the client's response is over
    (finished, or the client's connection closed); cancelling it stops the
    backend response.

    @param response: the backend's response.
    @param request: the client's request to answer.
    @param service: the service's name, for the log.
    @param cut: called when the backend cuts the body short (see L{ResponseRelay}).
    """
    request.setResponseCode(response.code, response.phrase)
    # The agent keeps the connection headers (Connection, Keep-Alive,
    # Content-Length, Transfer-Encoding, ...) to itself; filter the rest anyway.
    # lmproxy's own CORS headers, set already, stay the only ones.
    own_first = backend_headers(request.responseHeaders, response.headers)
    _copy_end_to_end(own_first, request.responseHeaders, frozenset())
    declared_length = response.length is not UNKNOWN_LENGTH and response.code not in NO_BODY_CODES
    if declared_length:
        # Keeps a sized body sized for the client instead of re-chunking it.
        request.setHeader(b"Content-Length", b"%d" % response.length)
    # The backend's Content-Type (or its absence) is the answer; never invent one.
    request.defaultContentType = None
    return relay_body(response, request, service, cut)


def relay_body(
    response: IResponse, request: Request, service: str, cut: Callable[[], None]
) -> Deferred[None]:
    """
    Copy only C{response}'s body to C{request}, whose own head is set (or
    sent) already: the stream of L{lmproxy.listen.loadingfeedback}.  The
    parameters and the result are those of L{relay}.
    """
    body = ResponseRelay(request, service, cut)
    response.deliverBody(body)
    return body.done


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """
    Receives a backend response body and writes it to a twisted.web request
    chunk by chunk.

    It is the request's streaming producer: when the client reads slower than
    the backend writes, twisted.web pauses it and it pauses the backend's
    transport.  When the client goes away it stops the backend response, which
    closes that backend connection (cancelling the generation).  A body the
    backend cuts short (its connection lost before the body's end) ends as
    an error: the client's connection is closed without the rest (a sized
    body's missing bytes, a chunked one's last chunk).
    """

    def __init__(self, request: Request, service: str, cut: Callable[[], None]) -> None:
        """
        @param request: the client's request to write the body to.
        @param service: the service's name, for the log.
        @param cut: called once if the backend cuts the body short, before
            the client's connection closes (so before the route is cancelled).
        """
        self._request = request
        self._service = service
        self._cut = cut
        self._client_gone = False
        self.done: Deferred[None] = Deferred(lambda _: self.stopProducing())
        request.notifyFinish().addErrback(self._client_left)

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._client_gone:
            self._request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._client_gone:
            self._fire()
            return
        self._request.unregisterProducer()
        if not reason.check(ResponseDone, PotentialDataLoss):
            log.warn(
                "Backend {service} ended its response early: {reason}",
                service=self._service,
                reason=reason.getErrorMessage(),
            )
            self._cut()
            self._request.write(b"")  # the status goes, though no body byte came
            # done fires from _client_left once the connection is gone: until
            # then, Klein would finish the request, ending the body cleanly.
            self._request.loseConnection()
            return
        self._request.finish()
        self._fire()

    def _client_left(self, reason: Failure) -> None:
        self.stopProducing()
        self._fire()

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _backend(self) -> IPushProducer:
        # Response.deliverBody connects us to a transport that is a push producer.
        return cast(IPushProducer, self.transport)

    def pauseProducing(self) -> None:
        if not self._client_gone:
            self._backend().pauseProducing()

    def resumeProducing(self) -> None:
        if not self._client_gone:
            self._backend().resumeProducing()

    def stopProducing(self) -> None:
        """The client is gone: drop the backend response (closes that connection)."""
        if not self._client_gone:
            self._client_gone = True
            self._backend().stopProducing()
