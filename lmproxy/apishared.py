"""
What both HTTP APIs (the management API and the OpenAI port) share: open
Server-Sent Event streams (L{SseStream}: keepalive comments and flow
control), actions that go on when their client leaves (L{shielded}), and
the query flags of their actions (L{query_flag}).
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from lmproxy.logs import log_observer
from lmproxy.timers import Timer

_log = Logger(observer=log_observer)
_T = TypeVar("_T")


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def query_flag(request: IRequest, name: str, default: bool) -> bool | None:
    """
    The query flag C{name} of C{request} (C{1}/C{0}, C{true}/C{false},
    C{yes}/C{no}, C{on}/C{off}; its last value), C{default} when it is
    absent, C{None} when it is none of those.
    """
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    value = values[-1].decode("utf-8", "replace").lower()
    return True if value in _TRUE else False if value in _FALSE else None


def sse(event: str, data: str) -> bytes:
    """One Server-Sent Event; C{data} may hold several lines (C{\\n})."""
    fields = [f"event: {event}"] + [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(fields) + "\n\n").encode("utf-8")


@implementer(IPushProducer)
class SseStream:
    """
    An open C{text/event-stream} response: headers, keepalive comments, and
    flow control (nothing is written while the client is not reading).
    """

    def __init__(self, request: Request, clock: IReactorTime, heartbeat: float) -> None:
        self._request = request
        self._clock = clock
        self._heartbeat = heartbeat
        self._beat = Timer(clock)
        self.paused = False
        self.closed = False

    def open(self) -> None:
        """Send the headers and start the keepalive comments."""
        self._request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        self._request.setHeader(b"Cache-Control", b"no-store")
        # Reverse proxies (nginx) would otherwise buffer the stream.
        self._request.setHeader(b"X-Accel-Buffering", b"no")
        self._request.registerProducer(self, True)
        # Reconnect after 1 s rather than the browser's default 3 s.
        self._request.write(b"retry: 1000\n\n")
        self._beat.arm(self._heartbeat, self._keepalive)

    def _keepalive(self) -> None:
        if not self.paused:
            self._request.write(b": keepalive\n\n")
        self._beat.arm(self._heartbeat, self._keepalive)

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        """The client left: release everything.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._beat.cancel()


def shielded(d: Deferred[_T]) -> Deferred[_T]:
    """
    A Deferred that follows C{d} but whose cancellation (the HTTP client left)
    does not cancel C{d}: an action asked for is carried out all the same.
    """
    result: Deferred[_T] = Deferred()

    def done(outcome: Failure | _T) -> None:
        if result.called:
            if isinstance(outcome, Failure):
                _log.info("Action failed after its client left: {error}", error=outcome.value)
        elif isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    d.addBoth(done)
    return result
