"""
Tests for L{lmproxy.core.supervisor}: the life of a service (BEHAVIOUR.md section 2)
and every race it names, on a L{MemoryProcessReactor}: no real time, sockets
or processes.  The test ends each fake process and answers each readiness
probe by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any, cast

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import DNSLookupError
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.core.backoff import BACKOFF_FIRST_SECONDS
from lmproxy.core.groups import GROUP_POLL_SECONDS, STOP_GRACE_SECONDS
from lmproxy.core.readiness import PROBE_FIRST_DELAY, PROBE_MAX_DELAY, ReadinessReactor
from lmproxy.core.shell import PIPE_DRAIN_SECONDS, SETSID
from lmproxy.core.supervisor import Supervisor
from lmproxy.interfaces import (
    IBackends,
    ILease,
    IStatusObserver,
    ResourceStatus,
    ServiceBusy,
    ServiceState,
    ServiceStatus,
    ServiceUnavailable,
    Shortage,
    Snapshot,
    StartFailure,
    StatusChange,
    UnknownService,
    WaitingFor,
)
from lmproxy.testing import FakeProcess, MemoryProcessReactor

TRUE = shutil.which("true")
assert TRUE is not None
HOST = "127.0.0.1"
T0 = 1000.0  # the fake clock's time when each test begins


def ignore_sigterm(process: FakeProcess, signum: int) -> None:
    """An C{on_signal}: SIGTERM is ignored, SIGKILL ends the process and its group."""
    if signum == signal.SIGKILL:
        if not process.exited:
            process.exit(None, signum)
        process.group_alive = False


@implementer(IStatusObserver)
class RecordingObserver:
    """Records what an L{IStatusObserver} is told."""

    def __init__(self, backends: IBackends) -> None:
        self.backends = backends
        self.snapshots: list[Snapshot] = []
        self.starts: list[tuple[str, float, bool]] = []
        self.evicted: list[str] = []

    def status_changed(self, change: StatusChange) -> None:
        self.snapshots.append(self.backends.snapshot())

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        self.starts.append((service, seconds, succeeded))

    def service_evicted(self, service: str) -> None:
        self.evicted.append(service)


class SupervisorTestCase(SynchronousTestCase):
    """Builds a supervisor on a fake reactor and drives its processes."""

    CHECK = "nvidia-free"  # the CheckCommand of measured resources

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.reactor.advance(T0)
        self.default_on_signal = self.reactor.on_signal
        self.log_dir = os.path.abspath(self.mktemp())
        self.ports: dict[str, int] = {}
        self.acquired: list[Deferred[ILease]] = []

    def service(
        self, name: str, resources: dict[str, int] | None = None, **changes: Any
    ) -> ServiceConfig:
        """A service running C{true NAME}, its target port 9001, 9002, ..."""
        port = 9001 + len(self.ports)
        self.ports[name] = port
        values: dict[str, Any] = {
            "name": name,
            "command": "true",
            "args": name,
            "proxy_target_port": port,
            "proxy_target_host": HOST,
            "log_file_path": os.path.join(self.log_dir, f"{name}.log"),
            "idle_timeout": 120.0,
            "resource_requirements": resources or {},
        }
        values.update(changes)
        return ServiceConfig(**values)

    def supervise(
        self,
        services: list[ServiceConfig],
        resources: list[ResourceConfig] | None = None,
        **changes: Any,
    ) -> Supervisor:
        config = Config(services=tuple(services), resources=tuple(resources or ()), **changes)
        self.supervisor = Supervisor(
            config, cast(ReadinessReactor, self.reactor), self.reactor.signal_group
        )
        self.observer = RecordingObserver(self.supervisor)
        self.supervisor.subscribe(self.observer)
        self.supervisor.startService()
        self.reactor.advance(0)
        self.addCleanup(self.shut_down)
        return self.supervisor

    def shut_down(self) -> None:
        """End every fake process and the supervisor, closing their log files."""
        self.reactor.on_signal = self.default_on_signal
        if self.supervisor.running:
            d = self.supervisor.stopService()
            for _ in range(100):
                if d.called:
                    break
                for process in self.reactor.live_processes():
                    process.exit(0)
                self.reactor.advance(1)
            self.successResultOf(d)
        for process in self.reactor.live_processes():
            process.exit(0)
        # Clients still waiting when the test ended were failed by the shutdown.
        for waiter in self.acquired:
            waiter.addErrback(self._shut_out)

    @staticmethod
    def _shut_out(failure: Failure) -> None:
        failure.trap(ServiceUnavailable)
        if "shutting down" not in str(failure.value):
            failure.raiseException()

    # -- processes --------------------------------------------------------

    def spawned(self, name: str) -> list[FakeProcess]:
        """Every process spawned for service C{name}, oldest first."""
        return [p for p in self.reactor.processes if p.command == [TRUE, name]]

    def proc(self, name: str) -> FakeProcess:
        """The one live process of service C{name}."""
        [process] = [p for p in self.spawned(name) if not p.exited]
        return process

    def measure(self, value: bytes) -> None:
        """The one running C{CHECK} prints C{value} and exits 0."""
        check = self.shell(self.CHECK)
        check.output(value)
        check.exit(0)

    def shells(self, command: str) -> list[FakeProcess]:
        """Every C{sh -c command} run, oldest first."""
        return [p for p in self.reactor.processes if p.command == ["/bin/sh", "-c", command]]

    def shell(self, command: str) -> FakeProcess:
        """The one live C{sh -c command} run."""
        [process] = [p for p in self.shells(command) if not p.exited]
        return process

    def ready(self, name: str) -> None:
        """Service C{name}'s port accepts the pending readiness probe."""
        self.reactor.accept_connection(self.ports[name])

    def probes(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, _ in self.reactor.pending_probes()]

    # -- clients ----------------------------------------------------------

    def acquire(self, name: str) -> Deferred[ILease]:
        """C{supervisor.acquire}, remembered so that shutting down may fail it."""
        d = self.supervisor.acquire(name)
        self.acquired.append(d)
        return d

    def lease(self, name: str) -> ILease:
        """Acquire a lease of C{name}, starting it if needed."""
        d = self.acquire(name)
        if not d.called:
            self.ready(name)
        return self.successResultOf(d)

    def run_idle(self, name: str) -> None:
        """Start C{name} and leave it running without a connection."""
        self.lease(name).release()

    def unavailable(self, d: Deferred[Any], message: str) -> None:
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(str(failure.value), message)

    # -- status -----------------------------------------------------------

    def status(self, name: str) -> ServiceStatus:
        [status] = [s for s in self.supervisor.snapshot().services if s.name == name]
        return status

    def state(self, name: str) -> str:
        return self.status(name).status

    def resource(self, name: str) -> ResourceStatus:
        [status] = [r for r in self.supervisor.snapshot().resources if r.name == name]
        return status

    def free(self, name: str) -> int | None:
        return self.resource(name).free

    def two_that_do_not_fit(self) -> None:
        """Supervise A and B, which need 6 VRAM each of 10."""
        self.supervise(
            [self.service("A", {"VRAM": 6}), self.service("B", {"VRAM": 6})],
            [ResourceConfig("VRAM", 10)],
        )

    def abandon(self, name: str) -> None:
        """A client of C{name} comes, which starts it, and leaves."""
        d = self.acquire(name)
        d.cancel()
        self.failureResultOf(d, CancelledError)


class StartTests(SupervisorTestCase):
    """A service starts on its first client, once, and serves everyone."""

    def test_start_on_first_acquire(self) -> None:
        """
        The first client starts the service (its command through setsid) and
        gets a lease on the target address once the port accepts.
        """
        self.supervise([self.service("A", {"VRAM": 6})], [ResourceConfig("VRAM", 10)])
        self.assertTrue(verifyObject(IBackends, self.supervisor))
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.reactor.processes, [])
        d = self.acquire("A")
        self.assertNoResult(d)
        process = self.proc("A")
        self.assertEqual(process.args, [SETSID, TRUE, "A"])
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(self.status("A").waiting_connections, 1)
        self.assertEqual(self.status("A").pid, process.pid)
        self.assertEqual(self.probes(), [(HOST, 9001)])
        self.reactor.advance(2)
        self.ready("A")
        lease = self.successResultOf(d)
        self.assertTrue(verifyObject(ILease, lease))
        self.assertEqual((lease.host, lease.port, lease.service), (HOST, 9001, "A"))
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.status("A").waiting_connections, 0)
        self.assertEqual(self.status("A").proxied_connections, 1)
        self.assertEqual(self.status("A").starts, 1)
        self.assertEqual(self.probes(), [])
        self.assertEqual(self.reactor.signals, [])

    def test_running_service_served_at_once(self) -> None:
        """A running service gives a lease at once, without a probe or a process."""
        self.supervise([self.service("A")])
        first = self.lease("A")
        d = self.acquire("A")
        second = self.successResultOf(d)
        self.assertIsNot(first, second)
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.probes(), [])
        self.assertEqual(self.status("A").proxied_connections, 2)

    def test_clients_share_one_start(self) -> None:
        """Every client arriving while the service starts shares the one process."""
        self.supervise([self.service("A")])
        ds = [self.acquire("A") for _ in range(3)]
        self.reactor.advance(1)
        ds.append(self.acquire("A"))
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.status("A").waiting_connections, 4)
        self.assertEqual(len(self.probes()), 1)
        self.ready("A")
        leases = [self.successResultOf(d) for d in ds]
        self.assertEqual(len({id(lease) for lease in leases}), 4)
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.status("A").proxied_connections, 4)
        self.assertEqual(self.status("A").starts, 1)

    def test_probe_backoff(self) -> None:
        """A refused probe is retried after a short delay that doubles up to a cap."""
        self.supervise([self.service("A")])
        d = self.acquire("A")
        delay = PROBE_FIRST_DELAY
        for _ in range(8):
            self.assertEqual(self.reactor.refuse_connections(), 1)
            self.reactor.advance(delay * 0.9)
            self.assertEqual(self.probes(), [])
            self.reactor.advance(delay * 0.2)
            self.assertEqual(self.probes(), [(HOST, 9001)])
            delay = min(delay * 2, PROBE_MAX_DELAY)
        self.assertEqual(delay, PROBE_MAX_DELAY)
        self.ready("A")
        self.successResultOf(d)

    def test_output_wakes_probe(self) -> None:
        """Output from the service probes its port again at once."""
        self.supervise([self.service("A")])
        d = self.acquire("A")
        self.reactor.refuse_connections()
        self.assertEqual(self.probes(), [])
        self.proc("A").output(b"listening on 9001\n")
        self.assertEqual(self.probes(), [(HOST, 9001)])
        self.ready("A")
        self.successResultOf(d)

    def test_unknown_service(self) -> None:
        """Unknown names fail with L{UnknownService}; nothing is started."""
        self.supervise([self.service("A")])
        self.failureResultOf(self.acquire("B"), UnknownService)
        self.failureResultOf(self.supervisor.start("B"), UnknownService)
        self.failureResultOf(self.supervisor.stop("B", False), UnknownService)
        self.assertEqual(self.reactor.processes, [])


