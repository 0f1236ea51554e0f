"""
The watchdog child: ends lmproxy's process groups once lmproxy is gone.

lmproxy starts C{python -m lmproxy.core.reaper} in a session of its own (see
L{lmproxy.core.watchdog.Watchdog}, lmproxy's side) and writes to its standard
input which process groups it owns, one line each::

    +PGID    lmproxy now owns group PGID
    -PGID    group PGID is gone

Each line is one verb character and its argument.  A line this child does not
understand is ignored, so the protocol can grow new verbs (for instance the
KillCommand to run for a service when lmproxy dies) without a flag day.

When the pipe closes (lmproxy has exited, however it died, SIGKILL included),
the child sends SIGTERM to every group still registered and SIGKILL to those
still there after L{GRACE_SECONDS}.  After a normal shutdown lmproxy has
discarded every group first, and the child just exits.

This module imports the standard library only, and so do the packages it lives
in: the child sits beside lmproxy for as long as it runs, so it should cost a
few MiB and start in a few milliseconds, not import Twisted to read a pipe.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

GRACE_SECONDS = 5.0
"""How long groups get to exit after SIGTERM before they get SIGKILL."""

POLL_SECONDS = 0.05
"""How often to look whether the groups sent SIGTERM are gone yet."""

MAX_PGID = 2**31 - 1
"""Above this a number cannot be a process group id (and C{os.killpg} would overflow)."""

GroupSignaller = Callable[[int, int], None]
"""Send a signal to a process group: C{os.killpg}, or a fake in tests."""


def add_line(pgid: int) -> bytes:
    """
    The line that registers a process group.

    @param pgid: a process group lmproxy now owns.
    """
    return b"+%d\n" % pgid


def discard_line(pgid: int) -> bytes:
    """
    The line that unregisters a process group.

    @param pgid: a process group that is gone.
    """
    return b"-%d\n" % pgid


def _pgid(text: str) -> int | None:
    """
    The process group id that C{text} names, or C{None} if it names none that
    lmproxy could have started.
    """
    # isdigit() alone accepts digits such as "²" that int() refuses.
    if not (text.isascii() and text.isdigit()):
        return None
    pgid = int(text)
    # Refuse 0 and 1 above all: killpg(0, ...) signals our own group and
    # killpg(1, ...) is kill(-1, ...), every process we may signal.  Neither can
    # be the group of a process lmproxy started in a session of its own.
    if not 2 <= pgid <= MAX_PGID:
        return None
    return pgid


class Registry:
    """
    What lmproxy has told the child so far.

    @ivar groups: the process groups lmproxy owns, as far as the child knows.
    """

    def __init__(self) -> None:
        self.groups: set[int] = set()

    def feed(self, line: str) -> None:
        """
        Apply one line of the protocol; ignore it if it is not one.

        @param line: a line as lmproxy wrote it, with or without its line end.
        """
        line = line.strip()
        verb, pgid = line[:1], _pgid(line[1:])
        if pgid is None:
            return
        if verb == "+":
            self.groups.add(pgid)
        elif verb == "-":
            self.groups.discard(pgid)


def read_groups(lines: Iterable[str]) -> set[int]:
    """
    The groups still registered when C{lines} end.

    @param lines: the lines lmproxy wrote, in order.
    """
    registry = Registry()
    for line in lines:
        registry.feed(line)
    return registry.groups


def _signal(kill: GroupSignaller, pgid: int, signum: int) -> bool:
    """
    Send C{signum} to group C{pgid}.

    @return: C{True} if the group is there and ours to signal; C{False} if it
        has vanished (C{ProcessLookupError}) or is not ours (C{PermissionError}:
        its id now belongs to someone else's processes), so leave it alone.
    """
    try:
        kill(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def terminate_groups(
    groups: Iterable[int],
    grace: float = GRACE_SECONDS,
    *,
    kill: GroupSignaller = os.killpg,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll: float = POLL_SECONDS,
) -> set[int]:
    """
    SIGTERM every group, then SIGKILL those still there after C{grace} seconds.

    Returns as soon as every group is gone, so a clean exit costs no more than
    it takes.  This blocks: it is meant for the child, which has nothing else
    to do (lmproxy's own side never sleeps, it uses its reactor).

    @param groups: the process groups to end.
    @param grace: seconds between SIGTERM and SIGKILL.
    @param kill: sends a signal to a process group (signal 0 asks whether it is there).
    @param sleep: waits for some seconds.
    @param clock: a monotonic clock, in seconds.
    @param poll: seconds between two looks at the groups left.
    @return: the groups that got SIGKILL.
    """
    # sorted: signal in a stable order, which also makes the fakes' record readable.
    pending = {pgid for pgid in sorted(groups) if _signal(kill, pgid, signal.SIGTERM)}
    deadline = clock() + grace
    while pending:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(poll, remaining))  # never past the deadline
        pending = {pgid for pgid in sorted(pending) if _signal(kill, pgid, 0)}
    return {pgid for pgid in sorted(pending) if _signal(kill, pgid, signal.SIGKILL)}


def watch(
    lines: Iterable[bytes],
    terminate: Callable[[set[int]], object] = terminate_groups,
) -> None:
    """
    Follow the registrations until C{lines} end, then end the groups left.

    @param lines: lmproxy's end of the pipe, line by line.
    @param terminate: ends the groups still registered at the end (not called
        if there are none).
    """
    registry = Registry()
    for line in lines:
        # Bytes that are not ASCII cannot be part of a valid line: replace them
        # rather than die of a decoding error and leave the groups unguarded.
        registry.feed(line.decode("ascii", errors="replace"))
    if registry.groups:
        terminate(registry.groups)


def main() -> None:
    """Be the watchdog child: watch standard input, then clean up."""
    # Signals meant for lmproxy's terminal or group are not for us: we end on
    # EOF, once lmproxy is gone, so that its groups are never left unguarded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(sys.stdin.buffer)


if __name__ == "__main__":
    main()
