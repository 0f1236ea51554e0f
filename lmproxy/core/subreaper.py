"""
lmproxy as a child subreaper (Linux's C{PR_SET_CHILD_SUBREAPER}): a process
that a service's process left behind when it exited (a daemon that
double-forked) is re-parented to lmproxy instead of init, so that it stays
among lmproxy's descendants.

Twisted reaps only the processes it spawned; the orphans re-parented to
lmproxy are reaped here, every L{REAP_SECONDS}, and only those: a child that
Twisted spawned (and will reap, reading its exit status) is never touched.

Once every service has stopped (after the reactor's shutdown), an orphan
still there escaped its service's mark too (it cleared its environment), or
was left by a helper command: it gets SIGKILL, with its descendants, so that
it does not outlive lmproxy.

Elsewhere, or where C{prctl} fails, lmproxy says so once at start-up and goes
on: service processes are still found by their mark
(L{lmproxy.core.descendants}), wherever they were re-parented.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Container
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lmproxy.compat.process import twisted_children
from lmproxy.core import descendants
from lmproxy.core.descendants import Proc
from lmproxy.logs import log_observer

PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
REAP_SECONDS = 1.0
"""How often to reap the orphans that have exited."""

Waitid = Callable[[int, int, int], Any]
"""C{os.waitid}, or a fake in tests."""


class SubreaperReactor(IReactorTime, IReactorCore):
    """The reactor features the subreaper needs (for type hints only)."""


def become_subreaper() -> str | None:
    """
    Make this process a child subreaper.

    @return: C{None} if it is one now, else why not.
    """
    if not sys.platform.startswith("linux"):
        return f"child subreapers are a Linux feature (this is {sys.platform})"
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as e:
        return f"no prctl: {e}"
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return f"prctl failed: {os.strerror(ctypes.get_errno())}"
    return None


def reap_orphans(
    ours: Callable[[], Container[int]] = twisted_children, waitid: Waitid = os.waitid
) -> list[int]:
    """
    Reap every exited child that Twisted did not spawn.

    Looks without reaping first (C{WNOWAIT}): a child of Twisted's is left
    for Twisted, and stops the round (it is reaped within a turn; the
    orphans behind it wait for the next round).

    @param ours: the pids that are Twisted's to reap.
    @param waitid: C{os.waitid}, or a fake.
    @return: the pids reaped.
    """
    reaped = []
    while True:
        try:
            info = waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break  # no children at all
        if info is None or info.si_pid in ours():
            break
        try:
            waitid(os.P_PID, info.si_pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            break  # reaped meanwhile: nothing is ours to take
        reaped.append(info.si_pid)
    return reaped


def orphans(ours: Callable[[], Container[int]] = twisted_children) -> list[Proc]:
    """
    The live children of this process that Twisted did not spawn (orphans
    re-parented to it), and their descendants.

    @param ours: the pids that are Twisted's.
    """
    procs = descendants.scan()
    me, known = os.getpid(), ours()
    roots = [p for p in procs if p.ppid == me and not p.zombie and p.pid not in known]
    return descendants.closure(procs, roots)


class Subreaper(Service):
    """
    Makes lmproxy a child subreaper when it starts, and reaps its orphans
    while it runs.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        reactor: SubreaperReactor,
        become: Callable[[], str | None] = become_subreaper,
        reap: Callable[[], list[int]] = reap_orphans,
        left: Callable[[], list[Proc]] = orphans,
        send: Callable[[Proc, int], bool] = descendants.signal_proc,
    ) -> None:
        """
        @param reactor: runs the rounds of reaping, and tells when it has shut down.
        @param become: makes the process a subreaper (a fake in tests).
        @param reap: one round of reaping (a fake in tests).
        @param left: the orphans there are (a fake in tests).
        @param send: signals one of them (a fake in tests).
        """
        self._reactor = reactor
        self._become = become
        self._reap = reap
        self._left = left
        self._send = send
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Become a subreaper, and reap every L{REAP_SECONDS} if that worked."""
        super().startService()
        problem = self._become()
        if problem is not None:
            self.log.info(
                "not a child subreaper ({problem}): a service's processes that leave its"
                " process group are still found by the mark in their environment",
                problem=problem,
            )
            return
        self._loop = LoopingCall(self._round)
        self._loop.clock = self._reactor
        self._loop.start(REAP_SECONDS, now=False)
        # "after": once the services' stops (run "before" shutdown) are over.
        self._reactor.addSystemEventTrigger("after", "shutdown", self.end_orphans)

    def stopService(self) -> None:
        """Stop reaping (whatever is left is reaped with lmproxy)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def end_orphans(self) -> None:
        """SIGKILL the orphans still there: their services are gone."""
        for proc in self._left():
            if self._send(proc, signal.SIGKILL):
                self.log.warn(
                    "killed process {pid}, left behind outside its process group"
                    " by a process lmproxy started",
                    pid=proc.pid,
                )

    def _round(self) -> None:
        for pid in self._reap():
            self.log.debug("reaped orphan process {pid}", pid=pid)
