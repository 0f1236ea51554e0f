"""
Tests for L{lmproxy.core.process} and L{lmproxy.core.groups}: argument
splitting, command resolution, spawning a service in its own session, its log
output, the stop sequence and process groups, all on a L{MemoryProcessReactor}
(no real processes, no real time).  Shell commands: C{tests/test_shell.py}.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core import process as process_module
from lmproxy.core.descendants import MARK_VARIABLE
from lmproxy.core.groups import GROUP_POLL_SECONDS, STOP_GRACE_SECONDS, ProcessGroup
from lmproxy.core.process import (
    KILL_COMMAND_TIMEOUT_SECONDS,
    ServiceProcess,
    StartError,
    resolve_command,
    split_args,
)
from lmproxy.core.shell import SETSID, Reactor, run_shell
from lmproxy.logs import set_log_level
from lmproxy.testing import FakeProcess, MemoryProcessReactor, QuickExit

TRUE = shutil.which("true")
assert TRUE is not None
ECHO_FORMAT = "[{service}/{stream}] {line}"


def ignore_sigterm(process: FakeProcess, signum: int) -> None:
    """An C{on_signal}: the process ignores SIGTERM and dies of SIGKILL."""
    if signum == signal.SIGKILL:
        if not process.exited:
            process.exit(None, signum)
        process.group_alive = False


def leader_dies_group_lives(process: FakeProcess, signum: int) -> None:
    """An C{on_signal}: SIGTERM ends only the leader; SIGKILL ends the whole group."""
    if signum == signal.SIGTERM and not process.exited:
        process.exit(None, signum, group_too=False)
    elif signum == signal.SIGKILL:
        if not process.exited:
            process.exit(None, signum)
        process.group_alive = False


def no_process_left(*args: object, **kwargs: object) -> None:
    """A C{spawnProcess} that fails as fork does when no process may be created."""
    raise BlockingIOError(errno.EAGAIN, "no process left")


class RecordingSignaller:
    """Wraps a fake C{killpg} and records every attempt, delivered or not."""

    def __init__(self, signal_group: Callable[[int, int], None]) -> None:
        self._signal_group = signal_group
        self.attempts: list[tuple[int, int]] = []

    def __call__(self, pgid: int, signum: int) -> None:
        self.attempts.append((pgid, signum))
        self._signal_group(pgid, signum)


class SplitArgsTests(SynchronousTestCase):
    """L{split_args} splits like a POSIX shell, without expansion."""

    def test_words(self) -> None:
        """Whitespace separates words; runs of it do not make empty words."""
        self.assertEqual(
            split_args("  -m  model.gguf\t--port 8080 "),
            [
                "-m",
                "model.gguf",
                "--port",
                "8080",
            ],
        )

    def test_empty(self) -> None:
        """No Args: no words."""
        self.assertEqual(split_args(""), [])

    def test_quotes(self) -> None:
        """Single and double quotes group words; backslash escapes."""
        self.assertEqual(
            split_args("""--name "my model" --x 'a "b" c' d\\ e "q\\"q" ''"""),
            ["--name", "my model", "--x", 'a "b" c', "d e", 'q"q', ""],
        )

    def test_no_expansion(self) -> None:
        """Variables, globs and comments are left alone."""
        self.assertEqual(split_args("$HOME *.gguf ~ a#b"), ["$HOME", "*.gguf", "~", "a#b"])

    def test_unterminated_quote(self) -> None:
        """An unterminated quote is a L{StartError} naming the Args."""
        e = self.assertRaises(StartError, split_args, '--name "my model')
        self.assertIn("'--name \"my model'", str(e))
        self.assertRaises(StartError, split_args, "it's")


