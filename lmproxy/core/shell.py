"""
Short shell commands with a time limit (healthchecks, KillCommands,
CheckCommands), each run by C{sh -c} in a session of its own, so that a command
that outlives its time is killed together with its children.
"""

from __future__ import annotations

import os
import shutil
import signal

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, FailureGroup, race
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from lmproxy.core.groups import GroupSignaller, ProcessGroup

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
"""Runs a command in a new session: every process lmproxy spawns goes through it."""
MAX_CAPTURE_BYTES = 64 * 1024


class Reactor(IReactorProcess, IReactorTime):
    """The reactor features spawning needs (for type hints only)."""


@frozen
class ShellResult:
    """How a shell command ended."""

    exit_code: int | None  # None: killed (timed out, or by a signal)
    output: str  # stdout and stderr, at most MAX_CAPTURE_BYTES
    timed_out: bool = False


class _CapturingProtocol(ProcessProtocol):
    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # Here, not after spawnProcess returns: a command that exits at once may
        # be reaped (and its transport's pid cleared) before spawnProcess returns.
        assert self.transport is not None and self.transport.pid is not None
        self.group.started(self.transport.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = MAX_CAPTURE_BYTES - len(self.output)
        if room > 0:
            self.output += data[:room]

    def processExited(self, reason: Failure) -> None:
        self.group.leader_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


async def run_shell(
    reactor: Reactor,
    command: str,
    timeout: float,
    cwd: str | None = None,
    signal_group: GroupSignaller = os.killpg,
) -> ShellResult:
    """
    Run C{sh -c command} in its own session, killing its whole group if it
    outlives C{timeout} seconds or if the caller cancels.  A command that
    cannot be spawned (no process or file descriptor left) ends like one that
    failed: no exit code, and the reason as its output.
    """
    group = ProcessGroup(reactor, signal_group)
    protocol = _CapturingProtocol(group)
    try:
        transport = reactor.spawnProcess(
            protocol,
            SETSID,
            [SETSID, "/bin/sh", "-c", command],
            env=dict(os.environ),
            path=cwd,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
    except OSError as e:
        return ShellResult(None, f"cannot run it: {e}")
    transport.closeStdin()
    exit_code: int | None = None
    exited = group.when_leader_exits()
    try:
        index, _ = await race([exited, deferLater(reactor, timeout)])
    except (CancelledError, FailureGroup):
        # Cancelling a race fails it with a FailureGroup of its cancelled
        # contenders (neither fails otherwise): the caller cancelled us.
        group.signal(signal.SIGKILL)
        raise CancelledError() from None
    timed_out = index == 1
    if timed_out:
        group.signal(signal.SIGKILL)
    else:
        exit_code = group.exit_code
    # Members of the group may still hold the pipes open; don't wait for them.
    return ShellResult(exit_code, protocol.output.decode("utf-8", "replace"), timed_out)
