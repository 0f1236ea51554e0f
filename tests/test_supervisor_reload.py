"""
Tests for L{Supervisor.reconfigure}: a reloaded config applied to running
services on the fake process reactor (see L{lmproxy.core.lifecyclereload}).
"""

from __future__ import annotations

import signal
from typing import Any

from attrs import evolve

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.interfaces import (
    REMOVAL,
    RESTART,
    ILease,
    ReloadOutcome,
    ServiceState,
    ServiceUnavailable,
    UnknownService,
)
from tests.test_supervisor import HOST, TRUE, SupervisorTestCase


class ReloadTestCase(SupervisorTestCase):
    """Supervises A and B (4 VRAM each of 10) and reloads a changed config."""

    def setUp(self) -> None:
        super().setUp()
        self.a = self.service("A", {"VRAM": 4})
        self.b = self.service("B", {"VRAM": 4})
        self.vram = [ResourceConfig("VRAM", 10)]
        self.supervise([self.a, self.b], self.vram)

    def reload(
        self,
        services: list[ServiceConfig],
        resources: list[ResourceConfig] | None = None,
        force: bool = False,
        **changes: Any,
    ) -> ReloadOutcome:
        resources = self.vram if resources is None else resources
        config = Config(services=tuple(services), resources=tuple(resources), **changes)
        return self.supervisor.reconfigure(config, force)

    def runs(self, name: str, *args: str) -> list[int]:
        """The pids of the live processes of C{name} run with C{args}."""
        live = self.reactor.live_processes()
        return [p.pid for p in live if p.command == [TRUE, name, *args]]

    def names(self) -> list[str]:
        return [s.name for s in self.supervisor.snapshot().services]


class KeepAndUpdateTests(ReloadTestCase):
    """What did not change keeps running; what applies as it is applies at once."""

    def test_unchanged_keeps_running_with_its_clients(self) -> None:
        """The same settings: the same process, its lease still good."""
        lease = self.lease("A")
        [pid] = self.runs("A")
        outcome = self.reload([self.a, self.b])
        self.assertEqual(outcome, ReloadOutcome(unchanged=("A", "B")))
        self.assertEqual(self.runs("A"), [pid])
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.status("A").proxied_connections, 1)
        lease.release()

    def test_idle_timeout_follows_at_once(self) -> None:
        """A shorter idle timeout counts from the last use, not from the reload."""
        self.run_idle("A")
        self.reactor.advance(50)
        outcome = self.reload([evolve(self.a, idle_timeout=60.0), self.b])
        self.assertEqual(outcome.updated, ("A",))
        self.reactor.advance(9.9)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.reactor.advance(0.1)
        self.assertEqual(self.state("A"), ServiceState.STOPPED)

    def test_never_idle_stopped_after_reload(self) -> None:
        """An idle timeout of -1 (None) given by a reload cancels the pending stop."""
        self.run_idle("A")
        self.reload([evolve(self.a, idle_timeout=None), self.b])
        self.reactor.advance(10_000)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)

    def test_requirements_follow_without_restart(self) -> None:
        """A corrected requirement of a running service is what it holds now."""
        self.run_idle("A")
        self.assertEqual(self.free("VRAM"), 6)
        outcome = self.reload([evolve(self.a, resource_requirements={"VRAM": 7}), self.b])
        self.assertEqual(outcome.updated, ("A",))
        self.assertEqual(self.free("VRAM"), 3)
        self.assertEqual(self.reactor.signals, [])

    def test_unpinned_by_reload_may_be_evicted(self) -> None:
        """A waiting service that could not evict a pinned one can once it is not pinned."""
        a, b = evolve(self.a, pinned=True), evolve(self.b, resource_requirements={"VRAM": 8})
        self.reload([a, b])
        self.run_idle("A")
        d = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.reload([self.a, b])
        self.assertEqual(self.state("A"), ServiceState.STOPPED)
        self.ready("B")
        self.successResultOf(d).release()

    def test_more_resources_let_a_waiting_service_start(self) -> None:
        """A larger total is used at once by who waits for it."""
        self.run_idle("A")
        big = evolve(self.b, resource_requirements={"VRAM": 8})
        self.reload([self.a, big])
        lease = self.lease("A")
        d = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.reload([self.a, big], [ResourceConfig("VRAM", 12)])
        self.assertEqual(self.state("B"), ServiceState.STARTING)
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.ready("B")
        self.successResultOf(d).release()
        lease.release()


