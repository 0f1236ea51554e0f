"""
No service process outlives lmproxy, even when lmproxy is killed with SIGKILL.

L{Watchdog} is lmproxy's side: it starts the watchdog child
(L{lmproxy.core.waiter}, a shell loop while lmproxy runs, then
L{lmproxy.core.reaper}, the standard library alone) in a session of its
own and tells it over a pipe which process groups lmproxy owns, services'
and helper commands' alike, and for a service's, its run's mark and its
KillCommand.  When the pipe closes,
however lmproxy died, the child runs the KillCommands of the services still
registered and ends every group still registered, with the processes that
left them.
The protocol, both the lines written here and their parser, lives in
L{lmproxy.core.reaper}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.core import reaper, waiter
from lmproxy.logs import log_observer


class Watchdog(Service):
    """
    lmproxy's side of the watchdog: starts the child and keeps it informed.

    Groups added before the service starts are sent once the child runs.
    Each line is written to the child's pipe at once, in the call that
    registers or discards its group, not later by the reactor: a line still
    in a buffer when lmproxy exits (or is killed) would be lost, and the
    child would end a group already gone, run a KillCommand already run, or
    not know of a group that is there.  The pipe is blocking: its lines are
    short, the child reads them as they come, and a pipe holds 64 KiB.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        reactor: IReactorProcess,
        setsid: str,
        make_pipe: Callable[[], tuple[int, int]] = os.pipe,
    ) -> None:
        """
        @param reactor: spawns the child.
        @param setsid: the path of C{setsid(1)}, which gives the child a session
            of its own, so that signals sent to lmproxy's group or terminal do
            not reach it.
        @param make_pipe: makes the pipe to the child, as C{os.pipe} (a spy in tests).
        """
        self._reactor = reactor
        self._setsid = setsid
        self._make_pipe = make_pipe
        self._pipe: int | None = None  # the end we write to, while the child runs
        self._groups: dict[int, reaper.ServiceRun | None] = {}

    def startService(self) -> None:
        """Start the child and send it the groups registered so far."""
        super().startService()
        child_end, self._pipe = self._make_pipe()
        try:
            self._reactor.spawnProcess(
                _WatchdogProtocol(self),
                self._setsid,
                [self._setsid, *waiter.waiter_command(sys.executable)],
                env=dict(os.environ),
                childFDs={0: child_end, 1: 1, 2: 2},
            )
        finally:
            os.close(child_end)  # the child has its own copy
        for pgid, run in self._groups.items():
            self._send(_line(pgid, run))

    def add(self, pgid: int, run: reaper.ServiceRun | None = None) -> None:
        """
        lmproxy now owns a process group.

        @param pgid: the group's id.
        @param run: for a service's group, how to clean up after its run.
        """
        self._groups[pgid] = run
        self._send(_line(pgid, run))

    def discard(self, pgid: int) -> None:
        """
        A process group is gone; a group never added is ignored.

        @param pgid: the group's id.
        """
        if pgid in self._groups:
            del self._groups[pgid]
            self._send(reaper.discard_line(pgid))

    def _send(self, line: bytes) -> None:
        if self._pipe is None:
            return
        try:
            while line:
                line = line[os.write(self._pipe, line) :]
        except OSError:
            # The child is gone (EPIPE): _ended says so once it is reaped.
            self._close()

    def _close(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None

    def _ended(self) -> None:
        self._close()
        if self.running:
            self.log.error("the watchdog process ended; service processes may outlive lmproxy")


def _line(pgid: int, run: reaper.ServiceRun | None) -> bytes:
    return reaper.add_line(pgid) if run is None else reaper.service_line(pgid, run)


class _WatchdogProtocol(ProcessProtocol):
    """Tells the L{Watchdog} when its child has ended."""

    def __init__(self, owner: Watchdog) -> None:
        self._owner = owner

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended()
