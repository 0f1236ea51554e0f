"""
Process groups: every service and helper command lmproxy runs leads a session
(process group) of its own, so that its children die with it.  A group is only
signalled while it is still ours: while its leader is not reaped (its pid
cannot be reused), or while a member still exists (a group id is not reused
while the group has members).

A group exists only once its leader has called C{setsid}, a moment after the
spawn.  A signal sent before that goes to the leader itself (it is the whole
of its group then), and, should the leader have missed it (a forked child
that has not exec'd yet drops a caught signal), to the group as soon as it
exists.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol

from twisted.internet.defer import Deferred, race
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

# The watchdog child's own type: it may not import Twisted, the core may import it.
from lmproxy.core.oneshot import OneShot
from lmproxy.core.reaper import GroupSignaller, ServiceRun

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
KILL_WAIT_SECONDS = 5.0  # after SIGKILL, how long to wait for the group to vanish
GROUP_POLL_SECONDS = 0.05  # how often to look for group members left behind by the leader
# (and, while the leader has not made its group yet, for the group)

LeaderSignaller = Callable[[int], None]
"""Signals a group's leader alone: its transport's C{signalProcess}."""


class GroupRegistry(Protocol):
    """
    Told which process groups lmproxy owns (see L{lmproxy.core.watchdog}):
    those of services, with what it takes to clean up after their run
    (C{run}), and those of helper commands.
    """

    def add(self, pgid: int, run: ServiceRun | None = None) -> None: ...

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
        self.exit_code: int | None = None
        self.exit_description: str | None = None
        self._gone = False
        self._leader_exit = OneShot()
        self._signal_leader: LeaderSignaller | None = None
        self._undelivered: int | None = None  # sent to the leader before its group existed

    def started(self, pid: int, signal_leader: LeaderSignaller | None = None) -> None:
        """
        The leader was spawned as C{pid}; C{signal_leader} signals it alone
        (while it has not made its group yet).
        """
        self.pgid = pid
        self._signal_leader = signal_leader

    @property
    def leader_reaped(self) -> bool:
        """Whether the leader has exited and been reaped."""
        return self._leader_exit.happened

    def leader_exited(self, reason: Failure) -> None:
        self.exit_code = _exit_code(reason)
        self.exit_description = _describe_exit(reason)
        self._leader_exit.fire()

    def when_leader_exits(self) -> Deferred[None]:
        """Fires when the leader has been reaped (at once if it has been)."""
        return self._leader_exit.wait()

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
            if self.leader_reaped:
                self._gone = True
                return False
            # Not reaped, yet no group: the leader has not called setsid.
            if signum != 0:
                self._undelivered = signum
                self._to_leader(signum)
            return True
        except PermissionError:
            # Only possible once our group is gone and its id was reused.
            self._gone = True
            return False
        if signum != 0:
            self._undelivered = None
        return True

    def _to_leader(self, signum: int) -> None:
        # ProcessExitedAlready: being reaped, nothing left to signal.
        if self._signal_leader is not None:
            with suppress(OSError, ProcessExitedAlready):
                self._signal_leader(signum)

    async def wait_gone(self, seconds: float) -> bool:
        """Wait up to C{seconds} for every member of the group to exit."""
        deadline = self._reactor.seconds() + seconds
        while self.alive():
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                return False
            if self._undelivered is not None:
                # Its leader may have missed it: to the group, once there is one.
                wait = min(GROUP_POLL_SECONDS, remaining)
                await race([self.when_leader_exits(), deferLater(self._reactor, wait)])
                if self._undelivered is not None:
                    self.signal(self._undelivered)
            elif not self.leader_reaped:
                await race([self.when_leader_exits(), deferLater(self._reactor, remaining)])
            else:
                await deferLater(self._reactor, min(GROUP_POLL_SECONDS, remaining))
        return True

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after C{grace} seconds."""
        if self.signal(signal.SIGTERM) and not await self.wait_gone(grace):
            self.signal(signal.SIGKILL)
            await self.wait_gone(KILL_WAIT_SECONDS)
