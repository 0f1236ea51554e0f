"""
A service run's strays: its processes that left its process group (a daemon
that double-forks and calls C{setsid}), found by the mark in their environment
(L{lmproxy.core.descendants}), and ended beside the group when the service
stops: SIGTERM, then SIGKILL after the same grace period.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from lmproxy.core import descendants
from lmproxy.core.descendants import Proc

POLL_SECONDS = 0.05
"""How often to look whether the strays sent a signal are gone."""

Finder = Callable[[str], list[Proc]]
"""The live processes that carry a mark, and their descendants."""


def find_marked(mark: str) -> list[Proc]:
    """The processes on this machine that carry C{mark}, and their descendants."""
    return descendants.marked(descendants.scan(), mark)


class Strays:
    """
    The strays of one run of a service.

    @param reactor: for the waits.
    @param mark: the run's mark.
    @param find: finds the processes that carry a mark (a fake in tests).
    @param send: signals a process if it still runs (a fake in tests).
    @param running: whether a process still runs (a fake in tests).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        mark: str,
        find: Finder = find_marked,
        send: Callable[[Proc, int], bool] = descendants.signal_proc,
        running: Callable[[Proc], bool] = descendants.same,
    ) -> None:
        self._reactor = reactor
        self.mark = mark
        self._find = find
        self._send = send
        self._running = running

    def outside(self, pgid: int | None) -> list[Proc]:
        """The run's processes now, but for those in group C{pgid} (signalled as a group)."""
        return [proc for proc in self._find(self.mark) if proc.pgrp != pgid]

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
        left = await self._wait_gone(self.signal(pgid, signal.SIGTERM), grace)
        # Found again: a stray may have forked while it was being stopped.
        killed = {proc for proc in left if self._send(proc, signal.SIGKILL)}
        killed.update(self.signal(pgid, signal.SIGKILL))
        return await self._wait_gone(sorted(killed, key=lambda proc: proc.pid), kill_wait)
