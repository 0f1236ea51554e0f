"""
A backend connection's answer as twisted.web's C{Agent} gives one, for the
OpenAI port's twisted.web routes (L{lmproxy.listen.backendpool.BackendAgent}).

It keeps the C{Agent}'s contract where those routes rely on it:
L{BackendResponse} is an C{IResponse}, whose body protocol ends with
C{ResponseDone}, C{PotentialDataLoss} or C{ResponseFailed}; an exchange that
fails before the answer errs with C{ResponseNeverReceived} (of a
C{CancelledError} when cancelled).
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from lmproxy.listen.backendconn import BackendConnection, HeaderPairs


@implementer(IResponse)
class BackendResponse:
    """
    A backend's response whose status and headers are in; its body follows,
    delivered to the protocol given to L{deliverBody}.  Its body protocol's
    transport is its L{BackendConnection}, a push producer.
    """

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(
        self,
        code: int,
        phrase: bytes,
        headers: Headers,
        length: int | object,
        connection: BackendConnection,
    ) -> None:
        """
        @param code: the status code.
        @param phrase: the reason phrase.
        @param headers: the end-to-end headers.
        @param length: the body's length, or C{UNKNOWN_LENGTH}.
        @param connection: the connection that it comes on.
        """
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._protocol: IProtocol | None = None
        self._early: list[bytes] = []
        self._ended: Failure | None = None
        self._connection = connection

    def setPreviousResponse(self, response: IResponse) -> None:
        """Redirects are not followed: there is never a previous response."""

    def deliverBody(self, protocol: IProtocol) -> None:
        """Connect C{protocol} to the body: what came already, then the rest."""
        self._protocol = protocol
        protocol.makeConnection(self._connection)  # type: ignore[arg-type]  # a push producer
        for data in self._early:
            protocol.dataReceived(data)
        self._early = []
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def _data(self, data: bytes) -> None:
        if self._protocol is None:
            self._early.append(data)
        else:
            self._protocol.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        if self._protocol is None:
            self._ended = reason
        else:
            self._protocol.connectionLost(reason)


class AgentReceiver:
    """A L{lmproxy.listen.backendconn.ResponseReceiver} that makes the answer an C{IResponse}."""

    def __init__(self, connection: BackendConnection) -> None:
        """
        @param connection: the connection the request is sent on.
        """
        self._connection = connection
        self._response: BackendResponse | None = None
        self.waiting: Deferred[IResponse] = Deferred(self._cancel)

    def _cancel(self, waiting: Deferred[IResponse]) -> None:
        self._connection.abandon()
        waiting.errback(ResponseNeverReceived([Failure(CancelledError())]))

    def response_head(
        self, code: int, phrase: bytes, headers: HeaderPairs, length: int | None
    ) -> None:
        kept = Headers()
        for name, value in headers:
            kept.addRawHeader(name, value)
        size = UNKNOWN_LENGTH if length is None else length
        self._response = BackendResponse(code, phrase, kept, size, self._connection)
        self.waiting.callback(self._response)

    def response_data(self, data: bytes) -> None:
        assert self._response is not None
        self._response._data(data)

    def response_end(self, reason: Failure | None) -> None:
        assert self._response is not None
        self._response._end(Failure(ResponseDone()) if reason is None else reason)

    def response_never_received(self, reason: Failure) -> None:
        self.waiting.errback(reason)
