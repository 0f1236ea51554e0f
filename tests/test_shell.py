"""
Tests for L{lmproxy.core.shell}: short shell commands in a session of their
own, with a time limit, their stdout and stderr apart, on a
L{MemoryProcessReactor} (no real processes, no real time).
"""

from __future__ import annotations

import errno
import os
import signal
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.reaper import ServiceRun
from lmproxy.core.shell import (
    MAX_CAPTURE_BYTES,
    PIPE_DRAIN_SECONDS,
    SETSID,
    Reactor,
    ShellResult,
    one_line,
    run_shell,
)
from lmproxy.testing import MemoryProcessReactor, QuickExit


class RecordingRegistry:
    """A L{lmproxy.core.groups.GroupRegistry} that records what it is told."""

    def __init__(self) -> None:
        self.groups: dict[int, ServiceRun | None] = {}
        self.told: list[tuple[str, int]] = []

    def add(self, pgid: int, run: ServiceRun | None = None) -> None:
        self.groups[pgid] = run
        self.told.append(("add", pgid))

    def discard(self, pgid: int) -> None:
        self.groups.pop(pgid, None)
        self.told.append(("discard", pgid))


def no_process_left(*args: object, **kwargs: object) -> None:
    """A C{spawnProcess} that fails as fork does when no process may be created."""
    raise BlockingIOError(errno.EAGAIN, "no process left")


