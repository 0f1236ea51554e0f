"""
Model-server processes: one run of a service's C{Command Args} in a session
(process group) of its own, its output written to its log file and echoed to
lmproxy's log, and its stop sequence (KillCommand, SIGTERM to the group and
to the processes that left it, SIGKILL after a grace period).

Each run carries a mark of its own in its environment (L{MARK_VARIABLE}):
its processes that left its group are found by it (L{lmproxy.core.strays}),
by lmproxy when the service stops and by the watchdog child when lmproxy dies.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import IO

from twisted.internet.defer import CancelledError, Deferred, race
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.compat.process import can_spawn_in_session, spawn_in_session
from lmproxy.config import ServiceConfig
from lmproxy.core.descendants import MARK_VARIABLE, new_mark
from lmproxy.core.groups import (
    KILL_WAIT_SECONDS,
    STOP_GRACE_SECONDS,
    GroupRegistry,
    GroupSignaller,
    LeaderSignaller,
    ProcessGroup,
)
from lmproxy.core.oneshot import OneShot
from lmproxy.core.reaper import ServiceRun
from lmproxy.core.shell import (
    PIPE_DRAIN_SECONDS,
    SETSID,
    Reactor,
    ShellResult,
    one_line,
    run_shell,
)
from lmproxy.core.strays import Finder, Strays, find_marked
from lmproxy.lines import LineSplitter
from lmproxy.logs import log_observer

KILL_COMMAND_TIMEOUT_SECONDS = 60.0
OUTPUT_TAIL_LINES = 20
"""How many of a server's last output lines are kept, to tell why a start failed."""
OUTPUT_TAIL_LINE_CHARS = 500


