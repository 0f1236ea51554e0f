"""
Process groups: every service and helper command lmproxy runs leads a session
(process group) of its own, so that its children die with it.  A group is only
signalled while it is still ours: while its leader is not reaped (its pid
cannot be reused), or while a member still exists (a group id is not reused
while the group has members).
"""

from __future__ import annotations

import signal
from typing import Protocol

from twisted.internet.defer import Deferred, race
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

# The watchdog child's own type: it may not import Twisted, the core may import it.
from lmproxy.core.reaper import GroupSignaller

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
KILL_WAIT_SECONDS = 5.0  # after SIGKILL, how long to wait for the group to vanish
GROUP_POLL_SECONDS = 0.05  # how often to look for group members left behind by the leader


class GroupRegistry(Protocol):
    """Told which process groups lmproxy owns (see L{lmproxy.core.watchdog})."""

    def add(self, pgid: int) -> None: ...

    def discard(self, pgid: int) -> None: ...


def _exit_code(reason: Failure) -> int | None:
    value = reason.value
    if isinstance(value, ProcessDone | ProcessTerminated):
        return value.exitCode
    return None


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"was killed by signal {value.signal}"
    return f"exited with status {_exit_code(reason)}"


class ProcessGroup:
    """
    A process group led by a child we spawned in its own session.  Knows
    whether it is still ours to signal.
    """

    def __init__(self, reactor: IReactorTime, signal_group: GroupSignaller) -> None:
        self._reactor = reactor
        self._signal_group = signal_group
        self.pgid: int | None = None
        self.leader_reaped = False
        self.exit_code: int | None = None
        self.exit_description: str | None = None
        self._gone = False
        self._exit_waiters: list[Deferred[None]] = []

    def started(self, pid: int) -> None:
        self.pgid = pid

    def leader_exited(self, reason: Failure) -> None:
        self.leader_reaped = True
        self.exit_code = _exit_code(reason)
        self.exit_description = _describe_exit(reason)
        waiters, self._exit_waiters = self._exit_waiters, []
        for d in waiters:
            d.callback(None)

    def when_leader_exits(self) -> Deferred[None]:
        """Fires when the leader has been reaped (at once if it has been)."""
        if self.leader_reaped:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d

        def forget(d: Deferred[None]) -> None:
            self._exit_waiters.remove(d)

        d = Deferred(forget)
        self._exit_waiters.append(d)
        return d

    def alive(self) -> bool:
        """Does the group still exist (and is it still ours)?"""
        if self.pgid is None or self._gone:
            return False
        if not self.leader_reaped:
            return True
        return self.signal(0)

    def signal(self, signum: int) -> bool:
        """Signal the group if it is still ours; False once it is gone."""
        if self.pgid is None or self._gone:
            return False
        try:
            self._signal_group(self.pgid, signum)
        except ProcessLookupError:
            self._gone = self.leader_reaped
            return not self._gone
        except PermissionError:
            # Only possible once our group is gone and its id was reused.
            self._gone = True
            return False
        return True

    async def wait_gone(self, seconds: float) -> bool:
        """Wait up to C{seconds} for every member of the group to exit."""
        deadline = self._reactor.seconds() + seconds
        while self.alive():
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                return False
            if not self.leader_reaped:
                await race([self.when_leader_exits(), deferLater(self._reactor, remaining)])
            else:
                await deferLater(self._reactor, min(GROUP_POLL_SECONDS, remaining))
        return True

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after C{grace} seconds."""
        if self.signal(signal.SIGTERM) and not await self.wait_gone(grace):
            self.signal(signal.SIGKILL)
            await self.wait_gone(KILL_WAIT_SECONDS)
