"""
What the demo server prints.  Its modules log with C{twisted.logger}, and
L{LineOutput} turns their events into plain lines: info on standard output,
warnings and errors on standard error, each line flushed at once.  Standard
output is a protocol: lmproxy's tests and benchmarks read the listening line
(the port, the time it began listening) and the grandchild's pid from it, and
lmproxy's own log echoes it.  So it holds this server's lines only, without
time stamps or prefixes; Twisted's own warnings and errors (an unhandled
failure) go to standard error, time-stamped (L{twisted_warnings}), and its
chatter ("Site starting on ...") is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    textFileLogObserver,
)
from zope.interface import implementer

#: The namespace of the demo's loggers: every module's under this package.
DEMO_NAMESPACE = "lmproxy.demo"

LineWriter = Callable[[str], None]
"""Writes one line of text (without its end-of-line)."""


def is_demo_event(event: LogEvent) -> bool:
    """
    Was C{event} logged by the demo server's own code?
    """
    namespace = event.get("log_namespace") or ""
    return namespace == DEMO_NAMESPACE or namespace.startswith(DEMO_NAMESPACE + ".")


@implementer(ILogObserver)
class LineOutput:
    """
    Writes each of the demo's own events as one line of text, its message only
    (a traceback follows if it carries a failure); ignores every other event.

    @param out: receives the lines of events below the warning level.
    @param err: receives the lines of warnings, errors and worse.
    """

    def __init__(self, out: LineWriter, err: LineWriter) -> None:
        self._out = out
        self._err = err

    def __call__(self, event: LogEvent) -> None:
        if not is_demo_event(event):
            return
        level = event.get("log_level", LogLevel.info)
        write = self._err if level >= LogLevel.warn else self._out
        write(eventAsText(event, includeTimestamp=False, includeSystem=False))


def line_writer(stream: IO[str]) -> LineWriter:
    """
    A L{LineWriter} to C{stream} that flushes every line: a reader waits for
    the listening line, and a crash must not lose what was said before it.
    """

    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return write


@implementer(ILogFilterPredicate)
class _NotDemo:
    """
    Drops the demo's own events: L{LineOutput} writes them.
    """

    def __call__(self, event: LogEvent) -> PredicateResult:
        return PredicateResult.no if is_demo_event(event) else PredicateResult.maybe


def twisted_warnings(stream: IO[str]) -> ILogObserver:
    """
    An observer that writes the warnings and errors of everyone but the demo
    (Twisted's, mostly) to C{stream}, time-stamped, and drops the rest.
    """
    return FilteringLogObserver(
        textFileLogObserver(stream),
        [_NotDemo(), LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )


def observers(stdout: IO[str], stderr: IO[str]) -> list[ILogObserver]:
    """
    The log observers of the demo process: its lines, and everyone else's
    warnings.
    """
    return [LineOutput(line_writer(stdout), line_writer(stderr)), twisted_warnings(stderr)]