class HealthcheckTests(SupervisorTestCase):
    """A HealthcheckCommand runs first, every interval, then the port is probed."""

    HC = "curl -f http://127.0.0.1:9001/health"

    def test_healthcheck_then_port(self) -> None:
        """The healthcheck runs at once and again every interval until it passes."""
        self.supervise([self.service("A", healthcheck_command=self.HC, healthcheck_interval=0.5)])
        d = self.acquire("A")
        first = self.shell(self.HC)
        self.assertEqual(first.args, [SETSID, "/bin/sh", "-c", self.HC])
        self.assertEqual(self.probes(), [])
        first.exit(1)
        self.reactor.advance(0.4)
        self.assertEqual(len(self.shells(self.HC)), 1)
        self.reactor.advance(0.1)
        second = self.shell(self.HC)
        self.assertEqual(self.probes(), [])
        second.exit(0)
        self.assertEqual(self.probes(), [(HOST, 9001)])
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(len(self.shells(self.HC)), 2)
        self.assertEqual(self.reactor.signals, [])

    def test_healthcheck_exits_during_spawn(self) -> None:
        """
        A healthcheck so quick that it is reaped before its spawn returns is
        a healthcheck like any other: passing, the port is probed next.
        """
        self.reactor.exit_during_spawn[self.HC] = 0
        self.supervise([self.service("A", healthcheck_command=self.HC)])
        d = self.acquire("A")
        self.reactor.advance(0)  # the reactor reads the end of its pipes
        self.assertEqual(self.probes(), [(HOST, 9001)])
        self.ready("A")
        self.successResultOf(d)

    def test_failing_healthcheck_retried_until_it_passes(self) -> None:
        """
        A healthcheck that fails (a server answering 503 while it loads) is
        run again every interval for as long as the startup timeout allows,
        however quick each run; when it passes, the start goes on.
        """
        self.reactor.exit_during_spawn[self.HC] = 22
        self.supervise(
            [
                self.service(
                    "A", healthcheck_command=self.HC, healthcheck_interval=0.1, startup_timeout=5.0
                )
            ]
        )
        d = self.acquire("A")
        for _ in range(48):
            self.reactor.advance(0)  # a run's pipes are read: it failed
            self.reactor.advance(0.1)  # the interval: the next run
        self.assertEqual(len(self.shells(self.HC)), 49)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(self.probes(), [])
        del self.reactor.exit_during_spawn[self.HC]
        self.reactor.advance(0)
        self.reactor.advance(0.1)
        self.shell(self.HC).exit(0)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(self.status("A").failed_starts, 0)

    def test_failing_healthcheck_until_timeout(self) -> None:
        """A healthcheck that never passes fails the start at its timeout, not before."""
        self.reactor.exit_during_spawn[self.HC] = 1
        self.supervise(
            [
                self.service(
                    "A", healthcheck_command=self.HC, healthcheck_interval=0.5, startup_timeout=5.0
                )
            ]
        )
        d = self.acquire("A")
        for _ in range(9):
            self.reactor.advance(0)
            self.reactor.advance(0.5)
        self.assertNoResult(d)
        self.reactor.advance(0)
        self.reactor.advance(0.5)
        self.unavailable(d, "service 'A' failed to start: not ready within 5 s")
        self.assertEqual(len(self.shells(self.HC)), 10)

    def test_process_dies_during_healthcheck(self) -> None:
        """
        With ConsiderStoppedOnProcessExit (the default), the process exiting
        during the healthcheck fails the start at once: every waiter fails, the
        healthcheck run is killed, the resources are freed.
        """
        self.supervise(
            [self.service("A", {"VRAM": 6}, healthcheck_command=self.HC)],
            [ResourceConfig("VRAM", 10)],
        )
        ds = [self.acquire("A") for _ in range(2)]
        check = self.shell(self.HC)
        self.proc("A").exit(1)
        for d in ds:
            self.unavailable(
                d, "service 'A' failed to start: process exited with status 1 while starting"
            )
        self.assertEqual(self.reactor.signals, [(check.pid, signal.SIGKILL)])
        self.assertTrue(check.exited)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual(self.status("A").failed_starts, 1)
        self.reactor.advance(10)
        self.assertEqual(len(self.shells(self.HC)), 1)
        self.assertEqual(self.reactor.live_processes(), [])

    def supervise_launcher(self) -> None:
        """Service A is a launcher (C{docker run -d}): its exit is no stop."""
        self.supervise(
            [
                self.service(
                    "A",
                    {"VRAM": 6},
                    healthcheck_command=self.HC,
                    consider_stopped_on_process_exit=False,
                )
            ],
            [ResourceConfig("VRAM", 10)],
        )

    def test_process_exit_ignored_during_healthcheck(self) -> None:
        """
        Without ConsiderStoppedOnProcessExit (a launcher like C{docker run -d}),
        the exit is ignored and the start goes on.
        """
        self.supervise_launcher()
        d = self.acquire("A")
        self.proc("A").exit(0)
        self.assertNoResult(d)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.shell(self.HC).exit(0)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.resource("VRAM").in_use, 6)

    def test_failed_launcher_fails_the_start_at_once(self) -> None:
        """
        Without ConsiderStoppedOnProcessExit, a launcher that exits with a
        failure (C{docker run} with no such image: status 125) fails the start
        at once, with its status, and not for a retry: nothing of it could
        become ready.
        """
        self.supervise_launcher()
        d = self.acquire("A")
        self.proc("A").exit(125)
        self.reactor.advance(1)  # the pipes' drain, bounded
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertTrue(str(failure.value).startswith("service 'A' failed to start: process"))
        self.assertIn("status 125", str(failure.value))
        self.assertFalse(failure.value.retryable)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)

    def test_first_healthcheck_stuck_until_timeout(self) -> None:
        """
        A healthcheck that never ends is killed (its group) at the startup
        deadline; the start fails and the service is stopped.
        """
        self.supervise([self.service("A", healthcheck_command=self.HC, startup_timeout=5.0)])
        d = self.acquire("A")
        check = self.shell(self.HC)
        process = self.proc("A")
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.unavailable(d, "service 'A' failed to start: not ready within 5 s")
        self.assertEqual(
            self.reactor.signals,
            [(check.pid, signal.SIGKILL), (process.pid, signal.SIGTERM)],
        )
        self.assertEqual(self.reactor.live_processes(), [])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)

    def test_later_healthcheck_stuck_until_timeout(self) -> None:
        """
        A later healthcheck run that hangs is killed when the startup timeout
        cancels the wait.
        """
        self.supervise(
            [
                self.service(
                    "A", healthcheck_command=self.HC, healthcheck_interval=1.0, startup_timeout=5.0
                )
            ]
        )
        d = self.acquire("A")
        process = self.proc("A")
        self.shell(self.HC).exit(1)
        self.reactor.advance(1)
        check = self.shell(self.HC)
        self.reactor.advance(4)
        self.unavailable(d, "service 'A' failed to start: not ready within 5 s")
        self.assertEqual(
            self.reactor.signals,
            [(check.pid, signal.SIGKILL), (process.pid, signal.SIGTERM)],
        )
        self.assertEqual(self.reactor.live_processes(), [])
        self.reactor.advance(10)
        self.assertEqual(len(self.shells(self.HC)), 2)