class RestartTests(ReloadTestCase):
    """A change of how the process runs restarts it, once nobody uses it."""

    def test_idle_service_restarted_at_once(self) -> None:
        """Idle and running: stopped, then started again with the new arguments."""
        self.run_idle("A")
        [old] = self.runs("A")
        outcome = self.reload([evolve(self.a, args="A --v2"), self.b])
        self.assertEqual(outcome, ReloadOutcome(restarted=("A",), unchanged=("B",)))
        self.assertEqual(self.reactor.signals, [(old, signal.SIGTERM)])
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        [new] = self.runs("A", "--v2")
        self.ready("A")
        self.assertEqual(self.state("A"), ServiceState.RUNNING)
        self.assertEqual(self.status("A").pid, new)
        self.assertIsNone(self.status("A").pending_reload)

    def test_stopped_service_not_started(self) -> None:
        """A stopped service takes the new settings and stays stopped."""
        outcome = self.reload([evolve(self.a, args="A --v2"), self.b])
        self.assertEqual(outcome.updated, ("A",))
        self.assertEqual(self.reactor.live_processes(), [])
        self.lease("A").release()
        self.assertEqual(len(self.runs("A", "--v2")), 1)

    def test_busy_service_restarts_once_its_connections_end(self) -> None:
        """
        A client keeps its connection to the old run; a new client waits for
        the new run, which starts once the old client is done.
        """
        old_lease = self.lease("A")
        [old] = self.runs("A")
        outcome = self.reload([evolve(self.a, args="A --v2"), self.b])
        self.assertEqual(outcome.restart_pending, ("A",))
        self.assertEqual(self.status("A").pending_reload, RESTART)
        self.assertEqual(self.reactor.signals, [])
        new_client = self.acquire("A")
        self.assertNoResult(new_client)
        self.assertEqual(self.status("A").waiting_connections, 1)
        old_lease.release()
        self.assertEqual(self.reactor.signals, [(old, signal.SIGTERM)])
        [new] = self.runs("A", "--v2")
        self.ready("A")
        lease = self.successResultOf(new_client)
        self.assertEqual((lease.host, lease.port), (HOST, self.a.proxy_target_port))
        self.assertEqual(self.status("A").pid, new)
        self.assertIsNone(self.status("A").pending_reload)
        lease.release()

    def test_forced_restart_cuts_clients(self) -> None:
        """With force, a busy service is restarted at once."""
        lease = self.lease("A")
        [old] = self.runs("A")
        outcome = self.reload([evolve(self.a, args="A --v2"), self.b], force=True)
        self.assertEqual(outcome.restarted, ("A",))
        self.assertEqual(self.reactor.signals, [(old, signal.SIGTERM)])
        self.assertEqual(len(self.runs("A", "--v2")), 1)
        lease.release()  # the cut client's release changes nothing now
        self.assertEqual(self.state("A"), ServiceState.STARTING)

    def test_force_finishes_a_pending_restart(self) -> None:
        """A forced reload of the same config restarts what waited for its clients."""
        lease = self.lease("A")
        changed = evolve(self.a, args="A --v2")
        self.reload([changed, self.b])
        outcome = self.reload([changed, self.b], force=True)
        self.assertEqual(outcome.restarted, ("A",))
        self.assertEqual(len(self.runs("A", "--v2")), 1)
        lease.release()

    def test_change_back_cancels_the_pending_restart(self) -> None:
        """Reloaded back to what runs: nothing to restart, clients served by the run."""
        lease = self.lease("A")
        self.reload([evolve(self.a, args="A --v2"), self.b])
        waiting = self.acquire("A")
        self.assertNoResult(waiting)
        outcome = self.reload([self.a, self.b])
        self.assertEqual(outcome.updated, ("A",))
        self.assertIsNone(self.status("A").pending_reload)
        lease.release()
        self.assertEqual(self.reactor.signals, [])
        self.assertEqual(len(self.runs("A")), 1)
        self.successResultOf(waiting).release()  # served by the run it waited to replace

    def test_restart_while_starting_keeps_its_clients(self) -> None:
        """
        A change while it starts abandons that start; its waiting client is
        not failed: it is served by the start with the new settings.
        """
        d = self.acquire("A")
        [old] = self.runs("A")
        outcome = self.reload([evolve(self.a, args="A --v2"), self.b])
        self.assertEqual(outcome.restarted, ("A",))
        self.assertEqual(self.reactor.signals, [(old, signal.SIGTERM)])
        self.assertNoResult(d)
        [new] = self.runs("A", "--v2")
        self.ready("A")
        self.assertEqual(self.status("A").pid, new)
        self.successResultOf(d).release()

    def test_restart_waits_for_resources_within_max_wait(self) -> None:
        """A restarted service that needs more than is free makes its clients wait, bounded."""
        lease_b = self.lease("B")
        lease_a = self.lease("A")
        bigger = evolve(self.a, args="A --v2", resource_requirements={"VRAM": 8})
        self.reload([bigger, self.b], max_wait=30.0)
        waiting = self.acquire("A")
        lease_a.release()
        self.assertEqual(self.state("A"), ServiceState.WAITING_FOR_RESOURCES)
        self.reactor.advance(29.9)
        self.assertNoResult(waiting)
        self.reactor.advance(0.1)
        failure = self.failureResultOf(waiting, ServiceUnavailable)
        self.assertIn("gave up waiting 30 s", str(failure.value))
        lease_b.release()

    def test_process_exit_during_pending_restart(self) -> None:
        """Its process exits on its own while a restart waits: the new settings are used next."""
        lease = self.lease("A")
        self.reload([evolve(self.a, args="A --v2"), self.b])
        waiting = self.acquire("A")
        self.proc("A").exit(1)
        self.assertEqual(self.state("A"), ServiceState.STARTING)
        self.assertEqual(len(self.runs("A", "--v2")), 1)
        self.ready("A")
        self.successResultOf(waiting).release()
        lease.release()