class ShellTestCase(SynchronousTestCase):
    """Runs commands with L{run_shell} on a fake reactor, with a recording registry."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.typed_reactor = cast(Reactor, self.reactor)
        self.registry = RecordingRegistry()

    def shell(
        self, command: str, timeout: float = 5.0, cwd: str | None = None
    ) -> Deferred[ShellResult]:
        return Deferred.fromCoroutine(
            run_shell(
                self.typed_reactor,
                command,
                timeout,
                cwd=cwd,
                signal_group=self.reactor.signal_group,
                registry=self.registry,
            )
        )


class RunShellTests(ShellTestCase):
    """L{run_shell}: short shell commands in their own session, with a time limit."""

    def test_spawn(self) -> None:
        """C{sh -c command} through setsid, with the environment, cwd, stdin closed."""
        d = self.shell("nvidia-smi | tail -1", cwd="/tmp")
        self.assertNoResult(d)
        [process] = self.reactor.processes
        self.assertEqual(process.args, [SETSID, "/bin/sh", "-c", "nvidia-smi | tail -1"])
        self.assertEqual(process.path, "/tmp")
        self.assertEqual(process.env, dict(os.environ))
        self.assertTrue(process.transport.stdin_closed)
        process.exit(0)

    def test_stdout_and_stderr_apart(self) -> None:
        """Stdout and stderr are captured apart; the exit status is reported."""
        d = self.shell("check")
        [process] = self.reactor.processes
        process.output(b"12")
        process.output(b"warn\n", fd=2)
        process.output(b"34\n")
        process.exit(3)
        self.assertEqual(self.successResultOf(d), ShellResult(3, "1234\n", "warn\n", _status(3)))

    def test_success(self) -> None:
        """Exit status 0."""
        d = self.shell("true")
        self.reactor.processes[0].exit(0)
        self.assertEqual(self.successResultOf(d), ShellResult(0, "", "", _status(0)))

    def test_killed_by_signal(self) -> None:
        """A command killed by a signal has no exit code; C{how} names the signal."""
        d = self.shell("x")
        self.reactor.processes[0].exit(None, signal.SIGKILL)
        self.assertEqual(
            self.successResultOf(d),
            ShellResult(None, "", "", f"was killed by signal {signal.SIGKILL}"),
        )

    def test_output_capped(self) -> None:
        """At most MAX_CAPTURE_BYTES of each of stdout and stderr are kept."""
        d = self.shell("yes")
        process = self.reactor.processes[0]
        for fd in (1, 2):
            process.output(b"y" * (MAX_CAPTURE_BYTES - 1), fd)
            process.output(b"zz", fd)
            process.output(b"more", fd)
        process.exit(0)
        result = self.successResultOf(d)
        self.assertEqual(result.stdout, "y" * (MAX_CAPTURE_BYTES - 1) + "z")
        self.assertEqual(result.stderr, "y" * (MAX_CAPTURE_BYTES - 1) + "z")

    def test_output_after_exit_is_read(self) -> None:
        """
        The process is reaped before the reactor has read all of its output:
        the result waits for the pipes to close, and has all of it.
        """
        d = self.shell("echo 7")
        [process] = self.reactor.processes
        process.exit(0, pipes_open=True)
        self.assertNoResult(d)
        process.output(b"7\n")
        process.output(b"late warning\n", fd=2)
        process.close_pipes()
        self.assertEqual(
            self.successResultOf(d), ShellResult(0, "7\n", "late warning\n", _status(0))
        )

    def test_pipes_held_open(self) -> None:
        """
        A child left in the background holds the pipes open: the result comes
        PIPE_DRAIN_SECONDS after the exit, with what was read by then, and the
        group is not killed.
        """
        d = self.shell("daemon &")
        [process] = self.reactor.processes
        process.output(b"started\n")
        process.exit(0, group_too=False, pipes_open=True)
        self.reactor.advance(PIPE_DRAIN_SECONDS - 0.01)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        self.assertEqual(self.successResultOf(d), ShellResult(0, "started\n", "", _status(0)))
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        process.close_pipes()

    def test_exit_during_spawn(self) -> None:
        """
        A command reaped before C{spawnProcess} returns (its transport's pid
        is gone by then) still reports its status, and its output read after.
        """
        self.reactor.exit_during_spawn["fast"] = QuickExit(3, b"7\n", b"oops\n")
        d = self.shell("fast")
        [process] = self.reactor.processes
        self.assertIsNone(process.transport.pid)
        self.assertTrue(process.exited)
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d), ShellResult(3, "7\n", "oops\n", _status(3)))

    def test_exit_during_spawn_status_only(self) -> None:
        """An exit status alone in C{exit_during_spawn}: nothing printed."""
        self.reactor.exit_during_spawn["fast"] = 0
        d = self.shell("fast")
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d), ShellResult(0, "", "", _status(0)))

    def test_timeout_kills_group(self) -> None:
        """A command that outlives its time limit has its whole group killed."""
        d = self.shell("sleep 100", timeout=5)
        [process] = self.reactor.processes
        process.output(b"partial")
        process.output(b"err", fd=2)
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.assertEqual(self.reactor.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGKILL)])
        self.assertEqual(
            self.successResultOf(d),
            ShellResult(None, "partial", "err", "timed out after 5 s", True),
        )

    def test_cannot_spawn(self) -> None:
        """A command that cannot be spawned ends like a failed one, saying why."""
        self.patch(self.reactor, "spawnProcess", no_process_left)
        self.assertEqual(
            self.successResultOf(self.shell("check")),
            ShellResult(None, "", "", "could not be run: [Errno 11] no process left"),
        )

    def test_cancel_kills_group(self) -> None:
        """Cancelling the run kills the command's group and fails with CancelledError."""
        d = self.shell("sleep 100")
        [process] = self.reactor.processes
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGKILL)])
        self.assertTrue(process.exited)
        self.reactor.advance(10)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGKILL)])

    def test_cancel_while_pipes_drain(self) -> None:
        """Cancelled after the exit, while its pipes are still read: the group is killed."""
        d = self.shell("daemon &")
        [process] = self.reactor.processes
        process.exit(0, group_too=False, pipes_open=True)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGKILL)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ShellRegistryTests(ShellTestCase):
    """
    A command's group is registered with the watchdog while it may have
    members (should lmproxy die meanwhile, the watchdog ends it).
    """

    def test_registered_while_it_runs(self) -> None:
        d = self.shell("sleep 100")
        [process] = self.reactor.processes
        self.assertEqual(self.registry.told, [("add", process.pid)])
        self.assertIsNone(self.registry.groups[process.pid])  # a helper's, not a service's
        process.exit(0)
        self.successResultOf(d)
        self.assertEqual(self.registry.told, [("add", process.pid), ("discard", process.pid)])

    def test_exit_during_spawn(self) -> None:
        """Registered (and discarded) even when it exits before C{spawnProcess} returns."""
        self.reactor.exit_during_spawn["fast"] = 0
        d = self.shell("fast")
        self.reactor.advance(0)
        self.successResultOf(d)
        [process] = self.reactor.processes
        self.assertEqual(self.registry.told, [("add", process.pid), ("discard", process.pid)])

    def test_background_child_keeps_it_registered(self) -> None:
        """Its group outlives it (a child in the background): still registered."""
        d = self.shell("daemon &")
        [process] = self.reactor.processes
        process.exit(0, group_too=False)
        self.successResultOf(d)
        self.assertEqual(self.registry.groups, {process.pid: None})

    def test_timeout_discards_after_sigkill(self) -> None:
        d = self.shell("sleep 100", timeout=5)
        [_process] = self.reactor.processes
        self.reactor.advance(5)
        self.successResultOf(d)
        self.assertEqual(self.registry.groups, {})

    def test_cancel_discards_after_sigkill(self) -> None:
        d = self.shell("sleep 100")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.registry.groups, {})


class OneLineTests(SynchronousTestCase):
    """L{one_line}: text fit for one log line."""

    def test_stripped_and_escaped(self) -> None:
        """Line ends and control characters are escaped; surrounding space is gone."""
        self.assertEqual(one_line("  a\nb\r\x1b[31m\t "), "a\\nb\\r\\x1b[31m")

    def test_truncated(self) -> None:
        """At most C{limit} characters of the text, then an ellipsis."""
        self.assertEqual(one_line("x" * 10, limit=4), "xxxx...")
        self.assertEqual(one_line("x" * 4, limit=4), "xxxx")

    def test_quotes_kept(self) -> None:
        """Quotes are the text's own, not repr's."""
        self.assertEqual(one_line('it\'s "7"'), 'it\\\'s "7"')


def _status(code: int) -> str:
    return f"exited with status {code}"