class FailedStartTests(SupervisorTestCase):
    """A failed start stops the process, frees resources and fails all its waiters."""

    def test_target_port_that_is_no_port(self) -> None:
        """
        A ProxyTargetPort outside 1-65535 (which loads, with a warning) fails
        each start at once, without spawning anything, with the reason for
        the client, the log and /status; the other services are untouched.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 6}, proxy_target_port=70000),
                self.service("B", {"VRAM": 4}),
            ],
            [ResourceConfig("VRAM", 10)],
        )
        b = self.lease("B")
        with capturedLogs() as events:
            d = self.acquire("A")
        reason = "ProxyTargetPort 70000 is not a port number (1-65535)"
        self.unavailable(d, f"service 'A' failed to start: {reason}")
        self.assertEqual(self.spawned("A"), [])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(
            self.status("A").last_failure,
            StartFailure(T0, reason, retryable=False, retry_at=T0 + BACKOFF_FIRST_SECONDS),
        )
        self.assertIn(
            f"A: start failed: {reason} (next try in 1 s at the earliest)",
            [formatEvent(e) for e in events],
        )
        self.assertEqual(self.state("B"), ServiceState.RUNNING)
        self.assertIsNone(self.status("B").last_failure)
        b.release()

    def test_startup_timeout(self) -> None:
        """Not ready within StartupTimeoutMilliseconds: every waiter fails, process stopped."""
        self.supervise(
            [self.service("A", {"VRAM": 6}, startup_timeout=5.0)], [ResourceConfig("VRAM", 10)]
        )
        d1 = self.acquire("A")
        self.reactor.advance(3)
        d2 = self.acquire("A")
        process = self.proc("A")
        self.reactor.refuse_connections()
        self.reactor.advance(1.9)
        self.assertNoResult(d1)
        self.reactor.advance(0.1)
        for d in (d1, d2):
            self.unavailable(d, "service 'A' failed to start: not ready within 5 s")
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual(self.status("A").failed_starts, 1)
        self.assertEqual(self.observer.starts, [("A", 5.0, False)])
        self.assertEqual(self.probes(), [])

    def test_three_waiters_fail_together(self) -> None:
        """One failed start fails its three waiters at once; one process, not three."""
        self.supervise([self.service("A", {"VRAM": 6})], [ResourceConfig("VRAM", 10)])
        ds = [self.acquire("A") for _ in range(3)]
        self.proc("A").exit(1)
        for d in ds:
            self.unavailable(
                d, "service 'A' failed to start: process exited with status 1 while starting"
            )
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.observer.starts, [("A", 0.0, False)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.status("A").waiting_connections, 0)
        self.assertEqual(self.free("VRAM"), 10)
        # The next client after the back-off starts it again.
        self.reactor.advance(BACKOFF_FIRST_SECONDS)
        d = self.acquire("A")
        self.assertEqual(len(self.spawned("A")), 2)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(self.status("A").starts, 2, "attempts")
        self.assertEqual(self.status("A").failed_starts, 1)

    def test_start_after_timeout_probes_new_port(self) -> None:
        """After a start timed out with a probe pending, the next start works."""
        self.supervise([self.service("A", startup_timeout=5.0)])
        d = self.acquire("A")
        self.reactor.advance(5)
        self.failureResultOf(d, ServiceUnavailable)
        self.reactor.advance(BACKOFF_FIRST_SECONDS)
        d = self.acquire("A")
        self.assertEqual(self.probes(), [(HOST, 9001)])
        self.ready("A")
        self.successResultOf(d)

    def test_bad_args(self) -> None:
        """Args that cannot be split fail the start at once; nothing is spawned or killed."""
        self.supervise(
            [self.service("A", {"VRAM": 6}, args="'open", kill_command="docker kill a")],
            [ResourceConfig("VRAM", 10)],
        )
        d = self.acquire("A")
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("service 'A' failed to start: Args", str(failure.value))
        self.assertEqual(self.reactor.processes, [])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual(self.observer.starts, [("A", 0.0, False)])

    def test_readiness_error(self) -> None:
        """A readiness check that breaks (the host does not resolve) fails the start at once."""
        self.supervise([self.service("A", proxy_target_host="model.invalid")])

        def resolve(name: str, timeout: Any = None) -> Deferred[str]:
            return fail(DNSLookupError(name))

        self.reactor.resolve = resolve  # type: ignore[method-assign]
        d = self.acquire("A")
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("service 'A' failed to start: readiness check failed", str(failure.value))
        self.assertIn("model.invalid", str(failure.value))
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertTrue(self.spawned("A")[0].exited)


class BackoffTests(SupervisorTestCase):
    """After a failed start a service backs off: its clients are answered at once."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [
                self.service("A", {"VRAM": 6}, startup_timeout=5.0),
                self.service("B", {"VRAM": 6}),
            ],
            [ResourceConfig("VRAM", 10)],
        )

    def fail_start(self, exit_code: int | None = 1) -> ServiceUnavailable:
        """A client of A; A's process writes a line and exits (or its start times out)."""
        d = self.acquire("A")
        process = self.proc("A")
        process.output(b"loading model.gguf\nCUDA error: out of memory\n", fd=2)
        if exit_code is None:
            self.reactor.advance(5)
        else:
            process.exit(exit_code)
        return self.failureResultOf(d, ServiceUnavailable).value

    def test_refused_at_once_and_nothing_evicted(self) -> None:
        """
        A client during the back-off gets the reason, the server's last lines
        and when to retry, at once; the idle B holding what A needs stays.
        """
        error = self.fail_start()
        self.assertEqual(
            (error.retry_after, error.retryable, error.output_tail),
            (1.0, False, ("loading model.gguf", "CUDA error: out of memory")),
        )
        self.run_idle("B")
        self.reactor.advance(0.4)
        d = self.acquire("A")
        refused = self.failureResultOf(d, ServiceUnavailable).value
        self.assertEqual(
            str(refused),
            "service 'A' failed to start: process exited with status 1 while starting"
            " (next try in 1 s)",
        )
        self.assertAlmostEqual(refused.retry_after or 0, 0.6)
        self.assertEqual(refused.output_tail, error.output_tail)
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.state("B"), ServiceState.RUNNING)
        self.assertEqual(self.observer.evicted, [])
        failure = self.status("A").last_failure
        assert failure is not None
        self.assertEqual(failure.retry_at, T0 + 1.0)

    def test_last_lines_read_after_the_exit(self) -> None:
        """
        The reactor may tell the exit before the last output: the start fails
        once the pipes are read to the end, with the lines printed last.
        """
        d = self.acquire("A")
        process = self.proc("A")
        process.exit(1, pipes_open=True)
        self.assertNoResult(d)
        process.output(b"CUDA error: out of memory\n", fd=2)
        process.close_pipes()
        error = self.failureResultOf(d, ServiceUnavailable).value
        self.assertEqual(error.output_tail, ("CUDA error: out of memory",))

    def test_pipes_held_open(self) -> None:
        """A child that holds the pipes open delays the failure by PIPE_DRAIN_SECONDS only."""
        d = self.acquire("A")
        self.proc("A").exit(1, group_too=False, pipes_open=True)
        self.reactor.advance(PIPE_DRAIN_SECONDS - 0.01)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        self.failureResultOf(d, ServiceUnavailable)

    def test_retry_at_cleared_once_over(self) -> None:
        """/status shows when the back-off ends while it lasts, null after."""
        self.fail_start()
        self.assertEqual(self.status("A").last_failure.retry_at, T0 + 1.0)  # type: ignore[union-attr]
        self.reactor.advance(1.0)
        failure = self.status("A").last_failure
        assert failure is not None
        self.assertIsNone(failure.retry_at)
        self.assertEqual(failure.reason, "process exited with status 1 while starting")

    def test_doubles_up_to_a_minute(self) -> None:
        """1 s, 2 s, 4 s ... 60 s between failed starts."""
        delays = []
        for _ in range(8):
            error = self.fail_start()
            delays.append(error.retry_after)
            assert error.retry_after is not None
            self.reactor.advance(error.retry_after)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0])

    def test_a_timeout_may_be_retried(self) -> None:
        """A start that timed out may pass next time: retryable."""
        self.assertTrue(self.fail_start(exit_code=None).retryable)

    def test_reset_by_a_good_start(self) -> None:
        """After a start that succeeds, the next failure backs off 1 s again."""
        self.reactor.advance(self.fail_start().retry_after or 0)
        self.reactor.advance(self.fail_start().retry_after or 0)
        d = self.acquire("A")
        self.ready("A")
        self.successResultOf(d).release()
        self.assertIsNone(self.status("A").last_failure.retry_at)  # type: ignore[union-attr]
        self.supervisor.stop("A", False)
        self.assertEqual(self.fail_start().retry_after, 1.0)

    def test_reset_by_a_start_action(self) -> None:
        """POST /start (IBackends.start) tries at once, back-off or not."""
        self.fail_start()
        d = self.supervisor.start("A")
        self.assertEqual(len(self.spawned("A")), 2)
        self.ready("A")
        self.successResultOf(d)


