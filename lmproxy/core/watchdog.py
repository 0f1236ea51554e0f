"""
No service process outlives lmproxy, even when lmproxy is killed with SIGKILL.

L{Watchdog} is lmproxy's side: it starts the watchdog child
(L{lmproxy.core.reaper}, on the standard library alone) in a session of its
own and tells it over a pipe which process groups lmproxy owns.  When the pipe
closes, however lmproxy died, the child ends every group still registered.
The protocol, both the lines written here and their parser, lives in
L{lmproxy.core.reaper}.
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import Service
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.core import reaper
from lmproxy.logs import log_observer


class Watchdog(Service):
    """
    lmproxy's side of the watchdog: starts the child and keeps it informed.

    Groups added before the service starts are sent once the child runs.
    """

    log = Logger(observer=log_observer)

    def __init__(self, reactor: IReactorProcess, setsid: str) -> None:
        """
        @param reactor: spawns the child.
        @param setsid: the path of C{setsid(1)}, which gives the child a session
            of its own, so that signals sent to lmproxy's group or terminal do
            not reach it.
        """
        self._reactor = reactor
        self._setsid = setsid
        self._transport: IProcessTransport | None = None
        self._groups: set[int] = set()

    def startService(self) -> None:
        """Start the child and send it the groups registered so far."""
        super().startService()
        self._transport = self._reactor.spawnProcess(
            _WatchdogProtocol(self),
            self._setsid,
            [self._setsid, sys.executable, "-m", reaper.__name__],
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        for pgid in self._groups:
            self._send(reaper.add_line(pgid))

    def add(self, pgid: int) -> None:
        """
        lmproxy now owns a process group.

        @param pgid: the group's id.
        """
        self._groups.add(pgid)
        self._send(reaper.add_line(pgid))

    def discard(self, pgid: int) -> None:
        """
        A process group is gone; a group never added is ignored.

        @param pgid: the group's id.
        """
        if pgid in self._groups:
            self._groups.discard(pgid)
            self._send(reaper.discard_line(pgid))

    def _send(self, line: bytes) -> None:
        if self._transport is not None:
            self._transport.write(line)

    def _ended(self) -> None:
        self._transport = None
        if self.running:
            self.log.error("the watchdog process ended; service processes may outlive lmproxy")


class _WatchdogProtocol(ProcessProtocol):
    """Tells the L{Watchdog} when its child has ended."""

    def __init__(self, owner: Watchdog) -> None:
        self._owner = owner

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended()
