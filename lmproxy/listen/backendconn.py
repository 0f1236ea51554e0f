"""
One HTTP/1.1 connection to a backend, for L{lmproxy.listen.backendpool}:
writes a request whose head and body are in one C{write}, parses the
answer's status line and headers at once, and frames its body by
C{Content-Length}, chunks, or the end of the connection.

It keeps twisted.web C{Agent}'s contract where the forwarding path relies on
it: L{BackendResponse} is an C{IResponse} whose C{headers} lack the
connection-control ones; its body protocol ends with C{ResponseDone},
C{PotentialDataLoss} (a body that ends with the connection) or
C{ResponseFailed}; an exchange that fails before the answer errs with
C{ResponseNeverReceived} (of a C{CancelledError} when cancelled).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

# Kept by the connection, never shown in the response's headers (as Agent does).
_CONNECTION_CONTROL = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)

# A head larger than this is not an HTTP answer lmproxy can relay.
_MAX_HEAD_BYTES = 64 * 1024


class _BadResponse(Exception):
    """The backend's bytes are not an HTTP/1.1 response."""


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


@implementer(IPushProducer)
class BackendConnection(Protocol):
    """
    One connection to a backend, one exchange at a time.  It is the push
    producer of its response body: pausing it pauses the reading of the
    backend's connection, stopping it closes that connection.
    """

    def __init__(
        self,
        idle: Callable[[BackendConnection], None],
        forget: Callable[[BackendConnection], None],
    ) -> None:
        """
        @param idle: called when the connection can take another request.
        @param forget: called when the connection is lost.
        """
        self._on_idle = idle
        self._on_forget = forget
        self._buffer = b""
        self._waiting: Deferred[IResponse] | None = None
        self._response: BackendResponse | None = None
        # Body framing: bytes left of a sized body; of a chunked one, the bytes
        # left of the current chunk, 0 for the CRLF after it, -1 for a size
        # line, -2 for the trailers.
        self._left = 0
        self._chunked = False
        self._close_delimited = False
        self._keep_alive = True
        self._paused = False

    def exchange(self, data: bytes) -> Deferred[IResponse]:
        """Send a whole request; fires with its response once its head is in."""
        self._waiting = Deferred(self._cancel)
        self.transport.write(data)  # type: ignore[union-attr]
        return self._waiting

    def _cancel(self, waiting: Deferred[IResponse]) -> None:
        self._waiting = None
        self.transport.abortConnection()  # type: ignore[union-attr]
        waiting.errback(ResponseNeverReceived([Failure(CancelledError())]))

    # --- IPushProducer, for the body's protocol -------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        """The body is not wanted any more: close this connection."""
        self._keep_alive = False
        self.transport.stopProducing()  # type: ignore[union-attr]

    # --- Parsing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            if self._response is None:
                if self._waiting is None:
                    raise _BadResponse("bytes from an idle backend connection")
                self._buffer += data
                self._head()
            elif self._chunked:
                self._buffer += data
                self._chunks()
            else:
                self._sized(data)
        except _BadResponse as e:
            self._fail(Failure(e))

    def _head(self) -> None:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD_BYTES:
                    raise _BadResponse("response head too large")
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            status, *lines = head.split(b"\r\n")
            version, _, rest = status.partition(b" ")
            code_bytes, _, phrase = rest.partition(b" ")
            if not version.startswith(b"HTTP/1.") or not code_bytes.isdigit():
                raise _BadResponse(f"bad status line {status!r}")
            code = int(code_bytes)
            if not 100 <= code < 200:
                break
            # Informational (100 Continue, ...): the answer follows.
        self._start(code, phrase, version == b"HTTP/1.0", lines)
        data, self._buffer = self._buffer, b""
        if data and self._response is not None:
            self.dataReceived(data)

    def _start(self, code: int, phrase: bytes, http10: bool, lines: list[bytes]) -> None:
        headers = Headers()
        length: int | None = None
        connection = b""
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon:
                raise _BadResponse(f"bad header line {line!r}")
            lower = name.strip().lower()
            value = value.strip()
            if lower in _CONNECTION_CONTROL:
                if lower == b"content-length":
                    if not value.isdigit():
                        raise _BadResponse(f"bad Content-Length {value!r}")
                    length = int(value)
                elif lower == b"transfer-encoding":
                    self._chunked = value.lower().endswith(b"chunked")
                elif lower == b"connection":
                    connection += b"," + value.lower()
                continue
            headers.addRawHeader(name, value)
        self._keep_alive = b"close" not in connection if not http10 else b"keep-alive" in connection
        if code in NO_BODY_CODES:
            self._chunked, length = False, 0
        if self._chunked:
            length, self._left = None, -1
        elif length is None:
            self._close_delimited, self._keep_alive = True, False
        else:
            self._left = length
        response = BackendResponse(
            code, phrase, headers, UNKNOWN_LENGTH if length is None else length, self
        )
        self._response = response
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(response)
        if length == 0:
            if self._buffer:
                self._keep_alive = False  # bytes after the answer: not reusable
            self._done()

    def _sized(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        if self._close_delimited:
            response._data(data)
            return
        if len(data) >= self._left:
            if len(data) > self._left:
                self._keep_alive = False  # bytes after the answer: not reusable
            data = data[: self._left]
            self._left = 0
            if data:
                response._data(data)
            self._done()
            return
        self._left -= len(data)
        response._data(data)

    def _chunks(self) -> None:
        response = self._response
        assert response is not None
        while self._response is not None:
            if self._left == -1:  # a chunk-size line
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                size = self._buffer[:end].split(b";", 1)[0].strip()
                try:
                    left = int(size, 16)
                except ValueError:
                    raise _BadResponse(f"bad chunk size {size!r}") from None
                self._buffer = self._buffer[end + 2 :]
                if left == 0:
                    self._left = -2
                else:
                    self._left = left
            elif self._left == -2:  # trailers, then an empty line
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                if not line:
                    if self._buffer:
                        self._keep_alive = False
                    self._done()
            elif self._left == 0:  # the CRLF after a chunk's data
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise _BadResponse("chunk not followed by CRLF")
                self._buffer, self._left = self._buffer[2:], -1
            else:
                if not self._buffer:
                    return
                data = self._buffer[: self._left]
                self._buffer = self._buffer[len(data) :]
                self._left -= len(data)
                response._data(data)

    # --- Ends ------------------------------------------------------------------

    def _done(self) -> None:
        """The response is complete: back to the pool, or closed."""
        response, self._response = self._response, None
        self._buffer, self._chunked = b"", False
        if self._paused:
            self.resumeProducing()
        if self._keep_alive:
            self._on_idle(self)
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]
        assert response is not None
        response._end(Failure(ResponseDone()))

    def _fail(self, reason: Failure) -> None:
        """The exchange is broken: close the connection, tell whoever waits."""
        self._keep_alive = False
        self.transport.abortConnection()  # type: ignore[union-attr]
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, None
        response, self._response = self._response, None
        if waiting is not None:
            waiting.errback(ResponseNeverReceived([reason]))
        elif response is not None:
            if self._close_delimited:
                response._end(Failure(PotentialDataLoss()))
            else:
                response._end(Failure(ResponseFailed([reason])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_forget(self)
        self._lost(reason)