class StartError(Exception):
    """
    The service's command could not be spawned; the message says why.

    @ivar retryable: False when trying again cannot help until the config or
        the machine changes (no such command, bad Args).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def split_args(args: str) -> list[str]:
    """Split C{Args} like a POSIX shell splits words, without expansion."""
    return list(_split(args))


@functools.lru_cache(maxsize=256)
def _split(args: str) -> tuple[str, ...]:
    # shlex takes ~0.1 ms, at every start of the service: once per Args.
    # (A StartError is not cached: it is raised again each time.)
    try:
        return tuple(shlex.split(args, posix=True))
    except ValueError as e:
        raise StartError(f"Args {args!r} cannot be split into words: {e}") from None


def resolve_command(command: str, work_dir: str | None) -> str:
    """
    Find the executable the way execvp would, relative to C{work_dir}; a
    name not on C{PATH} is looked for beside lmproxy's own interpreter too,
    so that the scripts of a venv that is not activated are found.
    """
    if "/" in command:
        path = os.path.join(work_dir or os.getcwd(), command)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return command
        raise StartError(f"Command {command!r} is not an executable file")
    beside = os.path.dirname(os.path.abspath(sys.executable))
    found = shutil.which(command) or shutil.which(command, path=beside)
    if found is None:
        raise StartError(f"Command {command!r} was not found on PATH nor in {beside}")
    return found


class _ServiceProtocol(ProcessProtocol):
    def __init__(self, owner: ServiceProcess) -> None:
        self.owner = owner

    def connectionMade(self) -> None:
        # Here, not after spawnProcess returns: a process that exits at once is
        # reaped (and its transport's pid cleared) before spawnProcess returns.
        # Twisted's Process sets the pid before it calls makeConnection.
        transport = self.transport
        pid = getattr(transport, "pid", None)
        if transport is not None and pid is not None:
            self.owner._spawned(pid, transport.signalProcess)
        # else: not with Twisted's Process (see tests/test_fake_processes.py)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.owner._output(childFD, data)

    def processExited(self, reason: Failure) -> None:
        self.owner._exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended()


class ServiceProcess:
    """
    One run of a service's C{Command Args}: in C{WorkDir}, in a session of
    its own, with lmproxy's environment, its C{Env} and the run's mark, stdin from
    /dev/null, stdout and stderr appended to the log file and, when
    C{output_logs}, echoed as C{[name/stdout] line} into lmproxy's log.

    @ivar strays: its processes outside its group, found by its mark.
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
        find_strays: Finder = find_marked,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._output_logs = output_logs
        self._signal_group = signal_group
        self.group = ProcessGroup(reactor, signal_group)
        self._on_output = on_output
        self._registry = registry
        self.strays = Strays(reactor, new_mark(), find_strays)
        self._log_file: IO[bytes] | None = None
        self._splitters = {1: LineSplitter(), 2: LineSplitter()}
        self._tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._transport: IProcessTransport | None = None
        self._kill_command_run: Deferred[ShellResult] | None = None
        self._argv: list[str] = []
        self._pipes_closed = OneShot()

    @property
    def pid(self) -> int | None:
        return self.group.pgid

    @property
    def output_tail(self) -> tuple[str, ...]:
        """The last lines it wrote (stdout and stderr), each cut to a bound."""
        return tuple(self._tail)

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
            raise StartError(f"cannot open {os.devnull}: {e}", retryable=True) from None
        self._argv = [executable, *argv]
        # Env is checked: it never holds the mark (lmproxy.config.values.environment).
        env = {**os.environ, **config.env, MARK_VARIABLE: self.strays.mark}
        self.strays.begin()
        fds: dict[int, int | str] = {0: devnull, 1: "r", 2: "r"}
        try:
            if can_spawn_in_session(self._reactor):
                self._transport = spawn_in_session(
                    self._reactor,
                    _ServiceProtocol(self),
                    executable,
                    self._argv,
                    env,
                    config.work_dir,
                    fds,
                )
            else:  # another reactor (a test's fake): through the setsid command
                self._transport = self._reactor.spawnProcess(
                    _ServiceProtocol(self),
                    SETSID,
                    [SETSID, *self._argv],
                    env=env,
                    path=config.work_dir,
                    childFDs=fds,
                )
        except OSError as e:
            self._close_log()
            # Out of processes or descriptors, usually: that may pass.
            raise StartError(f"cannot spawn {executable!r}: {e}", retryable=True) from None
        finally:
            os.close(devnull)

    def _spawned(self, pid: int, signal_leader: LeaderSignaller) -> None:
        self.group.started(pid, signal_leader)
        if self._registry is not None:
            config = self._config
            run = ServiceRun(
                self.strays.mark, config.kill_command, config.work_dir, tuple(config.env.items())
            )
            self._registry.add(pid, run)
        self.strays.spawned(pid)  # after the watchdog knows of the group: it reads /proc
        self.log.info(
            "{service}: started {argv} as pid {pid}",
            service=self._config.name,
            argv=shlex.join(self._argv),
            pid=pid,
        )

    def when_exited(self) -> Deferred[None]:
        """Fires when the process itself has exited (its group may live on)."""
        return self.group.when_leader_exits()

    async def output_read(self) -> None:
        """
        Once the process has exited: wait until its output is read to the end
        (its pipes closed), for at most L{PIPE_DRAIN_SECONDS} (a child left
        in its group may hold them open).  The reactor may tell the exit
        before the last output, the lines a failed start must show.
        """
        await race([self._pipes_closed.wait(), deferLater(self._reactor, PIPE_DRAIN_SECONDS)])

    @property
    def exit_description(self) -> str | None:
        return self.group.exit_description

    @property
    def exit_code(self) -> int | None:
        """Its exit status once it has exited; C{None} before, or when a signal ended it."""
        return self.group.exit_code

    async def stop(self, use_kill_command: bool = True) -> None:
        """
        Run the KillCommand (if any, with a time limit), then SIGTERM the
        group and the strays, SIGKILL them after the grace period, and wait
        until they are gone.
        """
        name = self._config.name
        if self.pid is None:
            return  # never spawned: nothing to stop, no KillCommand to run
        if use_kill_command and self._config.kill_command:
            await self._run_kill_command(self._config.kill_command)
        # At once: the strays must not wait for the group's grace period, nor it for theirs.
        # The group first: it exits while the strays are looked for in /proc.
        group = Deferred.fromCoroutine(self.group.terminate(STOP_GRACE_SECONDS))
        strays = Deferred.fromCoroutine(
            self.strays.terminate(self.pid, STOP_GRACE_SECONDS, KILL_WAIT_SECONDS)
        )
        await group
        for proc in await strays:
            self.log.error(
                "{service}: process {pid}, which left its process group, survived SIGKILL",
                service=name,
                pid=proc.pid,
            )
        if self.group.alive():
            self.log.error(
                "{service}: process group {pgid} survived SIGKILL", service=name, pgid=self.pid
            )
        elif self._registry is not None and self.pid is not None:
            self._registry.discard(self.pid)

    async def _run_kill_command(self, command: str) -> None:
        name = self._config.name
        run = self._kill_command_run = Deferred.fromCoroutine(
            run_shell(
                self._reactor,
                command,
                KILL_COMMAND_TIMEOUT_SECONDS,
                cwd=self._config.work_dir,
                signal_group=self._signal_group,
                registry=self._registry,
                env=self._config.env,
            )
        )
        try:
            result = await run
        except CancelledError:
            return  # kill(): no more waiting for it
        except Exception:
            # Whatever went wrong, the stop goes on to signal the group.
            self.log.failure("{service}: KillCommand crashed", service=name)
            return
        finally:
            self._kill_command_run = None
        said = one_line(result.stderr or result.stdout)
        if result.exit_code != 0:
            self.log.warn(
                "{service}: KillCommand failed ({how})" + (": {output}" if said else ""),
                service=name,
                how=result.how,
                output=said,
            )
        elif said:
            self.log.debug("{service}: KillCommand said: {output}", service=name, output=said)

    def kill(self) -> None:
        """
        SIGKILL the whole group now (lmproxy is asked to quit at once), and a
        KillCommand still running, so that a stop in progress ends at once.
        """
        self.group.signal(signal.SIGKILL)
        self.strays.signal(self.pid, signal.SIGKILL)
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
        if fd in self._splitters:
            self._lines(fd, self._splitters[fd].feed(data))
        if self._on_output is not None:
            self._on_output()

    def _lines(self, fd: int, lines: list[str]) -> None:
        self._tail.extend(line[:OUTPUT_TAIL_LINE_CHARS] for line in lines)
        if not self._output_logs:
            return
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
        for fd, splitter in self._splitters.items():
            self._lines(fd, splitter.flush())
        self._close_log()
        self._pipes_closed.fire()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
