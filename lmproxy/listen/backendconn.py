"""
One HTTP/1.1 connection to a backend, for L{lmproxy.listen.backendpool}:
sends a request whose head and body are in one piece, parses the answer's
status line and headers at once, and frames its body by C{Content-Length},
chunks, or the end of the connection.

Whoever sends a request on it gets the answer as a L{ResponseReceiver}: its
head (status and end-to-end headers: those that say how this connection
frames the body, and every hop-by-hop one, are kept here), the body's bytes
as they arrive, and how it ended: C{ResponseDone}, C{PotentialDataLoss} (a
body that ends with the connection) or C{ResponseFailed}; or, before the
head, C{ResponseNeverReceived}: a L{StaleConnection} when the connection
had served an answer before and closed before a byte of this one (the
backend closed it while it was idle: the request may go again on a new
connection, as nginx does with its kept connections).  The OpenAI port's hot path
(L{lmproxy.listen.leanforward}) is one such receiver;
L{lmproxy.listen.agentresponse} makes the answer an C{IResponse}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import NO_BODY_CODES
from zope.interface import implementer

from lmproxy.compat.writes import Sender

# Kept by the connection, never shown in the answer's headers: how this
# connection frames the body, and the rest of RFC 9110's hop-by-hop headers
# (section 7.6.1; the Proxy-* family is dropped by prefix).
_HOP_BY_HOP = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# A head larger than this is not an HTTP answer lmproxy can relay.
_MAX_HEAD_BYTES = 64 * 1024

HeaderPairs = list[tuple[bytes, bytes]]
"""Header names and values, as they came, in order."""


class _BadResponse(Exception):
    """The backend's bytes are not an HTTP/1.1 response."""


class ResponseReceiver(TypingProtocol):
    """What a request sent on a L{BackendConnection} is answered to."""

    def response_head(
        self, code: int, phrase: bytes, headers: HeaderPairs, length: int | None
    ) -> None:
        """
        The status and end-to-end headers are in; the body follows.

        @param code: the status code (never 1xx: those are skipped).
        @param phrase: the reason phrase.
        @param headers: the end-to-end headers.
        @param length: the body's length, or C{None} when it is chunked or
            ends with the connection.
        """

    def response_data(self, data: bytes) -> None:
        """Some of the body (unchunked)."""

    def response_end(self, reason: Failure | None) -> None:
        """
        The body is over: complete (C{None}: no Failure is built for the
        common case), C{PotentialDataLoss} (it ended with the connection, as
        it said it would), or C{ResponseFailed}.
        """

    def response_never_received(self, reason: Failure) -> None:
        """The exchange failed before the head was in (C{ResponseNeverReceived})."""


class StaleConnection(ResponseNeverReceived):
    """
    A kept connection closed before a byte of the answer: the backend had
    closed it while it was idle, so it never read the request, and the
    request may be sent again on a new connection.  (A backend that reads
    a request and dies without a byte of answer looks the same: it gets
    the request once more, as from nginx.)
    """