class AddRemoveTests(ReloadTestCase):
    """Services come and go with the config."""

    def test_added_service_appears(self) -> None:
        """A new service is listed in config order and can be used."""
        c = self.service("C", {"VRAM": 2})
        outcome = self.reload([self.a, c, self.b])
        self.assertEqual(outcome.added, ("C",))
        self.assertEqual(self.names(), ["A", "C", "B"])
        self.lease("C").release()
        self.assertEqual(self.state("C"), ServiceState.RUNNING)

    def test_added_with_start_on_launch_starts(self) -> None:
        """A new service with StartOnLaunch starts without a client."""
        c = self.service("C", {"VRAM": 2}, start_on_launch=True)
        self.reload([self.a, self.b, c])
        self.assertEqual(self.state("C"), ServiceState.STARTING)

    def test_removed_idle_service_stops_and_goes(self) -> None:
        """A removed idle service is stopped, and then no longer listed."""
        self.run_idle("A")
        [pid] = self.runs("A")
        outcome = self.reload([self.b])
        self.assertEqual(outcome.removed, ("A",))
        self.assertEqual(self.reactor.signals, [(pid, signal.SIGTERM)])
        self.assertEqual(self.names(), ["B"])
        self.assertEqual(self.free("VRAM"), 10)

    def test_removed_stopped_service_goes_at_once(self) -> None:
        """A removed service that never ran just goes."""
        self.assertEqual(self.reload([self.b]).removed, ("A",))
        self.assertEqual(self.names(), ["B"])
        self.unavailable_unknown("A")

    def unavailable_unknown(self, name: str) -> None:
        self.failureResultOf(self.supervisor.acquire(name), UnknownService)

    def test_removed_busy_service_stops_once_idle(self) -> None:
        """Its client finishes; nobody new gets it; then it stops and goes."""
        lease = self.lease("A")
        [pid] = self.runs("A")
        outcome = self.reload([self.b])
        self.assertEqual(outcome.removal_pending, ("A",))
        self.assertEqual(self.status("A").pending_reload, REMOVAL)
        self.unavailable(self.acquire("A"), "service 'A' was removed from the config")
        self.assertEqual(self.reactor.signals, [])
        lease.release()
        self.assertEqual(self.reactor.signals, [(pid, signal.SIGTERM)])
        self.assertEqual(self.names(), ["B"])

    def test_removed_while_clients_wait(self) -> None:
        """Clients waiting for a removed service are told so at once."""
        self.two_services_full()
        d = self.acquire("B")
        self.assertEqual(self.state("B"), ServiceState.WAITING_FOR_RESOURCES)
        self.reload([self.a])
        self.unavailable(d, "service 'B' was removed from the config")
        self.assertEqual(self.names(), ["A"])

    def two_services_full(self) -> None:
        big = evolve(self.b, resource_requirements={"VRAM": 8})
        self.reload([self.a, big])
        self.lease("A")  # held to the end of the test

    def test_back_in_the_config_before_it_stopped(self) -> None:
        """Removed, then added back while its client still uses it: it just stays."""
        lease = self.lease("A")
        self.reload([self.b])
        outcome = self.reload([self.a, self.b])
        self.assertEqual(outcome.updated, ("A",))
        self.assertIsNone(self.status("A").pending_reload)
        lease.release()
        self.assertEqual(self.reactor.signals, [])
        self.lease("A").release()

    def test_queued_clients_of_a_removed_service_may_leave(self) -> None:
        """A removed service's port may still count its queued clients down; not below 0."""
        self.supervisor.queued("A", 1)
        self.reload([self.b])
        self.supervisor.queued("A", -1)  # no UnknownService: it was there
        self.failureResultOf(self.supervisor.acquire("A"), UnknownService)
        self.reload([self.a, self.b])
        self.supervisor.queued("A", -1)
        self.assertEqual(self.status("A").queued_connections, 0)
        self.assertRaises(UnknownService, self.supervisor.queued, "never", 1)

    def test_forced_removal_stops_a_busy_service(self) -> None:
        lease: ILease = self.lease("A")
        [pid] = self.runs("A")
        self.assertEqual(self.reload([self.b], force=True).removed, ("A",))
        self.assertEqual(self.reactor.signals, [(pid, signal.SIGTERM)])
        self.assertEqual(self.names(), ["B"])
        lease.release()

    def test_removed_resource_measurement_dropped(self) -> None:
        """A resource whose CheckCommand changed is measured again by the new one."""
        measured = [ResourceConfig("GPU", None, check_command=self.CHECK)]
        self.reload([self.a, self.b], self.vram + measured)
        self.measure(b"100\n")
        self.assertEqual(self.free("GPU"), 100)
        new_check = [ResourceConfig("GPU", None, check_command="other-check")]
        self.reload([self.a, self.b], self.vram + new_check)
        self.assertIsNone(self.free("GPU"))
        check = self.shell("other-check")
        check.output(b"50\n")
        check.exit(0)
        self.assertEqual(self.free("GPU"), 50)
