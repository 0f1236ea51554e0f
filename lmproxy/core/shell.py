"""
Short shell commands with a time limit (healthchecks, KillCommands,
CheckCommands), each run by C{sh -c} in a session of its own, so that a command
that outlives its time is killed together with its children.  Its group is
registered with the watchdog (L{lmproxy.core.watchdog}) while it may have
members, so that it is ended should lmproxy die meanwhile.

A command's stdout and stderr are kept apart (a CheckCommand's value is on
stdout; tools warn on stderr).  Its exit is known when its process is reaped,
but the last of its output may still be in the pipes then: it is read until
the pipes close, for at most L{PIPE_DRAIN_SECONDS} (a child left in the
background may hold them open).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, FailureGroup, race
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from lmproxy.core.groups import GroupRegistry, GroupSignaller, ProcessGroup
from lmproxy.core.oneshot import OneShot

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
"""Runs a command in a new session: every process lmproxy spawns goes through it."""
MAX_CAPTURE_BYTES = 64 * 1024
"""What is kept of each of a command's stdout and stderr; the rest is read and dropped."""
PIPE_DRAIN_SECONDS = 1.0
"""After a command exited, how long to read on until its pipes close."""


class Reactor(IReactorProcess, IReactorTime):
    """The reactor features spawning needs (for type hints only)."""


@frozen
class ShellResult:
    """
    How a shell command ended.

    @ivar exit_code: its exit status; C{None} when it was killed (timed out,
        or by a signal) or could not be run.
    @ivar stdout: what it wrote to stdout, at most L{MAX_CAPTURE_BYTES}.
    @ivar stderr: what it wrote to stderr, at most L{MAX_CAPTURE_BYTES}.
    @ivar how: how it ended, for log lines (C{"exited with status 3"},
        C{"timed out after 60 s"}, C{"could not be run: ..."}).
    @ivar timed_out: it outlived its time limit (and was killed with its group).
    """

    exit_code: int | None
    stdout: str
    stderr: str
    how: str
    timed_out: bool = False


def one_line(text: str, limit: int = 200) -> str:
    """
    C{text} fit for one log line: stripped, its line ends and other control
    characters escaped (C{repr}-style, without the quotes), at most C{limit}
    characters.
    """
    text = text.strip()
    cut = len(text) > limit
    escaped = repr(text[:limit])[1:-1]
    return escaped + "..." if cut else escaped


class _CapturingProtocol(ProcessProtocol):
    def __init__(self, group: ProcessGroup, registry: GroupRegistry | None) -> None:
        self.group = group
        self._registry = registry
        self.output = {1: bytearray(), 2: bytearray()}
        self._ended = OneShot()

    def connectionMade(self) -> None:
        # Here, not after spawnProcess returns: a command that exits at once is
        # reaped (and its transport's pid cleared) before spawnProcess returns.
        # Twisted's Process sets the pid before it calls makeConnection.
        transport = self.transport
        pid = getattr(transport, "pid", None)
        if transport is not None and pid is not None:
            self.group.started(pid, transport.signalProcess)
            if self._registry is not None:
                self._registry.add(pid)

    def forget(self) -> None:
        """The group is gone, or as good as gone (sent SIGKILL): unregister it."""
        if self._registry is not None and self.group.pgid is not None:
            self._registry.discard(self.group.pgid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        captured = self.output.get(childFD)
        if captured is not None:
            room = MAX_CAPTURE_BYTES - len(captured)
            if room > 0:
                captured += data[:room]

    def processExited(self, reason: Failure) -> None:
        self.group.leader_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._ended.fire()

    def when_ended(self) -> Deferred[None]:
        """Fires once the process has exited and its pipes are closed."""
        return self._ended.wait()

    def text(self, fd: int) -> str:
        return self.output[fd].decode("utf-8", "replace")


async def run_shell(
    reactor: Reactor,
    command: str,
    timeout: float,
    cwd: str | None = None,
    signal_group: GroupSignaller = os.killpg,
    registry: GroupRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> ShellResult:
    """
    Run C{sh -c command} in its own session, killing its whole group if it
    outlives C{timeout} seconds or if the caller cancels.  A command that
    cannot be spawned (no process or file descriptor left) ends like one that
    failed: no exit code, and the reason in C{how}.

    @param registry: told of the command's group while it may have members.
    @param env: variables added to lmproxy's environment (a service's C{Env}).
    """
    group = ProcessGroup(reactor, signal_group)
    protocol = _CapturingProtocol(group, registry)
    try:
        transport = reactor.spawnProcess(
            protocol,
            SETSID,
            [SETSID, "/bin/sh", "-c", command],
            env={**os.environ, **(env or {})},
            path=cwd,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
    except OSError as e:
        return ShellResult(None, "", "", f"could not be run: {e}")
    # A command reaped during spawnProcess has its exit known already; its
    # pipes are still open, to be read (and closed) by the reactor.
    transport.closeStdin()
    try:
        index, _ = await race([group.when_leader_exits(), deferLater(reactor, timeout)])
        if index == 0:
            await race([protocol.when_ended(), deferLater(reactor, PIPE_DRAIN_SECONDS)])
    except (CancelledError, FailureGroup):
        # Cancelling a race fails it with a FailureGroup of its cancelled
        # contenders (none fails otherwise): the caller cancelled us.
        group.signal(signal.SIGKILL)
        protocol.forget()
        raise CancelledError() from None
    stdout, stderr = protocol.text(1), protocol.text(2)
    if index == 1:
        group.signal(signal.SIGKILL)
        protocol.forget()
        # Members of the group may still hold the pipes open: don't wait for them.
        return ShellResult(None, stdout, stderr, f"timed out after {timeout:g} s", True)
    if not group.alive():
        # Else a child it left in the background lives on: it stays
        # registered, to be ended should lmproxy die.
        protocol.forget()
    how = group.exit_description
    assert how is not None, "the leader was reaped"
    return ShellResult(group.exit_code, stdout, stderr, how)