@implementer(IPushProducer)
class BackendConnection(Protocol):
    """
    One connection to a backend, one exchange at a time.  It is the push
    producer of its response body: pausing it pauses the reading of the
    backend's connection, stopping it closes that connection.
    """

    reused = False
    """Whether it served an answer before the one it reads."""

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
        self._receiver: ResponseReceiver | None = None
        self._head_in = False  # the receiver has its head; the body follows
        self._answered = False  # a byte of the answer came
        # Body framing: bytes left of a sized body; of a chunked one, the bytes
        # left of the current chunk, 0 for the CRLF after it, -1 for a size
        # line, -2 for the trailers.
        self._left = 0
        self._chunked = False
        self._close_delimited = False
        self._keep_alive = True
        self._paused = False

    def connectionMade(self) -> None:
        """No Nagle delay: a streamed request or answer goes out as it is written."""
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._sender = Sender(self.transport)

    def send(self, data: bytes, receiver: ResponseReceiver) -> None:
        """
        Send a whole request (head and body); its answer goes to C{receiver}.
        """
        self._receiver = receiver
        self._head_in = False
        self._answered = False
        self._sender.send(data)

    def abandon(self) -> None:
        """Whoever sent the request has no use for its answer: close, and tell it nothing more."""
        self._receiver = None
        self._keep_alive = False
        self.transport.abortConnection()  # type: ignore[union-attr]

    # --- IPushProducer, for the body's receiver --------------------------------

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
        self._answered = True
        try:
            if not self._head_in:
                if self._receiver is None:
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
        if data and self._head_in:
            self.dataReceived(data)

    def _start(self, code: int, phrase: bytes, http10: bool, lines: list[bytes]) -> None:
        headers: HeaderPairs = []
        length: int | None = None
        connection = b""
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon:
                raise _BadResponse(f"bad header line {line!r}")
            lower = name.strip().lower()
            value = value.strip()
            if lower in _HOP_BY_HOP or lower.startswith(b"proxy-"):
                if lower == b"content-length":
                    if not value.isdigit():
                        raise _BadResponse(f"bad Content-Length {value!r}")
                    length = int(value)
                elif lower == b"transfer-encoding":
                    self._chunked = value.lower().endswith(b"chunked")
                elif lower == b"connection":
                    connection += b"," + value.lower()
                continue
            headers.append((name, value))
        if connection:
            # Headers the backend's Connection header names are hop-by-hop too.
            named = {token.strip() for token in connection.split(b",")}
            headers = [(name, value) for name, value in headers if name.lower() not in named]
        self._keep_alive = b"close" not in connection if not http10 else b"keep-alive" in connection
        if code in NO_BODY_CODES:
            self._chunked, length = False, 0
        if self._chunked:
            length, self._left = None, -1
        elif length is None:
            self._close_delimited, self._keep_alive = True, False
        else:
            self._left = length
        self._head_in = True
        receiver = self._receiver
        if receiver is not None:
            receiver.response_head(code, phrase, headers, length)
        if length == 0 and self._head_in:
            if self._buffer:
                self._keep_alive = False  # bytes after the answer: not reusable
            self._done()

    def _data(self, data: bytes) -> None:
        if self._receiver is not None:
            self._receiver.response_data(data)

    def _sized(self, data: bytes) -> None:
        if self._close_delimited:
            self._data(data)
            return
        if len(data) >= self._left:
            if len(data) > self._left:
                self._keep_alive = False  # bytes after the answer: not reusable
            data = data[: self._left]
            self._left = 0
            if data:
                self._data(data)
            if self._head_in:  # the receiver may have abandoned it meanwhile
                self._done()
            return
        self._left -= len(data)
        self._data(data)

    def _chunks(self) -> None:
        while self._head_in:
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
                self._data(data)

    # --- Ends ------------------------------------------------------------------

    def _done(self) -> None:
        """The response is complete: back to the pool, or closed."""
        receiver, self._receiver = self._receiver, None
        self._head_in = False
        self._buffer, self._chunked = b"", False
        if self._paused:
            self.resumeProducing()
        if self._keep_alive:
            self.reused = True
            self._on_idle(self)
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]
        if receiver is not None:
            receiver.response_end(None)

    def _fail(self, reason: Failure) -> None:
        """The exchange is broken: close the connection, tell whoever waits."""
        self._keep_alive = False
        self.transport.abortConnection()  # type: ignore[union-attr]
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        receiver, self._receiver = self._receiver, None
        head_in, self._head_in = self._head_in, False
        if receiver is None:
            return
        if not head_in:
            stale = self.reused and not self._answered
            never = StaleConnection if stale else ResponseNeverReceived
            receiver.response_never_received(Failure(never([reason])))
        elif self._close_delimited:
            receiver.response_end(Failure(PotentialDataLoss()))
        else:
            receiver.response_end(Failure(ResponseFailed([reason])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_forget(self)
        self._lost(reason)