class WaitingTests(SupervisorTestCase):
    """Clients waiting for resources: leaving, giving up, arrival order."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [
                self.service("X", {"VRAM": 8}),
                self.service("A", {"VRAM": 6}),
                self.service("B", {"VRAM": 2}),
                self.service("C", {"RAM": 1}),
                self.service("D", {"VRAM": 6}),
            ],
            [ResourceConfig("VRAM", 10), ResourceConfig("RAM", 4)],
            max_wait=30.0,
        )
        self.x_lease = self.lease("X")

    def test_waits_while_resources_held(self) -> None:
        """A service that does not fit beside a busy one waits; nothing is stopped."""
        d = self.acquire("A")
        self.assertNoResult(d)
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual(self.status("A").waiting_connections, 1)
        self.assertEqual(self.spawned("A"), [])
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.resource("VRAM").usage_by_service, {"X": 8, "A": 6})

    def test_client_leaves_while_waiting(self) -> None:
        """
        A waiting client that leaves is dropped at once; with no other waiter
        the service is stopped again and nothing is started or evicted for it.
        """
        d1 = self.acquire("A")
        d2 = self.acquire("A")
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(self.status("A").waiting_connections, 1)
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(self.status("A").waiting_connections, 0)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.resource("VRAM").usage_by_service, {"X": 8})
        self.x_lease.release()
        self.reactor.advance(60)
        self.assertEqual(self.spawned("A"), [])
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.state("X"), ServiceState.RUNNING)

    def test_leaving_client_unblocks_next_in_line(self) -> None:
        """When the first in line leaves, the next one is served at once."""
        da = self.acquire("A")
        db = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        da.cancel()
        self.failureResultOf(da, CancelledError)
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(db)

    def test_max_wait(self) -> None:
        """A client waiting longer than MaxTimeToWait... is dropped with ServiceUnavailable."""
        d1 = self.acquire("A")
        self.reactor.advance(10)
        d2 = self.acquire("A")
        self.reactor.advance(19.9)
        self.assertNoResult(d1)
        self.reactor.advance(0.1)
        self.unavailable(d1, "gave up waiting 30 s for resources to start service 'A'")
        self.assertNoResult(d2)
        self.assertEqual(self.status("A").waiting_connections, 1)
        self.reactor.advance(10)
        self.unavailable(d2, "gave up waiting 30 s for resources to start service 'A'")
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.status("A").waiting_connections, 0)
        self.x_lease.release()
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.spawned("A"), [])

    def test_max_wait_ends_when_start_begins(self) -> None:
        """The wait limit covers the wait for resources, not the start itself."""
        d = self.acquire("A")
        self.reactor.advance(20)
        self.x_lease.release()
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        d2 = self.acquire("A")
        self.reactor.advance(100)
        self.assertNoResult(d)
        self.assertNoResult(d2)
        self.ready("A")
        self.successResultOf(d)
        self.successResultOf(d2)

    def test_client_leaves_while_starting(self) -> None:
        """A client leaving a start does not cancel it; the others are served."""
        d1 = self.acquire("C")
        d2 = self.acquire("C")
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(self.state("C"), ServiceState.STARTING)
        self.assertEqual(self.status("C").waiting_connections, 1)
        process = self.proc("C")
        self.ready("C")
        lease = self.successResultOf(d2)
        self.assertEqual(lease.service, "C")
        self.assertEqual(self.spawned("C"), [process])
        self.assertEqual(self.reactor.signals, [])

    def test_all_clients_leave_while_starting(self) -> None:
        """The start goes on with nobody waiting; the service then idles out."""
        d = self.acquire("C")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.state("C"), ServiceState.STARTING)
        self.assertEqual(self.status("C").waiting_connections, 0)
        self.ready("C")
        self.assertEqual(self.state("C"), ServiceState.RUNNING)
        self.assertEqual(self.status("C").proxied_connections, 0)
        self.reactor.advance(120)
        self.assertEqual(self.state("C"), ServiceState.STOPPED)

    def test_arrival_order(self) -> None:
        """
        Waiters are served in arrival order: a later, smaller service that
        would fit waits behind an earlier one needing the same resource, while
        a service needing an unrelated resource is not held up.
        """
        da = self.acquire("A")
        db = self.acquire("B")
        self.assertEqual(self.free("VRAM"), 2)
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        dc = self.acquire("C")
        self.assertEqual(self.state("C"), ServiceState.STARTING)
        self.x_lease.release()
        x = self.spawned("X")[0]
        self.assertEqual(self.reactor.signals, [(x.pid, signal.SIGTERM)])
        self.assertEqual(self.state("X"), ServiceState.STOPPED)
        self.assertEqual([p.command[1] for p in self.reactor.processes], ["X", "C", "A", "B"])
        self.assertEqual(self.resource("VRAM").reserved_by_starting_services, 8)
        for name in ("A", "B", "C"):
            self.ready(name)
        for d in (da, db, dc):
            self.successResultOf(d)

    def test_nothing_starts_during_shutdown(self) -> None:
        """
        What the stops at shutdown free is not given to the services waiting
        for it: they fail, and no process is spawned for them.
        """
        da = self.acquire("A")
        db = self.acquire("B")
        d = self.supervisor.stopService()
        self.unavailable(da, "service 'A' was not started: lmproxy is shutting down")
        self.unavailable(db, "service 'B' was not started: lmproxy is shutting down")
        self.assertEqual(self.spawned("A"), [])
        self.assertEqual(self.spawned("B"), [])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.observer.starts, [("X", 0.0, True)])

    def test_arrival_order_same_size(self) -> None:
        """Two services that cannot run together start in the order they were asked for."""
        dd = self.acquire("D")
        da = self.acquire("A")
        self.x_lease.release()
        self.assertEqual(self.state("D"), ServiceState.STARTING)
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        self.ready("D")
        self.successResultOf(dd).release()
        self.assertEqual(self.state("D"), ServiceState.STOPPED)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.ready("A")
        self.successResultOf(da)


class EvictionTests(SupervisorTestCase):
    """Idle services are stopped, least recently used first, to free what is missing."""

    def test_two_services_that_do_not_fit(self) -> None:
        """
        The second service waits while the first has a connection; when it is
        released, the first is evicted and the second starts after it is gone.
        """
        self.two_that_do_not_fit()
        lease = self.lease("A")
        d = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual(self.reactor.signals, [])
        a = self.proc("A")
        lease.release()
        self.assertEqual(self.reactor.signals, [(a.pid, signal.SIGTERM)])
        self.assertEqual(self.observer.evicted, ["A"])
        self.assertEqual(self.status("A").evictions, 1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.assertEqual(self.resource("VRAM").usage_by_service, {"B": 6})
        self.ready("B")
        self.successResultOf(d)

    def test_start_nobody_waits_for_is_evicted_mid_start(self) -> None:
        """
        A's only client left while A starts: A counts as idle from then on.
        A client of B, which needs A's resources, stops A at once, mid-start
        (an eviction, not a failed start), and B starts once A is gone.
        """
        self.two_that_do_not_fit()
        self.abandon("A")
        a = self.proc("A")
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(self.reactor.signals, [], "nobody needs its resources yet")
        d = self.acquire("B")
        self.assertEqual(self.reactor.signals, [(a.pid, signal.SIGTERM)])
        self.assertEqual(self.observer.evicted, ["A"])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(
            (self.status("A").evictions, self.status("A").failed_starts, self.observer.starts),
            (1, 0, []),
        )
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(d)

    def test_abandoned_start_leaving_makes_room_for_the_waiting(self) -> None:
        """B waits behind A's start; A's last client leaves: A is stopped for B at once."""
        self.two_that_do_not_fit()
        a_client = self.acquire("A")
        d = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual(self.reactor.signals, [], "A starts for a waiting client")
        a_client.cancel()
        self.failureResultOf(a_client, CancelledError)
        self.assertEqual(self.reactor.signals, [(self.spawned("A")[0].pid, signal.SIGTERM)])
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(d)

    def test_abandoned_start_goes_before_idle_running_services(self) -> None:
        """
        Of an idle running service used long ago and a start nobody waits for
        any more, the start is stopped: it has served no one.
        """
        self.supervise(
            [
                self.service("OLD", {"VRAM": 4}),
                self.service("A", {"VRAM": 4}),
                self.service("C", {"VRAM": 4}),
            ],
            [ResourceConfig("VRAM", 10)],
        )
        self.run_idle("OLD")
        self.reactor.advance(10)
        self.abandon("A")
        self.acquire("C")
        self.assertEqual(self.observer.evicted, ["A"])
        self.assertEqual(self.state("OLD"), ServiceState.RUNNING)

    def test_a_new_client_makes_an_abandoned_start_wanted_again(self) -> None:
        """A client that comes back to the start: A is no longer idle, never evicted."""
        self.two_that_do_not_fit()
        self.abandon("A")
        again = self.acquire("A")
        d = self.acquire("B")
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.ready("A")
        self.successResultOf(again).release()  # now idle and running: evicted for B
        self.assertEqual(self.observer.evicted, ["A"])
        self.ready("B")
        self.successResultOf(d)

    def test_idle_service_evicted_at_once(self) -> None:
        """An idle service in the way is stopped at once."""
        self.two_that_do_not_fit()
        self.run_idle("A")
        d = self.acquire("B")
        self.assertEqual(self.reactor.signals, [(self.spawned("A")[0].pid, signal.SIGTERM)])
        self.ready("B")
        self.successResultOf(d)

    def test_least_recently_used_first(self) -> None:
        """Of several idle services the least recently used one is stopped, and only it."""
        self.supervise(
            [
                self.service("A", {"VRAM": 4}),
                self.service("B", {"VRAM": 4}),
                self.service("C", {"VRAM": 4}),
                self.service("D", {"VRAM": 4}),
            ],
            [ResourceConfig("VRAM", 12)],
        )
        for name in ("A", "B", "C", "A"):
            self.run_idle(name)
            self.reactor.advance(1)
        d = self.acquire("D")
        self.assertEqual(self.reactor.signals, [(self.spawned("B")[0].pid, signal.SIGTERM)])
        self.assertEqual(self.observer.evicted, ["B"])
        self.assertEqual(
            [self.state(n) for n in "ABCD"],
            [
                ServiceState.RUNNING,
                ServiceState.STOPPED,
                ServiceState.RUNNING,
                ServiceState.STARTING,
            ],
        )
        self.ready("D")
        self.successResultOf(d)

    def test_waits_for_kill_command(self) -> None:
        """
        The new service starts only once the evicted one is gone, after its
        KillCommand and SIGTERM; a stop in progress is counted as room coming,
        so nothing else is evicted meanwhile.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 4}, kill_command="stop-A"),
                self.service("B", {"VRAM": 4}),
                self.service("D", {"VRAM": 4}),
                self.service("E"),
            ],
            [ResourceConfig("VRAM", 8)],
        )
        self.run_idle("A")
        self.reactor.advance(1)
        self.run_idle("B")
        e_lease = self.lease("E")
        d1 = self.acquire("D")
        kill = self.shell("stop-A")
        self.assertEqual(self.state("A"), ServiceState.STOPPING)
        self.assertEqual(self.state("D"), ServiceState.WAITING_FOR_RESOURCES)
        d2 = self.acquire("D")
        e_lease.release()  # Schedules again while A is stopping.
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.spawned("D"), [])
        self.assertEqual(self.state("B"), ServiceState.RUNNING)
        kill.exit(0)
        self.assertEqual(self.reactor.signals, [(self.spawned("A")[0].pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(len(self.spawned("D")), 1)
        self.ready("D")
        self.successResultOf(d1)
        self.successResultOf(d2)

    def test_victims_stopped_in_parallel(self) -> None:
        """Several victims are stopped at the same time."""
        self.supervise(
            [
                self.service("A", {"VRAM": 4}, kill_command="stop-A"),
                self.service("B", {"VRAM": 4}, kill_command="stop-B"),
                self.service("D", {"VRAM": 8}),
            ],
            [ResourceConfig("VRAM", 8)],
        )
        self.run_idle("A")
        self.run_idle("B")
        self.acquire("D")
        self.assertEqual(self.state("A"), ServiceState.STOPPING)
        self.assertEqual(self.state("B"), ServiceState.STOPPING)
        self.shell("stop-B").exit(0)
        self.assertEqual(self.spawned("D"), [])
        self.shell("stop-A").exit(0)
        self.assertEqual(len(self.spawned("D")), 1)

    def test_frees_every_missing_resource(self) -> None:
        """
        The victims free enough of every missing resource; a victim made
        unneeded by a later one is not stopped.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 5}),
                self.service("C", {"VRAM": 5, "RAM": 5}),
                self.service("B", {"RAM": 5}),
                self.service("D", {"VRAM": 5, "RAM": 5}),
            ],
            [ResourceConfig("VRAM", 10), ResourceConfig("RAM", 10)],
        )
        for name in ("A", "C", "B"):
            self.run_idle(name)
            self.reactor.advance(1)
        d = self.acquire("D")
        self.assertEqual(self.reactor.signals, [(self.spawned("C")[0].pid, signal.SIGTERM)])
        self.assertEqual(
            [self.state(n) for n in "ACBD"],
            [
                ServiceState.RUNNING,
                ServiceState.STOPPED,
                ServiceState.RUNNING,
                ServiceState.STARTING,
            ],
        )
        self.ready("D")
        self.successResultOf(d)

    def test_several_victims_for_several_resources(self) -> None:
        """When no single service frees enough, several are stopped together."""
        self.supervise(
            [
                self.service("A", {"VRAM": 5}),
                self.service("B", {"RAM": 5}),
                self.service("C", {"VRAM": 5, "RAM": 5}),
                self.service("D", {"VRAM": 5, "RAM": 5}),
            ],
            [ResourceConfig("VRAM", 10), ResourceConfig("RAM", 10)],
        )
        for name in ("A", "B", "C"):
            self.run_idle(name)
            self.reactor.advance(1)
        self.acquire("D")
        a, b = self.spawned("A")[0], self.spawned("B")[0]
        self.assertEqual(self.reactor.signals, [(a.pid, signal.SIGTERM), (b.pid, signal.SIGTERM)])
        self.assertEqual(self.state("C"), ServiceState.RUNNING)
        self.assertEqual(self.state("D"), ServiceState.STARTING)

    def test_stops_nothing_when_no_set_suffices(self) -> None:
        """
        When the idle services together cannot free enough (a busy one holds
        the rest), none is stopped; once the busy one is released, enough can be.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 5}),
                self.service("B", {"VRAM": 5}),
                self.service("D", {"VRAM": 6}),
            ],
            [ResourceConfig("VRAM", 10)],
        )
        lease = self.lease("A")
        self.run_idle("B")
        d = self.acquire("D")
        self.reactor.advance(10)
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.state("B"), ServiceState.RUNNING)
        self.assertEqual(self.state("D"), ServiceState.WAITING_FOR_RESOURCES)
        lease.release()
        self.assertEqual(
            sorted(self.reactor.signals),
            sorted(
                [
                    (self.spawned("A")[0].pid, signal.SIGTERM),
                    (self.spawned("B")[0].pid, signal.SIGTERM),
                ]
            ),
        )
        self.assertEqual(self.observer.evicted, ["B", "A"])
        self.ready("D")
        self.successResultOf(d)

    def test_starting_service_never_evicted(self) -> None:
        """A service that is starting holds its resources; it is never a victim."""
        self.two_that_do_not_fit()
        da = self.acquire("A")
        db = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual(self.reactor.signals, [])
        self.ready("A")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.successResultOf(da).release()
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(db)


