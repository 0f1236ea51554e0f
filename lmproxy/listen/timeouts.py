"""
How slowly an HTTP client may send its request, on both HTTP ports.

A client that sends a byte a second (slowloris) would otherwise hold its
connection, and a file descriptor, for ever: twisted.web's own C{timeOut} is
an idle timeout, reset by every byte.  L{GuardedChannel} bounds the request
instead:

  - its headers must be in within L{HEADERS_SECONDS} of its first byte;
  - its body must keep moving: no pause longer than L{BODY_STALL_SECONDS},
    and on average at least L{BODY_MIN_BYTES_PER_SECOND} after the first
    L{BODY_STALL_SECONDS} (a stall bound alone lets a byte every 29 s hold a
    64 MiB upload open for years; a rate bound alone lets a client that sent
    fast at first stall for long);
  - between requests, a keep-alive connection may stay silent for
    L{IDLE_SECONDS} (twisted.web's C{timeOut}, which is off while a request
    is answered).

A client over a bound gets a 408, in its port's error shape, and its
connection is closed.  Nothing bounds the answer: once the request is in,
an SSE stream, a slow model's response or C{/events} last as long as they
need to, and a client that does not read its answer holds only its own
connection (twisted.web pauses the producer of a response whose client does
not read; see L{lmproxy.listen.httpforward}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from lmproxy.compat.web import reading_path

HEADERS_SECONDS = 10.0
"""A request's headers must be in within this long of its first byte."""

BODY_STALL_SECONDS = 30.0
"""A request body may pause this long at most."""

BODY_MIN_BYTES_PER_SECOND = 1024
"""The slowest average rate at which a body may arrive, after its first L{BODY_STALL_SECONDS}."""

IDLE_SECONDS = 60.0
"""A keep-alive connection may wait this long for its next request (twisted.web's default)."""


HEADERS_LATE = f"The request headers did not arrive within {HEADERS_SECONDS:g} s."
"""The message of a 408 for headers too slow."""

BODY_LATE = (
    f"The request body stalled for {BODY_STALL_SECONDS:g} s or arrived slower than "
    f"{BODY_MIN_BYTES_PER_SECOND} bytes a second."
)
"""The message of a 408 for a body too slow."""


def body_deadline(began: float, last_byte: float, received: int) -> float:
    """
    When a body that is still coming is too slow: the earlier of its stall
    bound and its rate bound.

    @param began: when its headers were in.
    @param last_byte: when its last byte came.
    @param received: how many of its bytes came.
    """
    stall_ends = last_byte + BODY_STALL_SECONDS
    rate_ends = began + BODY_STALL_SECONDS + received / BODY_MIN_BYTES_PER_SECOND
    return min(stall_ends, rate_ends)


def timeout_answer(
    site: Any, message: str, path: bytes | None, extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[bytes]:
    """
    The whole 408 answer to a request too slow, in C{site}'s error shape
    (its C{error_answer}); it closes the connection.

    @param site: the port's site.
    @param message: what was too slow.
    @param path: the request's path without its query, if its request line came.
    @param extra: more headers (a body's request's CORS headers).
    """
    headers, body = site.error_answer(408, message, "request_timeout", path)
    headers.extend(extra)
    lines = [b"HTTP/1.1 408 Request Timeout\r\n"]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"\r\n")
    lines.append(body)
    return lines


class GuardedChannel(HTTPChannel):
    """
    An C{HTTPChannel} that times its client's requests out as the module
    says.  Its site provides C{error_answer(status, message, code, path)},
    which gives the headers and body of an error in the port's shape (see
    L{lmproxy.listen.sites}), and its requests call L{headers_received} and
    L{request_received} (L{lmproxy.listen.sites.BodyLimitedRequest} does).
    """

    site: Any  # a BodyLimitedSite, set by Site.buildProtocol
    on_answered: Callable[[], None] | None = None
    """Called once each request is answered (for L{lmproxy.listen.front}, which feeds it)."""
    body_headers: list[tuple[bytes, bytes]] = []
    """
    More headers for a 408 of the body being read: its request's CORS
    headers (L{lmproxy.listen.cors.CorsRequest} sets them with its headers).
    """
    _phase = "idle"  # then "headers", "body", "answering", and back to "idle"
    _deadline: IDelayedCall | None = None
    _body_began = 0.0
    _body_bytes = 0
    _last_byte = 0.0
    _host: IAddress | None = None  # getHost's answer (a getsockname call each time)

    def dataReceived(self, data: bytes) -> None:
        """Start the clock of a new request at its first byte; count a body's bytes."""
        if self._phase == "idle":
            self._phase = "headers"
            self._arm(HEADERS_SECONDS, self._headers_late)
        elif self._phase == "body":
            self._body_bytes += len(data)
            self._last_byte = self._now()
        super().dataReceived(data)

    def headers_received(self, length: int | None) -> None:
        """
        The request's headers are in: from now on, its body must keep moving.

        @param length: the body's declared length (C{None}: chunked).
        """
        self._disarm()
        self._phase = "body"
        self._body_began = self._last_byte = self._now()
        self._body_bytes = 0
        if length != 0:  # else the request is complete already
            self._arm(BODY_STALL_SECONDS, self._check_body)

    def request_received(self) -> None:
        """The request is complete: its answer may take as long as it needs."""
        self._disarm()
        self._phase = "answering"
        self.body_headers = []

    def request_answered(self) -> None:
        """The answer is over: the next request's clock starts at its first byte."""
        if self._phase == "answering":
            self._phase = "idle"
            if self.on_answered is not None:
                self.on_answered()

    def loseConnection(self) -> None:
        """
        Closing (after an answer of twisted.web's own, such as a 400, or one
        sent early): no deadline may add an answer after it.
        """
        self._disarm()
        self._phase = "closed"
        super().loseConnection()

    def getHost(self) -> IAddress:
        """The local address, asked once: twisted.web asks at every request."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Forget the deadline."""
        self._disarm()
        self._phase = "closed"
        super().connectionLost(reason)

    # --- Deadlines ------------------------------------------------------------

    def _now(self) -> float:
        seconds: float = self.site.reactor.seconds()
        return seconds

    def _arm(self, delay: float, expired: Any) -> None:
        self._deadline = self.callLater(delay, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        self._time_out(HEADERS_LATE)

    def _check_body(self) -> None:
        """Re-arm for the earlier of the two bounds, or time out once one is passed."""
        self._deadline = None
        now = self._now()
        ends = body_deadline(self._body_began, self._last_byte, self._body_bytes)
        if now < ends:
            self._arm(ends - now, self._check_body)
            return
        self._time_out(BODY_LATE)

    def _time_out(self, message: str) -> None:
        """Answer 408 (nothing was answered yet: the request is not complete) and close."""
        self._phase = "closed"
        lines = timeout_answer(self.site, message, reading_path(self), self.body_headers)
        assert self.transport is not None
        self.transport.writeSequence(lines)
        self.setTimeout(None)  # twisted.web's idle timeout: this one replaces it
        # TimeoutMixin's hook, as twisted.web's idle timeout uses it: logs the
        # peer, closes, and aborts the connection if the client does not let
        # it close within abortTimeout.
        self.timeoutConnection()
