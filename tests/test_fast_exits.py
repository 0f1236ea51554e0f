"""
Every kind of spawn (a service, its HealthcheckCommand, its KillCommand, a
CheckCommand) whose process is gone before C{spawnProcess} returns, through
the supervisor on a L{MemoryProcessReactor}: each is a process like any other,
and no transition breaks.  (Twisted reaps such a process inside
C{spawnProcess}; C{tests/test_fake_processes.py} checks that the fake does as
the real reactor does.  The real thing, 100 times over, is in
C{tests/test_integration_faults.py}.)
"""

from __future__ import annotations

import signal

from twisted.logger import capturedLogs

from lmproxy.config import ResourceConfig
from lmproxy.core.backoff import BACKOFF_MAX_SECONDS
from lmproxy.core.process import ServiceProcess
from lmproxy.interfaces import ServiceState
from lmproxy.testing import QuickExit
from tests.test_supervisor import SupervisorTestCase


class ServiceExitsDuringSpawnTests(SupervisorTestCase):
    """A service's Command that exits at once (C{"Command": "true"})."""

    def test_start_fails_every_time(self) -> None:
        """
        Each start fails at once, its waiters told why; the service is stopped
        with no pid, its resources free, and the next client starts it again.
        """
        self.reactor.exit_during_spawn["A"] = 0
        self.supervise([self.service("A", {"VRAM": 6})], [ResourceConfig("VRAM", 10)])
        for attempt in range(1, 4):
            d = self.acquire("A")
            self.reactor.advance(0)  # the reactor reads its pipes to the end
            self.unavailable(
                d, "service 'A' failed to start: process exited with status 0 while starting"
            )
            self.assertEqual(self.state("A"), ServiceState.STOPPED)
            self.assertIsNone(self.status("A").pid)
            self.assertEqual(self.free("VRAM"), 10)
            self.assertEqual(self.status("A").failed_starts, attempt)
            self.reactor.advance(BACKOFF_MAX_SECONDS)  # past its back-off
        self.assertEqual(len(self.spawned("A")), 3)
        self.assertEqual(self.reactor.signals, [])
        self.assertIsNone(self.successResultOf(self.supervisor.stop("A", False)))
        self.assertIsNone(self.successResultOf(self.supervisor.stopService()))

    def test_not_considered_stopped(self) -> None:
        """
        Without ConsiderStoppedOnProcessExit (a launcher such as C{docker run
        -d}), the exit is ignored: the start goes on, and a stop ends at once
        (its group is gone: nothing to signal).
        """
        self.reactor.exit_during_spawn["A"] = 0
        self.supervise(
            [
                self.service(
                    "A", kill_command="docker stop a", consider_stopped_on_process_exit=False
                )
            ]
        )
        d = self.acquire("A")
        self.reactor.advance(0)
        self.ready("A")
        self.successResultOf(d).release()
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        stopped = self.supervisor.stop("A", False)
        self.shell("docker stop a").exit(0)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.reactor.signals, [])


class KillCommandExitsDuringSpawnTests(SupervisorTestCase):
    """A KillCommand that exits at once (C{"KillCommand": "true"})."""

    def test_stop_goes_on(self) -> None:
        """The group is signalled once the KillCommand has ended; the service stops."""
        self.reactor.exit_during_spawn["stop-A"] = QuickExit(0, b"", b"no such container\n")
        self.supervise([self.service("A", kill_command="stop-A")])
        self.run_idle("A")
        process = self.proc("A")
        for _ in range(3):
            stopped = self.supervisor.stop("A", False)
            self.assertEqual(self.state("A"), ServiceState.STOPPING)
            self.reactor.advance(0)
            self.assertIsNone(self.successResultOf(stopped))
            self.assertEqual(self.state("A"), ServiceState.STOPPED)
            self.assertTrue(process.exited)
            self.assertEqual(self.reactor.signals[-1], (process.pid, signal.SIGTERM))
            self.run_idle("A")
            process = self.proc("A")
        self.assertEqual(len(self.shells("stop-A")), 3)


class CheckCommandExitsDuringSpawnTests(SupervisorTestCase):
    """A CheckCommand that exits at once (C{echo 7}, C{true})."""

    def test_value_read(self) -> None:
        """What it printed is its value, read at the reactor's next turn."""
        self.reactor.exit_during_spawn[self.CHECK] = QuickExit(0, b"7\n", b"warning\n")
        self.supervise(
            [self.service("A", {"VRAM": 5})],
            [ResourceConfig("VRAM", None, check_command=self.CHECK)],
        )
        self.assertEqual(self.resource("VRAM").measured, 7)
        d = self.acquire("A")
        self.reactor.advance(0)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.ready("A")
        self.successResultOf(d)

    def test_no_value(self) -> None:
        """Printing nothing: no value, one warning, no traceback; the client waits."""
        self.reactor.exit_during_spawn[self.CHECK] = 0
        with capturedLogs() as events:
            self.supervise(
                [self.service("A", {"VRAM": 5})],
                [ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=1.0)],
            )
            d = self.acquire("A")
            self.reactor.advance(0)
        self.assertEqual(self.resource("VRAM").measured, None)
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertTrue(any("gave no value" in e["log_format"] for e in events))
        self.reactor.exit_during_spawn[self.CHECK] = QuickExit(0, b"5\n")
        self.reactor.advance(1.0)  # measured again after the interval
        self.reactor.advance(0)
        self.ready("A")
        self.successResultOf(d)


class SpawnCrashTests(SupervisorTestCase):
    """A bug while spawning fails the start; it never leaves the service starting."""

    def test_crash_after_spawn(self) -> None:
        original = ServiceProcess.spawn

        def spawn_then_crash(process: ServiceProcess) -> None:
            original(process)
            raise RuntimeError("a bug")

        self.patch(ServiceProcess, "spawn", spawn_then_crash)
        self.supervise([self.service("A")])
        d = self.acquire("A")
        self.unavailable(d, "service 'A' failed to start: spawning crashed (see lmproxy's log)")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [process] = self.spawned("A")
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
