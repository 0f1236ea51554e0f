"""
A service run's strays: its processes that left its process group (a daemon
that double-forks and calls C{setsid}), found by the mark in their environment
(L{lmproxy.core.descendants}), and ended beside the group when the service
stops: SIGTERM, then SIGKILL after the same grace period.

A scan reads C{/proc}, at every stop (on the way of a swap): a stat file per
process costs about 7 µs when its caches are cold, as they are at a stop
(0.6-0.9 ms for 80 processes).  Only the processes created since the run's
leader can carry its mark (it is new), nor descend from one that does: only
the stat files of the pids given since the leader's are read (a
L{PidWindow}; all of them once the pids may have gone round), only the
environment of processes started since is read, and a scan that finds none
is not done again at once for SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from lmproxy.core import descendants
from lmproxy.core.descendants import PidWindow, Proc

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
POLL_SECONDS = 0.05
"""How often to look whether the strays sent a signal are gone."""

Finder = Callable[[str, int, PidWindow | None], list[Proc]]
"""
The live processes started at or after a tick (and with pids in a window, if
one is given) that carry a mark, and their descendants.
"""


def boot_ticks() -> int:
    """
    A moment ago, in the clock ticks after boot that C{/proc/PID/stat} counts
    start times in (from C{CLOCK_BOOTTIME}, truncated: a tick earlier, to be
    sure); 0 where there is no such clock.  Reading the start of the process
    just spawned instead would wait for its exec to finish.
    """
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return 0
    return max(int(time.clock_gettime(clock) * _TICKS_PER_SECOND) - 1, 0)


def find_marked(mark: str, since: int = 0, window: PidWindow | None = None) -> list[Proc]:
    """
    The processes on this machine that carry C{mark}, and their descendants,
    among those started at or after C{since} (clock ticks after boot) and,
    with a C{window}, whose pids are in it.
    """
    procs = descendants.scan(window=window)
    return descendants.marked([p for p in procs if p.start >= since], mark)


class Strays:
    """
    The strays of one run of a service.

    @param reactor: for the waits.
    @param mark: the run's mark.
    @param find: finds the processes that carry a mark (a fake in tests).
    @param send: signals a process if it still runs (a fake in tests).
    @param running: whether a process still runs (a fake in tests).
    @param ticks: now, in the ticks that start times count (a fake in tests).
    @ivar since: a moment before the run's leader started (0: every process).
    @ivar window: where the pids of the run's processes are, once its leader
        is spawned (C{None}: anywhere).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        mark: str,
        find: Finder = find_marked,
        send: Callable[[Proc, int], bool] = descendants.signal_proc,
        running: Callable[[Proc], bool] = descendants.same,
        ticks: Callable[[], int] = boot_ticks,
        window: Callable[[int], PidWindow | None] = descendants.pid_window,
    ) -> None:
        self._reactor = reactor
        self.mark = mark
        self._find = find
        self._send = send
        self._running = running
        self._ticks = ticks
        self._window = window
        self.since = 0
        self.window: PidWindow | None = None

    def begin(self) -> None:
        """The run's leader is about to be spawned: the run's processes start from now on."""
        self.since = self._ticks()
        self.window = None

    def spawned(self, leader: int) -> None:
        """The run's leader was just spawned, as C{leader}: its processes get later pids."""
        self.window = self._window(leader)

    def outside(self, pgid: int | None) -> list[Proc]:
        """The run's processes now, but for those in group C{pgid} (signalled as a group)."""
        return [
            proc for proc in self._find(self.mark, self.since, self.window) if proc.pgrp != pgid
        ]

    def signal(self, pgid: int | None, signum: int) -> list[Proc]:
        """Send C{signum} to every stray now; returns those that got it."""
        return [proc for proc in self.outside(pgid) if self._send(proc, signum)]

    async def _wait_gone(self, procs: list[Proc], seconds: float) -> list[Proc]:
        deadline = self._reactor.seconds() + seconds
        while procs:
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                break
            await deferLater(self._reactor, min(POLL_SECONDS, remaining))
            procs = [proc for proc in procs if self._running(proc)]
        return procs

    async def terminate(self, pgid: int | None, grace: float, kill_wait: float) -> list[Proc]:
        """
        SIGTERM the strays, SIGKILL those still there after C{grace} seconds
        (and any found since), and wait up to C{kill_wait} seconds for them.

        @param pgid: the run's process group, whose members are not strays.
        @return: the strays that survived SIGKILL.
        """
        termed = self.signal(pgid, signal.SIGTERM)
        if not termed:
            return []  # a second look at once would find the same: none
        left = await self._wait_gone(termed, grace)
        # Found again: a stray may have forked while it was being stopped.
        killed = {proc for proc in left if self._send(proc, signal.SIGKILL)}
        killed.update(self.signal(pgid, signal.SIGKILL))
        return await self._wait_gone(sorted(killed, key=lambda proc: proc.pid), kill_wait)
