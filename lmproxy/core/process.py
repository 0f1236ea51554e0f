"""
Model-server processes: spawning a service's command in its own session
(process group), writing its output to its log file and to lmproxy's log,
and the stop sequence (KillCommand, SIGTERM to the group, SIGKILL after a grace
period).  Also short shell commands with a time limit (healthchecks, kill and
check commands), each in its own group so that their children die with them.

A process group is only signalled while it is still ours: while its leader is
not reaped (its pid cannot be reused), or while a member still exists (a group
id is not reused while the group has members).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
from collections.abc import Callable
from typing import IO, Protocol

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, FailureGroup, race
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.config import ServiceConfig
from lmproxy.lines import LineSplitter
from lmproxy.logs import log_observer

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
KILL_WAIT_SECONDS = 5.0  # after SIGKILL, how long to wait for the group to vanish
KILL_COMMAND_TIMEOUT_SECONDS = 60.0
GROUP_POLL_SECONDS = 0.05  # how often to look for group members left behind by the leader
MAX_CAPTURE_BYTES = 64 * 1024

GroupSignaller = Callable[[int, int], None]
"""Send a signal to a process group: ``os.killpg``, or a fake in tests."""


class GroupRegistry(Protocol):
    """Told which process groups lmproxy owns (see L{lmproxy.core.watchdog})."""

    def add(self, pgid: int) -> None: ...

    def discard(self, pgid: int) -> None: ...


class StartError(Exception):
    """The service's command could not be spawned; the message says why."""


class Reactor(IReactorProcess, IReactorTime):
    """The reactor features this module needs (for type hints only)."""


def split_args(args: str) -> list[str]:
    """Split ``Args`` like a POSIX shell splits words, without expansion."""
    try:
        return shlex.split(args, posix=True)
    except ValueError as e:
        raise StartError(f"Args {args!r} cannot be split into words: {e}") from None