class ResolveCommandTests(SynchronousTestCase):
    """L{resolve_command} finds executables like execvp, relative to WorkDir."""

    def test_on_path(self) -> None:
        """A bare name is looked up on PATH."""
        self.assertEqual(resolve_command("true", None), TRUE)

    def test_not_on_path(self) -> None:
        """A bare name that is not on PATH is a L{StartError}."""
        e = self.assertRaises(StartError, resolve_command, "no-such-command-lmproxy", None)
        self.assertIn("not found on PATH", str(e))

    def test_relative_to_work_dir(self) -> None:
        """A relative path with a slash is looked up in WorkDir."""
        work_dir = self.mktemp()
        os.makedirs(os.path.join(work_dir, "bin"))
        program = os.path.join(work_dir, "bin", "server")
        with open(program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(program, 0o755)
        self.assertEqual(resolve_command("bin/server", work_dir), "bin/server")
        self.assertEqual(resolve_command(os.path.abspath(program), None), os.path.abspath(program))
        self.assertRaises(StartError, resolve_command, "bin/server", None)

    def test_not_executable(self) -> None:
        """A file without execute permission, or a directory, is a L{StartError}."""
        work_dir = self.mktemp()
        os.makedirs(os.path.join(work_dir, "dir"))
        with open(os.path.join(work_dir, "plain"), "w") as f:
            f.write("data")
        e = self.assertRaises(StartError, resolve_command, "./plain", work_dir)
        self.assertIn("is not an executable file", str(e))
        self.assertRaises(StartError, resolve_command, "./dir", work_dir)


class ServiceProcessTestCase(SynchronousTestCase):
    """Helpers for tests of L{ServiceProcess}."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.typed_reactor = cast(Reactor, self.reactor)
        self.work_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.work_dir)
        self.log_path = os.path.join(self.work_dir, "logs", "sub", "A.log")

    def config(self, **changes: Any) -> ServiceConfig:
        values: dict[str, Any] = {
            "name": "A",
            "command": "true",
            "proxy_target_port": 9001,
            "proxy_target_host": "127.0.0.1",
            "args": "--port 9001 'a b'",
            "work_dir": self.work_dir,
            "log_file_path": self.log_path,
        }
        values.update(changes)
        return ServiceConfig(**values)

    def spawn(
        self,
        output_logs: bool = True,
        signal_group: Callable[[int, int], None] | None = None,
        **changes: Any,
    ) -> tuple[ServiceProcess, FakeProcess]:
        service = ServiceProcess(
            self.typed_reactor,
            self.config(**changes),
            output_logs,
            signal_group or self.reactor.signal_group,
        )
        service.spawn()
        self.assertEqual(len(self.reactor.processes), 1)
        return service, self.reactor.processes[0]

    def stop(self, service: ServiceProcess, use_kill_command: bool = True) -> Deferred[None]:
        return Deferred.fromCoroutine(service.stop(use_kill_command))

    def read_log(self) -> bytes:
        with open(self.log_path, "rb") as f:
            return f.read()


class ServiceProcessSpawnTests(ServiceProcessTestCase):
    """L{ServiceProcess.spawn}: how the command is started."""

    def test_spawn(self) -> None:
        """
        The command runs through setsid (a session and process group of its
        own), in WorkDir, with lmproxy's environment and its run's mark, and
        stdin from /dev/null.
        """
        service, process = self.spawn()
        self.assertEqual(process.executable, SETSID)
        self.assertEqual(process.args, [SETSID, TRUE, "--port", "9001", "a b"])
        self.assertEqual(process.command, [TRUE, "--port", "9001", "a b"])
        self.assertEqual(process.path, self.work_dir)
        self.assertEqual(process.env, {**os.environ, MARK_VARIABLE: service.strays.mark})
        assert process.child_fds is not None
        self.assertEqual(process.child_fds[1], "r")
        self.assertEqual(process.child_fds[2], "r")
        self.assertIsInstance(process.child_fds[0], int)
        stdin = process.child_fd_stats[0]
        devnull = os.stat(os.devnull)
        self.assertEqual(
            (stdin.st_dev, stdin.st_ino, stdin.st_rdev),
            (
                devnull.st_dev,
                devnull.st_ino,
                devnull.st_rdev,
            ),
        )
        self.assertEqual(service.pid, process.pid)
        self.assertEqual(service.group.pgid, process.pid)

    def test_spawn_closes_devnull(self) -> None:
        """The /dev/null descriptor opened for stdin is closed after the spawn."""
        _, process = self.spawn()
        assert process.child_fds is not None
        fd = process.child_fds[0]
        assert isinstance(fd, int)
        try:
            now = os.fstat(fd)
        except OSError:
            return
        # The number was reused by something else since.
        devnull = os.stat(os.devnull)
        self.assertNotEqual((now.st_dev, now.st_ino), (devnull.st_dev, devnull.st_ino))

    def test_no_file_descriptor_left(self) -> None:
        """
        No descriptor left for stdin: L{StartError} (the supervisor fails the
        start with it), nothing spawned, the log file closed again.
        """
        real_open = os.open

        def no_descriptor_for_devnull(path: str, flags: int, *args: Any) -> int:
            if path == os.devnull:
                raise OSError(errno.EMFILE, "Too many open files")
            return real_open(path, flags, *args)

        service = ServiceProcess(self.typed_reactor, self.config(), True, self.reactor.signal_group)
        self.patch(os, "open", no_descriptor_for_devnull)
        e = self.assertRaises(StartError, service.spawn)
        self.assertEqual(str(e), f"cannot open {os.devnull}: [Errno 24] Too many open files")
        self.assertEqual(self.reactor.processes, [])
        self.assertIsNone(service._log_file)

    def test_default_work_dir(self) -> None:
        """Without a WorkDir the process runs in lmproxy's working directory."""
        _, process = self.spawn(work_dir=None)
        self.assertIsNone(process.path)

    def test_bad_args(self) -> None:
        """Args with an unterminated quote: L{StartError}, nothing spawned."""
        service = ServiceProcess(
            self.typed_reactor, self.config(args="'open"), True, self.reactor.signal_group
        )
        self.assertRaises(StartError, service.spawn)
        self.assertEqual(self.reactor.processes, [])
        self.assertIsNone(service.pid)

    def test_command_not_found(self) -> None:
        """An unknown Command: L{StartError}, nothing spawned, no log file."""
        service = ServiceProcess(
            self.typed_reactor,
            self.config(command="no-such-lmproxy-command"),
            True,
            self.reactor.signal_group,
        )
        self.assertRaises(StartError, service.spawn)
        self.assertEqual(self.reactor.processes, [])
        self.assertFalse(os.path.exists(self.log_path))

    def test_work_dir_missing(self) -> None:
        """A WorkDir that is not a directory: L{StartError}."""
        service = ServiceProcess(
            self.typed_reactor,
            self.config(work_dir=os.path.join(self.work_dir, "nope")),
            True,
            self.reactor.signal_group,
        )
        e = self.assertRaises(StartError, service.spawn)
        self.assertIn("is not a directory", str(e))
        self.assertEqual(self.reactor.processes, [])

    def test_log_file_unwritable(self) -> None:
        """A log file path that cannot be opened: L{StartError}, nothing spawned."""
        os.makedirs(self.log_path)
        service = ServiceProcess(self.typed_reactor, self.config(), True, self.reactor.signal_group)
        e = self.assertRaises(StartError, service.spawn)
        self.assertIn("cannot open log file", str(e))
        self.assertEqual(self.reactor.processes, [])


class ServiceProcessOutputTests(ServiceProcessTestCase):
    """A service's output: raw into its log file, line by line into lmproxy's log."""

    def echoed(self, events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [
            (e["service"], e["stream"], e["line"])
            for e in events
            if e.get("log_format") == ECHO_FORMAT
        ]

    def test_log_file_appended_raw(self) -> None:
        """Existing log content is kept; output is appended byte for byte."""
        os.makedirs(os.path.dirname(self.log_path))
        with open(self.log_path, "wb") as f:
            f.write(b"earlier run\n")
        _, process = self.spawn()
        process.output(b"a\r\nb")
        process.output(b"\rc\n\xff", fd=2)
        process.exit(0)
        self.assertEqual(self.read_log(), b"earlier run\na\r\nb\rc\n\xff")

    def test_log_directory_created(self) -> None:
        """The log file's folder is created."""
        self.spawn()
        self.assertTrue(os.path.isfile(self.log_path))

    def test_echo_lines(self) -> None:
        """Each line becomes one event C{[name/stdout] line} or C{[name/stderr] line}."""
        with capturedLogs() as events:
            _, process = self.spawn()
            process.output(b"loading\r\nlistening on ")
            process.output(b"9001\n")
            process.output(b"warning 1\rwarning 2\n", fd=2)
        self.assertEqual(
            self.echoed(list(events)),
            [
                ("A", "stdout", "loading"),
                ("A", "stdout", "listening on 9001"),
                ("A", "stderr", "warning 1"),
                ("A", "stderr", "warning 2"),
            ],
        )
        self.assertEqual(
            next(formatEvent(e) for e in events if e.get("log_format") == ECHO_FORMAT),
            "[A/stdout] loading",
        )

    def test_last_partial_lines_flushed_at_end(self) -> None:
        """When the process ends, unterminated last lines are logged too."""
        with capturedLogs() as events:
            _, process = self.spawn()
            process.output(b"out")
            process.output(b"err", fd=2)
            self.assertEqual(self.echoed(list(events)), [])
            process.exit(1)
        self.assertEqual(
            self.echoed(list(events)), [("A", "stdout", "out"), ("A", "stderr", "err")]
        )

    def test_no_echo_without_output_logs(self) -> None:
        """With OutputServiceLogs false, nothing is echoed; the log file still gets it."""
        with capturedLogs() as events:
            _, process = self.spawn(output_logs=False)
            process.output(b"hello\n")
            process.output(b"tail")
            process.exit(0)
        self.assertEqual(self.echoed(list(events)), [])
        self.assertEqual(self.read_log(), b"hello\ntail")

    def test_on_output(self) -> None:
        """The on_output callback is called for every chunk of output."""
        calls: list[None] = []
        service = ServiceProcess(
            self.typed_reactor,
            self.config(),
            True,
            self.reactor.signal_group,
            on_output=lambda: calls.append(None),
        )
        service.spawn()
        process = self.reactor.processes[0]
        process.output(b"a")
        process.output(b"b", fd=2)
        self.assertEqual(len(calls), 2)
        process.exit(0)


class ServiceProcessExitTests(ServiceProcessTestCase):
    """How L{ServiceProcess} reports the end of its process."""

    def test_exit_during_spawn(self) -> None:
        """
        A process reaped before C{spawnProcess} returns keeps its pid (its
        group's id) and is known to have exited; the start log line has it.
        """
        self.reactor.exit_during_spawn["--port"] = 1
        with capturedLogs() as events:
            service, process = self.spawn()
        self.assertIsNone(process.transport.pid)
        self.assertEqual(service.pid, process.pid)
        self.successResultOf(service.when_exited())
        self.assertEqual(service.exit_description, "exited with status 1")
        started = [e for e in events if "argv" in e]
        self.assertEqual([e["pid"] for e in started], [process.pid])
        self.reactor.advance(0)  # the reactor reads the end of its pipes
        self.assertTrue(process.ended)
        # Its group is gone: stopping it signals nothing and ends at once.
        self.assertIsNone(self.successResultOf(self.stop(service)))
        self.assertEqual(self.reactor.signals, [])

    def test_when_exited(self) -> None:
        """C{when_exited} fires when the process exits, at once after that."""
        service, process = self.spawn()
        d = service.when_exited()
        self.assertNoResult(d)
        self.assertIsNone(service.exit_description)
        process.exit(3)
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(service.when_exited()))
        self.assertEqual(service.exit_description, "exited with status 3")
        self.assertEqual(service.group.exit_code, 3)

    def test_killed_by_signal(self) -> None:
        """A death by signal is described as such."""
        service, process = self.spawn()
        process.exit(None, signal.SIGSEGV)
        self.assertEqual(service.exit_description, f"was killed by signal {signal.SIGSEGV}")

    def test_cancel_when_exited(self) -> None:
        """A cancelled C{when_exited} is forgotten; others still fire."""
        service, process = self.spawn()
        cancelled = service.when_exited()
        kept = service.when_exited()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        process.exit(0)
        self.assertIsNone(self.successResultOf(kept))


class ServiceProcessStopTests(ServiceProcessTestCase):
    """The stop sequence: KillCommand, SIGTERM to the group, SIGKILL after 10 s."""

    def test_sigterm(self) -> None:
        """Without a KillCommand: SIGTERM to the group; done once it is gone."""
        service, process = self.spawn()
        d = self.stop(service)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertTrue(process.exited)

    def test_kill_command_first(self) -> None:
        """The KillCommand runs (in WorkDir, its own session) before any signal."""
        service, process = self.spawn(kill_command="docker stop model")
        d = self.stop(service)
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.processes), 2)
        kill = self.reactor.processes[1]
        self.assertEqual(kill.args, [SETSID, "/bin/sh", "-c", "docker stop model"])
        self.assertEqual(kill.path, self.work_dir)
        self.assertEqual(self.reactor.signals, [])
        kill.exit(0)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertIsNone(self.successResultOf(d))

    def test_kill_command_skipped(self) -> None:
        """C{use_kill_command=False} goes straight to SIGTERM."""
        service, process = self.spawn(kill_command="docker stop model")
        d = self.stop(service, use_kill_command=False)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])

    def test_kill_command_fails(self) -> None:
        """A failing KillCommand is logged; the group is signalled anyway."""
        service, process = self.spawn(kill_command="false")
        with capturedLogs() as events:
            d = self.stop(service)
            self.reactor.processes[1].output(b"no such container\n", fd=2)
            self.reactor.processes[1].exit(1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        warnings = [formatEvent(e) for e in events if "KillCommand failed" in e["log_format"]]
        self.assertEqual(
            warnings, ["A: KillCommand failed (exited with status 1): no such container"]
        )

    def test_kill_command_cannot_run(self) -> None:
        """A KillCommand that cannot even be spawned is logged; the group is signalled anyway."""
        service, process = self.spawn(kill_command="docker stop model")
        self.patch(self.reactor, "spawnProcess", no_process_left)
        with capturedLogs() as events:
            d = self.stop(service)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        warnings = [formatEvent(e) for e in events if "KillCommand failed" in e["log_format"]]
        self.assertEqual(
            warnings,
            ["A: KillCommand failed (could not be run: [Errno 11] no process left)"],
        )

    def test_kill_command_exits_during_spawn(self) -> None:
        """
        A KillCommand reaped before its spawn returns (C{docker stop} of a
        container that is gone) ends like any other: the group is signalled
        next, and what it printed is a debug line.
        """
        service, process = self.spawn(kill_command="docker stop model")
        self.reactor.exit_during_spawn["docker stop model"] = QuickExit(0, b"model\n")
        set_log_level("Debug")
        self.addCleanup(set_log_level, "Normal")
        with capturedLogs() as events:
            d = self.stop(service)
            self.reactor.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertTrue(process.exited)
        said = [
            (e["log_level"], formatEvent(e)) for e in events if "KillCommand" in e["log_format"]
        ]
        self.assertEqual(said, [(LogLevel.debug, "A: KillCommand said: model")])

    def test_kill_command_crashes(self) -> None:
        """
        Should running the KillCommand raise (a bug), the failure is logged and
        the stop goes on: the group is signalled, never left running.
        """

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug")

        self.patch(process_module, "run_shell", broken)
        service, process = self.spawn(kill_command="docker stop model")
        d = self.stop(service)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_kill_command_time_limit(self) -> None:
        """A KillCommand that hangs is killed (its group) after its time limit."""
        service, process = self.spawn(kill_command="sleep 1000")
        d = self.stop(service)
        kill = self.reactor.processes[1]
        self.reactor.advance(KILL_COMMAND_TIMEOUT_SECONDS - 0.1)
        self.assertEqual(self.reactor.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(
            self.reactor.signals,
            [(kill.pid, signal.SIGKILL), (process.pid, signal.SIGTERM)],
        )
        self.assertTrue(kill.exited)
        self.assertIsNone(self.successResultOf(d))

    def test_sigkill_after_grace(self) -> None:
        """A group that survives SIGTERM gets SIGKILL after 10 s, not before."""
        self.assertEqual(STOP_GRACE_SECONDS, 10.0)
        self.reactor.on_signal = ignore_sigterm
        service, process = self.spawn()
        d = self.stop(service)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.reactor.advance(STOP_GRACE_SECONDS - 0.1)
        self.assertNoResult(d)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.reactor.advance(0.1)
        self.assertEqual(
            self.reactor.signals,
            [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)],
        )
        self.assertIsNone(self.successResultOf(d))

    def test_group_outlives_leader(self) -> None:
        """
        When the leader dies of SIGTERM but its group lives on, the stop waits
        for the group and SIGKILLs it after the grace period.
        """
        self.reactor.on_signal = leader_dies_group_lives
        service, process = self.spawn()
        d = self.stop(service)
        self.assertTrue(process.exited)
        self.assertTrue(service.group.alive())
        self.reactor.advance(STOP_GRACE_SECONDS - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        self.assertEqual(
            self.reactor.signals,
            [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)],
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(service.group.alive())

    def test_group_ends_during_grace(self) -> None:
        """Group members that exit during the grace period get no SIGKILL."""
        self.reactor.on_signal = leader_dies_group_lives
        service, process = self.spawn()
        d = self.stop(service)
        self.reactor.advance(1)
        process.group_alive = False
        self.reactor.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.reactor.advance(STOP_GRACE_SECONDS)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])

    def test_no_signal_after_group_gone(self) -> None:
        """
        Once the group is known to be gone (the reaped leader's group cannot be
        found), it is never signalled again: its id may belong to someone else.
        """
        signaller = RecordingSignaller(self.reactor.signal_group)
        service, process = self.spawn(signal_group=signaller)
        process.exit(0)
        d = self.stop(service)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(signaller.attempts, [(process.pid, signal.SIGTERM)])
        service.kill()
        self.assertFalse(service.group.alive())
        self.assertIsNone(self.successResultOf(self.stop(service)))
        self.assertEqual(signaller.attempts, [(process.pid, signal.SIGTERM)])

    def test_kill(self) -> None:
        """C{kill} sends SIGKILL to the group at once."""
        service, process = self.spawn()
        service.kill()
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGKILL)])
        self.assertTrue(process.exited)

    def test_kill_during_kill_command(self) -> None:
        """
        C{kill} while the KillCommand runs kills it too: the stop goes on at
        once instead of waiting for the KillCommand's time limit.
        """
        service, process = self.spawn(kill_command="docker stop model")
        d = self.stop(service)
        kill = self.reactor.processes[1]
        service.kill()
        self.assertEqual(
            self.reactor.signals,
            [(process.pid, signal.SIGKILL), (kill.pid, signal.SIGKILL)],
        )
        self.assertTrue(kill.exited)
        self.assertIsNone(self.successResultOf(d))

    def test_kill_during_stop(self) -> None:
        """A SIGKILL during the grace period ends the stop at once."""
        self.reactor.on_signal = ignore_sigterm
        service, process = self.spawn()
        d = self.stop(service)
        self.reactor.advance(1)
        service.kill()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            self.reactor.signals,
            [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)],
        )


