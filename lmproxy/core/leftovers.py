"""
The process groups that a service's processes left behind when they exited
on their own (their children may live on): each is ended off the critical
path, and a shutdown waits for them or kills them.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from lmproxy.core.process import ServiceProcess
from lmproxy.logs import log_observer


class Leftovers:
    """The groups of one service's exited processes, still being ended."""

    log = Logger(observer=log_observer)

    def __init__(self, service: str) -> None:
        """
        @param service: the service's name, for the log.
        """
        self._service = service
        self._ending: dict[ServiceProcess, Deferred[None]] = {}

    def end(self, process: ServiceProcess) -> None:
        """End what is left of C{process}'s group (not its KillCommand: it exited)."""
        ending = Deferred.fromCoroutine(process.stop(use_kill_command=False))
        if ending.called:
            return
        self._ending[process] = ending

        def forget(_: object) -> None:
            del self._ending[process]

        ending.addErrback(
            lambda f: self.log.failure("{service}: stopping failed", f, service=self._service)
        )
        ending.addBoth(forget)

    def kill(self) -> None:
        """SIGKILL every group still being ended."""
        for process in self._ending:
            process.kill()

    def pending(self) -> list[Deferred[None]]:
        """What is still being ended: each fires once its group is gone."""
        return list(self._ending.values())