def resolve_command(command: str, work_dir: str | None) -> str:
    """Find the executable the way execvp would, relative to ``work_dir``."""
    if "/" in command:
        path = os.path.join(work_dir or os.getcwd(), command)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return command
        raise StartError(f"Command {command!r} is not an executable file")
    found = shutil.which(command)
    if found is None:
        raise StartError(f"Command {command!r} was not found on PATH")
    return found


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
        """Wait up to ``seconds`` for every member of the group to exit."""
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
        """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.signal(signal.SIGTERM) and not await self.wait_gone(grace):
            self.signal(signal.SIGKILL)
            await self.wait_gone(KILL_WAIT_SECONDS)


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
    Run ``sh -c command`` in its own session, killing its whole group if it
    outlives ``timeout`` seconds or if the caller cancels.  A command that
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
    assert transport.pid is not None
    group.started(transport.pid)
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


class _ServiceProtocol(ProcessProtocol):
    def __init__(self, owner: ServiceProcess) -> None:
        self.owner = owner

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.owner._output(childFD, data)

    def processExited(self, reason: Failure) -> None:
        self.owner._exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended()


class ServiceProcess:
    """
    One run of a service's ``Command Args``: in ``WorkDir``, in a session of
    its own, with lmproxy's environment, stdin from /dev/null, stdout and
    stderr appended to the log file and, when ``output_logs``, echoed as
    ``[name/stdout] line`` into lmproxy's log.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        reactor: Reactor,
        config: ServiceConfig,
        output_logs: bool,
        signal_group: GroupSignaller = os.killpg,
        on_output: Callable[[], None] | None = None,
        registry: GroupRegistry | None = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._output_logs = output_logs
        self._signal_group = signal_group
        self.group = ProcessGroup(reactor, signal_group)
        self._on_output = on_output
        self._registry = registry
        self._log_file: IO[bytes] | None = None
        self._splitters = {1: LineSplitter(), 2: LineSplitter()}
        self._transport: IProcessTransport | None = None
        self._kill_command_run: Deferred[ShellResult] | None = None

    @property
    def pid(self) -> int | None:
        return self.group.pgid

    def spawn(self) -> None:
        """Start the process; raises L{StartError} when that is impossible."""
        config = self._config
        argv = split_args(config.args)
        executable = resolve_command(config.command, config.work_dir)
        if config.work_dir is not None and not os.path.isdir(config.work_dir):
            raise StartError(f"WorkDir {config.work_dir!r} is not a directory")
        try:
            os.makedirs(os.path.dirname(config.log_file_path), exist_ok=True)
            self._log_file = open(config.log_file_path, "ab", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise StartError(f"cannot open log file {config.log_file_path!r}: {e}") from None
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
        except OSError as e:
            self._close_log()
            raise StartError(f"cannot open {os.devnull}: {e}") from None
        try:
            self._transport = self._reactor.spawnProcess(
                _ServiceProtocol(self),
                SETSID,
                [SETSID, executable, *argv],
                env=dict(os.environ),
                path=config.work_dir,
                childFDs={0: devnull, 1: "r", 2: "r"},
            )
        except OSError as e:
            self._close_log()
            raise StartError(f"cannot spawn {executable!r}: {e}") from None
        finally:
            os.close(devnull)
        assert self._transport.pid is not None
        self.group.started(self._transport.pid)
        if self._registry is not None:
            self._registry.add(self._transport.pid)
        self.log.info(
            "{service}: started {argv} as pid {pid}",
            service=config.name,
            argv=[executable, *argv],
            pid=self.pid,
        )

    def when_exited(self) -> Deferred[None]:
        """Fires when the process itself has exited (its group may live on)."""
        return self.group.when_leader_exits()

    @property
    def exit_description(self) -> str | None:
        return self.group.exit_description

    async def stop(self, use_kill_command: bool = True) -> None:
        """
        Run the KillCommand (if any, with a time limit), then SIGTERM the
        group, SIGKILL it after the grace period, and wait until it is gone.
        """
        name = self._config.name
        if self.pid is None:
            return  # never spawned: nothing to stop, no KillCommand to run
        if use_kill_command and self._config.kill_command:
            run = self._kill_command_run = Deferred.fromCoroutine(
                run_shell(
                    self._reactor,
                    self._config.kill_command,
                    KILL_COMMAND_TIMEOUT_SECONDS,
                    cwd=self._config.work_dir,
                    signal_group=self._signal_group,
                )
            )
            try:
                result: ShellResult | None = await run
            except CancelledError:
                result = None  # kill(): no more waiting for it
            finally:
                self._kill_command_run = None
            if result is not None and result.exit_code != 0:
                self.log.warn(
                    "{service}: KillCommand failed ({how}): {output}",
                    service=name,
                    how="timed out" if result.timed_out else f"status {result.exit_code}",
                    output=result.output.strip(),
                )
        await self.group.terminate(STOP_GRACE_SECONDS)
        if self.group.alive():
            self.log.error(
                "{service}: process group {pgid} survived SIGKILL", service=name, pgid=self.pid
            )
        elif self._registry is not None and self.pid is not None:
            self._registry.discard(self.pid)

    def kill(self) -> None:
        """
        SIGKILL the whole group now (lmproxy is asked to quit at once), and a
        KillCommand still running, so that a stop in progress ends at once.
        """
        self.group.signal(signal.SIGKILL)
        if self._kill_command_run is not None:
            self._kill_command_run.cancel()

    def _output(self, fd: int, data: bytes) -> None:
        if self._log_file is not None:
            try:
                self._log_file.write(data)
            except OSError as e:
                self.log.warn(
                    "{service}: cannot write log file: {error}", service=self._config.name, error=e
                )
        if self._output_logs and fd in self._splitters:
            self._echo(fd, self._splitters[fd].feed(data))
        if self._on_output is not None:
            self._on_output()

    def _echo(self, fd: int, lines: list[str]) -> None:
        stream = "stdout" if fd == 1 else "stderr"
        for line in lines:
            self.log.info(
                "[{service}/{stream}] {line}", service=self._config.name, stream=stream, line=line
            )

    def _exited(self, reason: Failure) -> None:
        self.group.leader_exited(reason)
        self.log.info(
            "{service}: process {pid} {how}",
            service=self._config.name,
            pid=self.pid,
            how=self.group.exit_description,
        )

    def _ended(self) -> None:
        if self._output_logs:
            for fd, splitter in self._splitters.items():
                self._echo(fd, splitter.flush())
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