class IdleTests(SupervisorTestCase):
    """A service with no connection is stopped after its idle timeout."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [self.service("A", {"VRAM": 6}, idle_timeout=60.0)], [ResourceConfig("VRAM", 10)]
        )

    def test_idle_stop(self) -> None:
        """Idle for idle_timeout after the last release: stopped, resources freed."""
        self.run_idle("A")
        process = self.proc("A")
        self.reactor.advance(59.9)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual(self.observer.evicted, [])

    def test_rearmed_by_acquire_and_release(self) -> None:
        """Every acquire and release starts the idle time again."""
        self.run_idle("A")
        self.reactor.advance(30)
        lease = self.lease("A")
        self.reactor.advance(10)
        lease.release()
        self.assertEqual(self.status("A").last_used, T0 + 40)
        self.reactor.advance(59.9)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.reactor.advance(0.1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)

    def test_rearmed_while_busy(self) -> None:
        """While a lease is held the service is never stopped for idleness."""
        lease = self.lease("A")
        used = self.status("A").last_used
        self.reactor.advance(60)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.status("A").last_used, used, "re-arming is not a use")
        self.reactor.advance(65)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        lease.release()
        self.reactor.advance(59.9)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.reactor.advance(0.1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(len(self.reactor.signals), 1)

    def test_stopped_service_starts_again(self) -> None:
        """After an idle stop the next client starts a new process."""
        self.run_idle("A")
        self.reactor.advance(60)
        self.lease("A")
        self.assertEqual(len(self.spawned("A")), 2)
        self.assertEqual(self.status("A").starts, 2)


class RestartTests(SupervisorTestCase):
    """L{ILease.reconnect}: RestartOnConnectionFailure."""

    def test_restart_shared(self) -> None:
        """Two clients whose connections fail share one restart."""
        self.supervise([self.service("A", restart_on_connection_failure=True)])
        first, second, third = self.lease("A"), self.lease("A"), self.lease("A")
        old = self.proc("A")
        d1 = first.reconnect()
        self.assertEqual(self.reactor.signals, [(old.pid, signal.SIGTERM)])
        self.assertEqual(len(self.spawned("A")), 2)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(self.status("A").proxied_connections, 2)
        d2 = second.reconnect()
        self.assertEqual(len(self.spawned("A")), 2)
        self.assertEqual(self.status("A").waiting_connections, 2)
        self.assertEqual(self.status("A").proxied_connections, 1)
        self.ready("A")
        new1, new2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIsNot(new1, new2)
        self.assertEqual(self.status("A").proxied_connections, 3)
        # A client of the old run asking after the restart gets the new run.
        d3 = third.reconnect()
        self.successResultOf(d3)
        self.assertEqual(len(self.spawned("A")), 2)
        self.assertEqual(self.reactor.signals, [(old.pid, signal.SIGTERM)])
        self.assertEqual(self.status("A").proxied_connections, 3)

    def test_no_restart_without_flag(self) -> None:
        """Without RestartOnConnectionFailure the client is closed; the service is left."""
        self.supervise([self.service("A")])
        lease = self.lease("A")
        d = lease.reconnect()
        self.unavailable(d, "cannot connect to service 'A' at 127.0.0.1:9001")
        self.assertEqual(self.status("A").proxied_connections, 0)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(len(self.spawned("A")), 1)

    def test_run_already_over_without_flag(self) -> None:
        """
        A client whose lease predates a process exit lmproxy has noticed is not
        failed for it: like a new client, it gets a new run.
        """
        self.supervise([self.service("A")])
        lease = self.lease("A")
        self.proc("A").exit(1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        d = lease.reconnect()
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(len(self.spawned("A")), 2)


class ProcessExitTests(SupervisorTestCase):
    """A service process that exits on its own while running."""

    def test_considered_stopped(self) -> None:
        """With ConsiderStoppedOnProcessExit: stopped, freed, started again on demand."""
        self.supervise([self.service("A", {"VRAM": 6})], [ResourceConfig("VRAM", 10)])
        self.run_idle("A")
        self.proc("A").exit(1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertIsNone(self.status("A").pid)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual(self.resource("VRAM").in_use, 0)
        self.assertEqual(self.reactor.signals, [])
        self.lease("A")
        self.assertEqual(len(self.spawned("A")), 2)

    def test_children_left_behind_are_stopped(self) -> None:
        """When the leader exits but its group lives on, the group gets SIGTERM."""
        self.supervise([self.service("A")])
        self.run_idle("A")
        process = self.proc("A")
        process.exit(1, group_too=False)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertFalse(process.group_alive)

    def test_shutdown_waits_for_group_left_behind(self) -> None:
        """
        Shutdown waits for the group of a process that exited on its own (its
        service already counted as stopped) until that group is gone too.
        """
        self.supervise([self.service("A")])
        self.run_idle("A")
        self.reactor.on_signal = ignore_sigterm
        process = self.proc("A")
        process.exit(1, group_too=False)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        d = self.supervisor.stopService()
        self.assertNoResult(d)
        self.reactor.advance(STOP_GRACE_SECONDS)
        self.assertEqual(
            self.reactor.signals, [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)]
        )
        self.assertIsNone(self.successResultOf(d))

    def test_kill_all_kills_group_left_behind(self) -> None:
        """C{kill_all} also kills the group of a process that exited on its own."""
        self.supervise([self.service("A")])
        self.run_idle("A")
        self.reactor.on_signal = ignore_sigterm
        process = self.proc("A")
        process.exit(1, group_too=False)
        d = self.supervisor.stopService()
        self.supervisor.kill_all()
        self.assertEqual(
            self.reactor.signals, [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)]
        )
        self.reactor.advance(GROUP_POLL_SECONDS)
        self.assertIsNone(self.successResultOf(d))

    def test_not_considered_stopped(self) -> None:
        """
        Without ConsiderStoppedOnProcessExit the service stays running with its
        resources until the idle stop, which runs the KillCommand.
        """
        self.supervise(
            [
                self.service(
                    "A",
                    {"VRAM": 6},
                    consider_stopped_on_process_exit=False,
                    kill_command="docker stop a",
                    idle_timeout=60.0,
                )
            ],
            [ResourceConfig("VRAM", 10)],
        )
        self.run_idle("A")
        self.proc("A").exit(0)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.resource("VRAM").in_use, 6)
        lease = self.lease("A")
        self.assertEqual(len(self.spawned("A")), 1)
        lease.release()
        self.reactor.advance(60)
        self.assertEqual(self.state("A"), ServiceState.STOPPING)
        self.shell("docker stop a").exit(0)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.free("VRAM"), 10)


class ManagementTests(SupervisorTestCase):
    """The management actions C{start} and C{stop}."""

    def setUp(self) -> None:
        super().setUp()
        self.two_that_do_not_fit()

    def test_start(self) -> None:
        """C{start} starts like a client would and holds no lease."""
        d = self.supervisor.start("A")
        self.assertNoResult(d)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.ready("A")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.status("A").proxied_connections, 0)
        self.assertIsNone(self.successResultOf(self.supervisor.start("A")))
        self.assertEqual(len(self.spawned("A")), 1)

    def test_stop_busy(self) -> None:
        """C{stop} without force refuses a service with connections; force stops it."""
        self.lease("A")
        failure = self.failureResultOf(self.supervisor.stop("A", False), ServiceBusy)
        self.assertEqual(str(failure.value), "service 'A' has 1 proxied connection(s)")
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.reactor.signals, [])
        self.assertIsNone(self.successResultOf(self.supervisor.stop("A", True)))
        self.assertEqual(self.reactor.signals, [(self.spawned("A")[0].pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)

    def test_stop_idle(self) -> None:
        """An idle service stops without force; stopping a stopped one does nothing."""
        self.run_idle("A")
        self.assertIsNone(self.successResultOf(self.supervisor.stop("A", False)))
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertIsNone(self.successResultOf(self.supervisor.stop("A", False)))
        self.assertEqual(len(self.reactor.signals), 1)

    def test_stop_while_starting(self) -> None:
        """Stopping a starting service fails its waiters and stops its process."""
        ds = [self.acquire("A") for _ in range(2)]
        process = self.proc("A")
        stopped = self.supervisor.stop("A", False)
        for d in ds:
            self.unavailable(d, "service 'A' was stopped before it was ready: stopped on request")
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.reactor.signals, [(process.pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        # Stopped, not failed: no failed start is counted or announced.
        self.assertEqual(self.observer.starts, [])
        self.assertEqual(self.status("A").failed_starts, 0)
        self.assertEqual(self.probes(), [])

    def test_stop_while_stopping(self) -> None:
        """A second stop while one is in progress fires when the service is stopped."""
        self.reactor.on_signal = ignore_sigterm
        self.run_idle("A")
        first = self.supervisor.stop("A", False)
        second = self.supervisor.stop("A", False)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.reactor.advance(STOP_GRACE_SECONDS)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual([s for _, s in self.reactor.signals], [signal.SIGTERM, signal.SIGKILL])

    def test_stop_while_waiting(self) -> None:
        """Stopping a service waiting for resources fails its waiters; nothing starts."""
        lease = self.lease("A")
        d = self.acquire("B")
        self.assertIsNone(self.successResultOf(self.supervisor.stop("B", False)))
        self.unavailable(d, "service 'B' was not started: stopped on request")
        self.assertEqual(self.state("B"), ServiceState.STOPPED)
        lease.release()
        self.assertEqual(self.spawned("B"), [])
        self.assertEqual(self.reactor.signals, [])


class ShutdownTests(SupervisorTestCase):
    """C{stopService} and C{kill_all}."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [
                self.service("A", {"VRAM": 5}),
                self.service("B", {"VRAM": 5}, kill_command="stop-B"),
                self.service("C"),
                self.service("D", {"VRAM": 5}),
            ],
            [ResourceConfig("VRAM", 10)],
        )
        self.a_lease = self.lease("A")
        self.b_lease = self.lease("B")
        self.c_waiter = self.acquire("C")
        self.d_waiter = self.acquire("D")
        self.assertEqual(
            [self.state(n) for n in "ABCD"],
            [
                ServiceState.RUNNING,
                ServiceState.RUNNING,
                ServiceState.STARTING,
                ServiceState.WAITING_FOR_RESOURCES,
            ],
        )
        self.a, self.b, self.c = self.proc("A"), self.proc("B"), self.proc("C")

    def test_stops_everything_in_parallel(self) -> None:
        """
        Every service is stopped at once; waiters fail; the Deferred fires only
        when every process group is gone.
        """
        self.reactor.on_signal = ignore_sigterm
        d = self.supervisor.stopService()
        self.unavailable(
            self.c_waiter, "service 'C' was stopped before it was ready: lmproxy is shutting down"
        )
        self.unavailable(self.d_waiter, "service 'D' was not started: lmproxy is shutting down")
        self.assertEqual(
            self.reactor.signals, [(self.a.pid, signal.SIGTERM), (self.c.pid, signal.SIGTERM)]
        )
        kill = self.shell("stop-B")
        self.reactor.advance(1)
        kill.exit(0)
        self.assertEqual(self.reactor.signals[-1], (self.b.pid, signal.SIGTERM))
        self.reactor.advance(STOP_GRACE_SECONDS - 1)
        self.assertNoResult(d)
        self.assertEqual(
            self.reactor.signals[3:],
            [(self.a.pid, signal.SIGKILL), (self.c.pid, signal.SIGKILL)],
        )
        self.assertEqual(self.state("B"), ServiceState.STOPPING)
        self.reactor.advance(1)
        self.assertEqual(self.reactor.signals[-1], (self.b.pid, signal.SIGKILL))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.live_processes(), [])
        self.assertEqual([self.state(n) for n in "ABCD"], [ServiceState.STOPPED] * 4)

    def test_acquire_during_shutdown(self) -> None:
        """Once shutting down, new clients fail at once."""
        self.reactor.on_signal = ignore_sigterm
        self.supervisor.stopService()
        self.unavailable(self.acquire("A"), "lmproxy is shutting down")
        self.unavailable(self.acquire("D"), "lmproxy is shutting down")
        self.assertEqual(self.spawned("D"), [])

    def test_waiter_of_stopping_service_fails(self) -> None:
        """A client waiting for a service that is stopping fails at shutdown."""
        self.reactor.on_signal = ignore_sigterm
        self.a_lease.release()  # A is evicted for D, and ignores SIGTERM.
        self.assertEqual(self.state("A"), ServiceState.STOPPING)
        waiter = self.acquire("A")
        d = self.supervisor.stopService()
        self.assertNoResult(waiter)
        self.shell("stop-B").exit(0)
        self.reactor.advance(STOP_GRACE_SECONDS)
        self.unavailable(waiter, "lmproxy is shutting down")
        self.successResultOf(d)
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.spawned("D"), [])

    def test_kill_all(self) -> None:
        """C{kill_all} SIGKILLs every process group at once."""
        self.reactor.on_signal = ignore_sigterm
        d = self.supervisor.stopService()
        self.shell("stop-B").exit(0)
        self.assertNoResult(d)
        self.supervisor.kill_all()
        self.assertEqual(
            self.reactor.signals[3:],
            [
                (self.a.pid, signal.SIGKILL),
                (self.b.pid, signal.SIGKILL),
                (self.c.pid, signal.SIGKILL),
            ],
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.live_processes(), [])

    def test_kill_all_during_kill_command(self) -> None:
        """A KillCommand still running when C{kill_all} comes is killed as well."""
        self.reactor.on_signal = ignore_sigterm
        d = self.supervisor.stopService()
        kill = self.shell("stop-B")
        self.supervisor.kill_all()
        self.assertEqual(
            self.reactor.signals[2:],
            [
                (self.a.pid, signal.SIGKILL),
                (self.b.pid, signal.SIGKILL),
                (kill.pid, signal.SIGKILL),
                (self.c.pid, signal.SIGKILL),
            ],
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.live_processes(), [])