class BeforeSetsidTests(ServiceProcessTestCase):
    """
    A stop in the moment between the spawn and the leader's C{setsid}: its
    group does not exist yet, so the leader itself is signalled.
    """

    def test_stop(self) -> None:
        """SIGTERM reaches the leader; the stop ends once it is gone, not after a grace."""
        service, process = self.spawn()
        process.in_own_group = False
        d = self.stop(service)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.reactor.leader_signals, [(process.pid, signal.SIGTERM)])
        self.assertTrue(process.exited)

    def test_signal_missed_by_leader(self) -> None:
        """
        A leader that missed the signal (a forked child before its exec) gets
        it through its group as soon as the group exists.
        """

        def missed_before_setsid(process: FakeProcess, signum: int) -> None:
            if process.in_own_group:
                process.reactor.on_signal = self.default_on_signal
                self.default_on_signal(process, signum)

        service, process = self.spawn()
        self.default_on_signal = self.reactor.on_signal
        self.reactor.on_signal = missed_before_setsid
        process.in_own_group = False
        d = self.stop(service)
        self.reactor.advance(GROUP_POLL_SECONDS)
        self.assertNoResult(d)
        process.in_own_group = True  # setsid
        self.reactor.advance(GROUP_POLL_SECONDS)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(len(self.reactor.leader_signals), 2)
        self.assertTrue(process.exited)

    def test_kill(self) -> None:
        """SIGKILL too: it reaches the leader (it cannot be missed)."""
        service, process = self.spawn()
        process.in_own_group = False
        service.kill()
        self.assertEqual(self.reactor.leader_signals, [(process.pid, signal.SIGKILL)])
        self.assertTrue(process.exited)

    def test_shell_command_cancelled(self) -> None:
        """A shell command cancelled before its setsid is killed all the same."""
        d = Deferred.fromCoroutine(
            run_shell(self.typed_reactor, "sleep 100", 5.0, signal_group=self.reactor.signal_group)
        )
        [process] = self.reactor.processes
        process.in_own_group = False
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.leader_signals, [(process.pid, signal.SIGKILL)])
        self.assertTrue(process.exited)


