"""
The two ways the demo server writes an answer a piece at a time:
L{EventStream} sends Server-Sent Events on a schedule (streamed completions,
C{--token-delay}, C{--crash-mid-stream}); L{BodyProducer} sends a bulk body
with flow control (C{/echo}, C{/bytes}), so that a slow reader makes the
server wait instead of buffering the whole body in memory.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from lmproxy.logs import log_observer
from lmproxy.timers import Timer

#: Bytes per write of a L{BodyProducer}.
CHUNK_SIZE = 64 * 1024

# /bytes answers this pattern, repeated: deterministic and not trivially compressible.
_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256)

_log = Logger(observer=log_observer)


def sse_event(data: bytes, name: bytes | None = None) -> bytes:
    """
    One Server-Sent Event whose data is C{data} (a single line), of type
    C{name} if given (its C{event:} line).
    """
    event = b"data: " + data + b"\n\n"
    return event if name is None else b"event: " + name + b"\n" + event


#: The event that ends an OpenAI stream.
SSE_DONE = sse_event(b"[DONE]")


def read_pattern(size: int) -> bytes:
    """
    The first C{size} bytes (at most L{CHUNK_SIZE}) of the pattern that
    C{/bytes} answers: a L{BodyProducer} source that never ends.
    """
    return _PATTERN[:size]


@implementer(IPushProducer)
class BodyProducer:
    """
    Writes C{length} bytes read from C{read} to a request in chunks, pausing
    while the connection's buffer is full, then finishes the request.

    @param request: where to write.
    @param read: returns up to the number of bytes asked for; fewer than asked
        (or none) at the end of the source, which ends the body early.
    @param length: the body's length, as its C{Content-Length} says.
    """

    def __init__(self, request: Request, read: Callable[[int], bytes], length: int) -> None:
        self._request = request
        self._read = read
        self._remaining = length
        self._paused = False
        self._done = False

    def start(self) -> None:
        """
        Register with the request and write until paused or done.
        """
        self._request.notifyFinish().addErrback(self._gone)
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        """
        Write chunks until the connection pauses us or the body is complete.
        """
        self._paused = False
        # write() can call pauseProducing() (buffer full) or stopProducing() at once.
        while not self._paused and not self._done and self._remaining > 0:
            data = self._read(min(CHUNK_SIZE, self._remaining))
            if not data:  # the source ended early: send what there is.
                self._remaining = 0
                break
            self._remaining -= len(data)
            self._request.write(data)
        if not self._done and self._remaining <= 0:
            self._done = True
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        """
        The connection's buffer is full: stop writing until resumed.
        """
        self._paused = True

    def stopProducing(self) -> None:
        """
        The connection is gone: write nothing more.
        """
        self._done = True

    def _gone(self, reason: Failure) -> None:
        self._done = True


class EventStream:
    """
    Writes prepared Server-Sent Events to a request one at a time, C{delay}
    seconds apart, each as its own write (so its own HTTP chunk, as a model
    server streams tokens), then finishes the request.

    @param clock: schedules the events.
    @param request: where to write.
    @param events: the events, each already framed (see L{sse_event}).
    @param delay: seconds between two events.
    @param crash_after: with C{crash}, how many events to write before crashing.
    @param crash: called with the request instead of writing more, once
        C{crash_after} events are written.
    """

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        events: list[bytes],
        delay: float,
        crash_after: int | None = None,
        crash: Callable[[Request], None] | None = None,
    ) -> None:
        self._request = request
        self._events = events
        self._delay = delay
        self._crash_after = crash_after
        self._crash = crash
        self._next = Timer(clock)
        self._sent = 0
        self._gone = False
        self._crashed = False

    def start(self) -> None:
        """
        Write the first event now, and the others on schedule.
        """
        self._request.notifyFinish().addErrback(self._client_gone)
        self._write_next()

    def _write_next(self) -> None:
        if self._gone:
            return
        self._request.write(self._events[self._sent])
        self._sent += 1
        if self._crash is not None and self._sent == self._crash_after:
            self._crashed = True
            _log.info(
                "crashing on purpose after {sent} events (--crash-mid-stream)", sent=self._sent
            )
            self._crash(self._request)
        elif self._sent == len(self._events):
            self._request.finish()
        else:
            self._next.arm(self._delay, self._write_next)

    def _client_gone(self, reason: Failure) -> None:
        self._gone = True
        self._next.cancel()
        if self._crashed:  # the crash closed the connection: that is no client leaving
            return
        _log.info(
            "stream of {uri} ended by the client after {sent} of {total} events",
            uri=self._request.uri.decode("utf-8", "replace"),
            sent=self._sent,
            total=len(self._events),
        )