class MeasuredResourceTests(SupervisorTestCase):
    """Resources measured by a CheckCommand."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [
                self.service("A", {"VRAM": 4000}),
                self.service("B", {"VRAM": 8000}),
                self.service("R", {"RAM": 8}),
                self.service("S", {"RAM": 4, "VRAM": 100}),
            ],
            [
                ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=2.0),
                ResourceConfig("RAM", 10),
            ],
        )

    def measured_lease(self, name: str, value: bytes) -> ILease:
        """Acquire C{name}, which needs a check (reporting C{value}) to start."""
        d = self.acquire(name)
        self.measure(value)
        self.ready(name)
        return self.successResultOf(d)

    def test_checked_at_start(self) -> None:
        """The CheckCommand runs when the supervisor starts; /status shows the value."""
        [check] = self.shells(self.CHECK)
        self.assertEqual(self.resource("VRAM").measured, None)
        self.assertEqual(self.free("VRAM"), None)
        check.output(b"10000\n")
        check.exit(0)
        self.assertEqual(
            self.resource("VRAM"),
            ResourceStatus("VRAM", None, 10000, 0, 0, 10000, {}, 10000),
        )

    def test_bad_output(self) -> None:
        """Output that is not an integer leaves no value, with a warning."""
        with capturedLogs() as events:
            self.measure(b"N/A\n")
        self.assertEqual(self.resource("VRAM").measured, None)
        self.assertEqual(
            [e["stdout"] for e in events if e.get("resource") == "VRAM" and "stdout" in e],
            ["N/A"],
        )

    def test_value_on_stdout_only(self) -> None:
        """
        A tool that warns on stderr gives its value on stdout: a client of a
        service needing that much is served.
        """
        d = self.acquire("A")  # needs 4000
        check = self.shell(self.CHECK)
        check.output(b"warning: something\n", fd=2)
        check.output(b"5000\n")
        check.exit(0)
        self.assertEqual(self.resource("VRAM").measured, 5000)
        self.measure(b"warning: something\n5000\n")  # the check before the start
        self.ready("A")
        self.successResultOf(d)

    def test_huge_value(self) -> None:
        """A 401-digit number is no value: /status has null, nothing is evicted."""
        self.measure(b"1" * 401 + b"\n")
        self.assertEqual(self.resource("VRAM").measured, None)
        self.assertEqual(self.free("VRAM"), None)

    def test_no_value_evicts_nothing(self) -> None:
        """A CheckCommand that prints no number makes the service wait, not evict."""
        self.measure(b"10000\n")
        self.measured_lease("A", b"10000\n").release()
        d = self.acquire("S")  # needs VRAM 100, which evicting A would free
        self.measure(b"N/A\n")
        self.assertEqual(
            self.state("A"), ServiceState.RUNNING, "nothing is evicted on an unknown value"
        )
        self.assertEqual(self.state("S"), ServiceState.WAITING_FOR_RESOURCES)
        self.reactor.advance(2.0)  # CheckWhenNotEnoughIntervalMilliseconds later: measured again
        self.measure(b"50\n")
        self.assertEqual(
            self.state("A"), ServiceState.STOPPED, "a real shortfall evicts the idle service"
        )
        self.measure(b"10000\n")
        self.ready("S")
        self.successResultOf(d)

    def test_checked_again_before_start(self) -> None:
        """A service needing the resource checks it again before it starts."""
        self.measure(b"10000\n")
        d = self.acquire("A")
        self.assertEqual(len(self.shells(self.CHECK)), 2)
        self.assertEqual(self.spawned("A"), [])
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        self.measure(b"9000\n")
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(
            self.resource("VRAM"),
            ResourceStatus("VRAM", None, 9000, 4000, 4000, 9000, {"A": 4000}, 5000),
        )
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(
            self.resource("VRAM"),
            ResourceStatus("VRAM", None, 9000, 0, 4000, 9000, {"A": 4000}, 9000),
        )

    def test_rechecked_while_not_enough(self) -> None:
        """While not enough is free, the check runs again every interval."""
        self.measure(b"10000\n")
        lease = self.measured_lease("A", b"10000\n")
        self.assertEqual(len(self.shells(self.CHECK)), 2)
        d = self.acquire("B")
        self.measure(b"5000\n")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.assertEqual(self.reactor.signals, [])
        self.reactor.advance(1.9)
        self.assertEqual(len(self.shells(self.CHECK)), 3)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.shells(self.CHECK)), 4)
        self.measure(b"5000\n")
        self.reactor.advance(2)
        self.assertEqual(len(self.shells(self.CHECK)), 5)
        self.measure(b"8000\n")
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(d)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        lease.release()
        self.reactor.advance(10)
        self.assertEqual(len(self.shells(self.CHECK)), 5)

    def test_eviction_of_measured_resource(self) -> None:
        """
        When an idle service using it could free enough, it is evicted, and
        the check runs again as soon as it has stopped.
        """
        self.measure(b"10000\n")
        lease = self.measured_lease("A", b"10000\n")
        d = self.acquire("B")
        self.measure(b"5000\n")
        lease.release()
        self.assertEqual(self.reactor.signals, [(self.spawned("A")[0].pid, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(len(self.shells(self.CHECK)), 4)
        self.measure(b"9000\n")
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(d)

    def test_no_check_while_static_resource_short(self) -> None:
        """No CheckCommand runs while a static resource is what is missing."""
        self.measure(b"10000\n")
        lease = self.lease("R")
        d = self.acquire("S")
        self.reactor.advance(10)
        self.assertEqual(len(self.shells(self.CHECK)), 1)
        self.assertEqual(self.state("S"), ServiceState.WAITING_FOR_RESOURCES)
        lease.release()
        self.assertEqual(self.state("R"), ServiceState.STOPPED)
        self.assertEqual(len(self.shells(self.CHECK)), 2)
        self.measure(b"10000\n")
        self.ready("S")
        self.successResultOf(d)

    def test_check_cancelled_at_shutdown(self) -> None:
        """A check running at shutdown is killed; shutdown does not wait for it."""
        check = self.shell(self.CHECK)
        d = self.supervisor.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.signals, [(check.pid, signal.SIGKILL)])
        self.assertTrue(check.exited)


class StaleMeasurementTests(SupervisorTestCase):
    """A measurement taken before a service started or stopped is not trusted after it."""

    def test_check_begun_before_a_stop_is_run_again(self) -> None:
        """
        A CheckCommand still running when a service using the resource stops
        reports what was free before the stop: acting on it would evict
        another service for nothing.  The check runs again instead.
        """
        self.supervise(
            [
                self.service("V1", {"VRAM": 4000}),
                self.service("V2", {"VRAM": 4000}),
                self.service("BIG", {"VRAM": 8000}),
                self.service("SMALL", {"VRAM": 100}),
            ],
            [ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=2.0)],
        )
        self.measure(b"10000\n")
        for name, free in [("V1", b"10000\n"), ("V2", b"6000\n")]:
            d = self.acquire(name)
            self.measure(free)
            self.ready(name)
            self.successResultOf(d).release()
            self.reactor.advance(1)
        self.reactor.on_signal = ignore_sigterm
        big = self.acquire("BIG")
        self.measure(b"5000\n")  # 3000 missing: V1, least recently used, is evicted
        self.assertEqual(self.state("V1"), ServiceState.STOPPING)
        self.acquire("SMALL")  # another client: VRAM is measured again
        check = self.shell(self.CHECK)
        self.reactor.advance(STOP_GRACE_SECONDS)  # V1 is gone while the check runs
        self.assertEqual(self.state("V1"), ServiceState.STOPPED)
        check.output(b"5000\n")  # what was free before V1 stopped
        check.exit(0)
        self.assertEqual(self.state("V2"), ServiceState.RUNNING, "V2 is not evicted for nothing")
        self.measure(b"9000\n")
        self.assertEqual(self.state("BIG"), ServiceState.STARTING)
        self.assertEqual(self.state("V2"), ServiceState.RUNNING)
        self.ready("BIG")
        self.successResultOf(big)

    def test_measured_again_when_a_start_ends(self) -> None:
        """
        11 free; A (needs 10) starts and B (needs 10) waits meanwhile.  A
        serves its client and is idle at once.  What was measured before or
        during A's start does not show A's use: B is not admitted beside A on
        it; VRAM is measured again (1 free), so A is evicted, and B starts
        once A is gone (two models in memory that holds one otherwise).
        """
        self.supervise(
            [self.service("A", {"VRAM": 10}), self.service("B", {"VRAM": 10})],
            [ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=2.0)],
        )
        self.measure(b"11\n")
        a = self.acquire("A")
        self.measure(b"11\n")
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        b = self.acquire("B")
        self.measure(b"11\n")  # during A's start: 11 less A's 10 reserved is not enough
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.ready("A")
        self.successResultOf(a).release()  # idle: B's turn, with nothing fresh measured
        self.assertEqual(self.spawned("B"), [], "B was admitted on a measurement from A's start")
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.measure(b"1\n")
        self.assertEqual(self.observer.evicted, ["A"])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.spawned("B"), [], "B waits for a measurement without A")
        self.measure(b"11\n")
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.ready("B")
        self.successResultOf(b)

    def test_check_running_when_a_start_ends_is_run_again(self) -> None:
        """A check that began during a start and ends after it is not trusted either."""
        self.supervise(
            [self.service("A", {"VRAM": 10}), self.service("B", {"VRAM": 10})],
            [ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=2.0)],
        )
        self.measure(b"11\n")
        a = self.acquire("A")
        self.measure(b"11\n")
        self.acquire("B")
        during = self.shell(self.CHECK)  # began while A starts
        self.ready("A")
        self.successResultOf(a)
        during.output(b"21\n")  # before A's model was loaded
        during.exit(0)
        self.assertEqual(self.spawned("B"), [])
        self.reactor.advance(2.0)
        self.measure(b"1\n")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)


class StatusTests(SupervisorTestCase):
    """C{snapshot} and the observers."""

    def setUp(self) -> None:
        super().setUp()
        self.supervise(
            [
                self.service(
                    "A",
                    {"VRAM": 6},
                    listen_port=8001,
                    service_url="http://localhost:8001/",
                    openai_api_models=("a-model",),
                    kill_command="stop-A",
                ),
                self.service("B", {"VRAM": 6}),
            ],
            [ResourceConfig("VRAM", 10)],
        )

    def test_snapshot_at_each_stage(self) -> None:
        """The status and resource figures through a whole life cycle."""
        stopped = ServiceStatus(
            name="A",
            listen_port=8001,
            status=ServiceState.STOPPED,
            waiting_connections=0,
            proxied_connections=0,
            last_used=None,
            service_url="http://localhost:8001/",
            resource_requirements={"VRAM": 6},
            openai_models=("a-model",),
            pid=None,
            starts=0,
            failed_starts=0,
            evictions=0,
        )
        snapshot = self.supervisor.snapshot()
        self.assertEqual(snapshot.started_at, T0)
        self.assertEqual(snapshot.services[0], stopped)
        self.assertEqual([s.name for s in snapshot.services], ["A", "B"])
        self.assertEqual(snapshot.resources, (ResourceStatus("VRAM", 10, None, 0, 0, 10, {}, 10),))

        # B busy: A waits for resources.
        b_lease = self.lease("B")
        self.reactor.advance(1)
        a_waiter = self.acquire("A")
        self.assertEqual(
            self.status("A"),
            evolve(
                stopped,
                status=ServiceState.WAITING_FOR_RESOURCES,
                waiting_connections=1,
                last_used=T0 + 1,
                # B is in use: it is not stopped for A.
                waiting_for=WaitingFor(T0 + 1, (Shortage("VRAM", 6, 4, ("B",), (), ("B",)),)),
            ),
        )
        self.assertEqual(
            self.resource("VRAM"), ResourceStatus("VRAM", 10, None, 0, 6, 4, {"B": 6, "A": 6}, 4)
        )

        # B released and evicted: A starts.
        self.reactor.advance(1)
        b_lease.release()
        pid = self.proc("A").pid
        starting = evolve(
            stopped,
            status=ServiceState.STARTING,
            waiting_connections=1,
            last_used=T0 + 1,
            pid=pid,
            starts=1,
            starting_since=T0 + 2,
        )
        self.assertEqual(self.status("A"), starting)
        self.assertEqual(self.status("B").evictions, 1)
        self.assertEqual(self.status("B").last_used, T0 + 2)
        self.assertEqual(
            self.resource("VRAM"), ResourceStatus("VRAM", 10, None, 6, 6, 4, {"A": 6}, 4)
        )

        # Ready: the waiter is served.
        self.reactor.advance(1)
        self.ready("A")
        lease = self.successResultOf(a_waiter)
        running = evolve(
            starting,
            status=ServiceState.RUNNING,
            waiting_connections=0,
            proxied_connections=1,
            last_used=T0 + 3,
            starts=1,
            starting_since=None,
            start_estimate=1.0,  # learned: that start took 1 s
        )
        self.assertEqual(self.status("A"), running)
        self.assertEqual(
            self.resource("VRAM"), ResourceStatus("VRAM", 10, None, 0, 6, 4, {"A": 6}, 4)
        )

        # Released, stopped on request: stopping while the KillCommand runs.
        self.reactor.advance(1)
        lease.release()
        self.supervisor.stop("A", False)
        self.assertEqual(
            self.status("A"),
            evolve(running, status=ServiceState.STOPPING, proxied_connections=0, last_used=T0 + 4),
        )
        self.assertEqual(
            self.resource("VRAM"), ResourceStatus("VRAM", 10, None, 0, 6, 4, {"A": 6}, 4)
        )
        self.shell("stop-A").exit(0)
        self.assertEqual(
            self.status("A"), evolve(stopped, last_used=T0 + 4, starts=1, start_estimate=1.0)
        )
        self.assertEqual(self.resource("VRAM"), ResourceStatus("VRAM", 10, None, 0, 0, 10, {}, 10))

    def test_status_changes_coalesced(self) -> None:
        """A burst of changes in one reactor turn makes one notification."""
        self.assertEqual(self.observer.snapshots, [])
        self.acquire("A")
        self.acquire("A")
        self.assertEqual(self.observer.snapshots, [])
        self.reactor.advance(0)
        [snapshot] = self.observer.snapshots
        self.assertEqual(snapshot.services[0].status, ServiceState.STARTING)
        self.assertEqual(snapshot.services[0].waiting_connections, 2)
        self.reactor.advance(0)
        self.assertEqual(len(self.observer.snapshots), 1)

    def test_start_finished(self) -> None:
        """Observers learn how long each start took."""
        d = self.acquire("A")
        self.reactor.advance(3.5)
        self.ready("A")
        self.successResultOf(d)
        self.assertEqual(self.observer.starts, [("A", 3.5, True)])

    def test_service_evicted(self) -> None:
        """Observers learn which service was evicted."""
        self.run_idle("B")
        self.acquire("A")
        self.assertEqual(self.observer.evicted, ["B"])

    def test_unsubscribe(self) -> None:
        """An unsubscribed observer hears nothing more; unsubscribing twice is harmless."""
        other = RecordingObserver(self.supervisor)
        unsubscribe = self.supervisor.subscribe(other)
        self.acquire("A")
        self.reactor.advance(0)
        self.assertEqual(len(other.snapshots), 1)
        unsubscribe()
        unsubscribe()
        self.ready("A")
        self.reactor.advance(0)
        self.assertEqual(len(other.snapshots), 1)
        self.assertEqual(other.starts, [])
        self.assertEqual(len(self.observer.snapshots), 2)

    def test_failing_observer(self) -> None:
        """An observer that raises is logged; the others are still told."""

        @implementer(IStatusObserver)
        class Broken(RecordingObserver):
            def status_changed(self, change: StatusChange) -> None:
                raise ZeroDivisionError()

        unsubscribe = self.supervisor.subscribe(Broken(self.supervisor))
        last = RecordingObserver(self.supervisor)
        self.supervisor.subscribe(last)
        self.acquire("A")
        self.reactor.advance(0)
        unsubscribe()
        self.assertEqual(len(last.snapshots), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_failing_observer_of_notices(self) -> None:
        """
        An observer that raises when told about a start or an eviction is
        logged too: the start still serves its clients, a failed start still
        fails them and frees its resources, and the eviction still happens.
        """

        @implementer(IStatusObserver)
        class Broken(RecordingObserver):
            def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
                raise ZeroDivisionError()

            def service_evicted(self, service: str) -> None:
                raise ZeroDivisionError()

        self.supervisor.subscribe(Broken(self.supervisor))
        last = RecordingObserver(self.supervisor)
        self.supervisor.subscribe(last)
        lease = self.lease("A")
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        lease.release()
        d = self.acquire("B")
        self.assertEqual(last.evicted, ["A"])
        self.shell("stop-A").exit(0)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.reactor.advance(1)
        self.proc("B").exit(1)
        self.unavailable(
            d, "service 'B' failed to start: process exited with status 1 while starting"
        )
        self.assertEqual(self.state("B"), ServiceState.STOPPED)
        self.assertEqual(self.free("VRAM"), 10)
        self.assertEqual([(name, ok) for name, _, ok in last.starts], [("A", True), ("B", False)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 3)