class ProcessGroupTests(SynchronousTestCase):
    """L{ProcessGroup} knows whether its group is still its own to signal."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.typed_reactor = cast(Reactor, self.reactor)
        self.attempts: list[tuple[int, int]] = []
        self.error: type[OSError] | None = None

    def signaller(self, pgid: int, signum: int) -> None:
        self.attempts.append((pgid, signum))
        if self.error is not None:
            raise self.error()

    def test_not_started(self) -> None:
        """A group that was never started is not alive and is never signalled."""
        group = ProcessGroup(self.typed_reactor, self.signaller)
        self.assertFalse(group.alive())
        self.assertFalse(group.signal(signal.SIGTERM))
        self.assertEqual(self.attempts, [])

    def test_alive_before_leader_reaped(self) -> None:
        """While the leader is not reaped, the group is ours without asking."""
        group = ProcessGroup(self.typed_reactor, self.signaller)
        group.started(4242)
        self.assertTrue(group.alive())
        self.assertEqual(self.attempts, [])
        self.assertTrue(group.signal(signal.SIGTERM))
        self.assertEqual(self.attempts, [(4242, signal.SIGTERM)])

    def test_lookup_error_before_reap(self) -> None:
        """Not found while the leader is unreaped: not gone (the leader holds the id)."""
        group = ProcessGroup(self.typed_reactor, self.signaller)
        group.started(4242)
        self.error = ProcessLookupError
        self.assertTrue(group.signal(signal.SIGTERM))
        self.assertTrue(group.alive())

    def test_permission_error(self) -> None:
        """EPERM means the id is someone else's now: gone, never signalled again."""
        group = ProcessGroup(self.typed_reactor, self.signaller)
        group.started(4242)
        self.error = PermissionError
        self.assertFalse(group.signal(signal.SIGTERM))
        self.assertFalse(group.alive())
        self.assertFalse(group.signal(signal.SIGKILL))
        self.assertEqual(self.attempts, [(4242, signal.SIGTERM)])

    def test_wait_gone_times_out(self) -> None:
        """C{wait_gone} gives up after its time and says so."""
        group = ProcessGroup(self.typed_reactor, self.signaller)
        group.started(4242)
        d = Deferred.fromCoroutine(group.wait_gone(3))
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertIs(self.successResultOf(d), False)
