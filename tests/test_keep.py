"""
Keep what should stay, start what should be ready: C{ShutDownAfterInactivitySeconds: -1},
C{Pinned}, C{StartOnLaunch} and C{Env}, on the fake reactor (the config's
side is in C{tests/test_keep_config.py}).
"""

from __future__ import annotations

import json
import os
from typing import cast

from zope.interface import implementer

from lmproxy.config import Config, ResourceConfig
from lmproxy.core.descendants import MARK_VARIABLE
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.reaper import ServiceRun, service_line
from lmproxy.core.reaper import _service as parse_service_line
from lmproxy.core.supervisor import Supervisor
from lmproxy.interfaces import (
    IStatusObserver,
    ServiceState,
    ServiceUnavailable,
    Shortage,
    StatusChange,
    WaitingFor,
)
from lmproxy.manage.statusjson import service_json
from tests.test_supervisor import T0, SupervisorTestCase, ignore_sigterm

STOPPED = ServiceState.STOPPED
WAITING = ServiceState.WAITING_FOR_RESOURCES
STARTING = ServiceState.STARTING
RUNNING = ServiceState.RUNNING
STOPPING = ServiceState.STOPPING
VRAM = [ResourceConfig("VRAM", 10)]
DAY = 86400.0


class NeverIdleTests(SupervisorTestCase):
    """C{idle_timeout=None} (C{-1} in the config): never stopped for being idle."""

    def test_runs_on_without_clients(self) -> None:
        """A service with -1 runs for days without a client; one with 60 s stops."""
        self.supervise([self.service("A", idle_timeout=None), self.service("B", idle_timeout=60.0)])
        self.run_idle("A")
        self.run_idle("B")
        self.reactor.advance(61)
        self.assertEqual(self.state("B"), STOPPED)
        self.reactor.advance(DAY)
        self.assertEqual(self.state("A"), RUNNING)
        self.assertEqual(self.state("B"), STOPPED)

    def test_still_evicted(self) -> None:
        """-1 only turns the idle timer off: an unpinned one still makes room."""
        self.supervise(
            [self.service("A", {"VRAM": 6}, idle_timeout=None), self.service("B", {"VRAM": 6})],
            VRAM,
        )
        self.run_idle("A")
        b = self.acquire("B")
        self.assertEqual(self.state("A"), STOPPED)
        self.ready("B")
        self.successResultOf(b)
        self.assertEqual(self.status("A").evictions, 1)

    def test_stop_action(self) -> None:
        """A stop action stops it."""
        self.supervise([self.service("A", idle_timeout=None)])
        self.run_idle("A")
        d = self.supervisor.stop("A", force=False)
        self.successResultOf(d)
        self.assertEqual(self.state("A"), STOPPED)


class PinnedTests(SupervisorTestCase):
    """A pinned service is never evicted; whoever needs its resources waits, and says why."""

    def pinned_and_b(self, **changes: object) -> None:
        """A (pinned, never idle) and B, 6 VRAM each of 10."""
        self.supervise(
            [
                self.service("A", {"VRAM": 6}, pinned=True, idle_timeout=None),
                self.service("B", {"VRAM": 6}),
            ],
            VRAM,
            **changes,
        )

    def test_not_evicted_and_waiting_for(self) -> None:
        """B waits while A is pinned; /status says who holds what, and that A is pinned."""
        self.pinned_and_b(max_wait=30.0)
        self.run_idle("A")
        self.reactor.advance(5)
        b = self.acquire("B")
        self.assertEqual(self.state("A"), RUNNING)
        self.assertEqual(self.state("B"), WAITING)
        self.assertEqual(
            self.status("B").waiting_for,
            WaitingFor(T0 + 5, (Shortage("VRAM", 6, 4, held_by=("A",), pinned=("A",)),)),
        )
        self.assertTrue(self.status("A").pinned)
        self.assertEqual(
            service_json(self.status("B"))["waiting_for"],
            {
                "since": "1970-01-01T00:16:45.000+00:00",
                "resources": [
                    {
                        "resource": "VRAM",
                        "needed": 6,
                        "available": 4,
                        "held_by": ["A"],
                        "pinned": ["A"],
                        "in_use": [],
                        "stopping": [],
                    }
                ],
                "behind": [],
            },
        )
        self.assertIs(service_json(self.status("A"))["pinned"], True)
        self.assertIsNone(service_json(self.status("A"))["waiting_for"])
        # Up to the max wait, then B's client is closed; A never moved.
        self.reactor.advance(30)
        self.unavailable(b, "gave up waiting 30 s for resources to start service 'B'")
        self.assertEqual(self.state("B"), STOPPED)
        self.assertIsNone(self.status("B").waiting_for)
        self.assertEqual((self.state("A"), self.status("A").evictions), (RUNNING, 0))

    def test_unpinned_not_killed_for_nothing(self) -> None:
        """What the unpinned idle ones free is not enough beside a pinned one: none stops."""
        self.supervise(
            [
                self.service("A", {"VRAM": 5}, pinned=True),
                self.service("C", {"VRAM": 3}),
                self.service("B", {"VRAM": 6}),
            ],
            VRAM,
        )
        self.run_idle("A")
        self.run_idle("C")
        self.acquire("B")
        self.assertEqual(
            (self.state("A"), self.state("C"), self.state("B")), (RUNNING,) * 2 + (WAITING,)
        )
        why = self.status("B").waiting_for
        assert why is not None
        [shortage] = why.shortages
        self.assertEqual(
            (shortage.held_by, shortage.pinned, shortage.in_use), (("A", "C"), ("A",), ())
        )

    def test_unpinned_evicted_beside_pinned(self) -> None:
        """When the unpinned idle ones free enough, they go and the pinned one stays."""
        self.supervise(
            [
                self.service("A", {"VRAM": 4}, pinned=True),
                self.service("C", {"VRAM": 4}),
                self.service("B", {"VRAM": 6}),
            ],
            VRAM,
        )
        self.run_idle("A")
        self.reactor.advance(1)
        self.run_idle("C")
        self.reactor.on_signal = ignore_sigterm  # C takes its time to stop
        b = self.acquire("B")
        self.assertEqual(self.state("C"), STOPPING)
        self.assertEqual(
            self.status("B").waiting_for,
            WaitingFor(T0 + 1, (Shortage("VRAM", 6, 2, ("A", "C"), ("A",), (), ("C",)),)),
        )
        self.reactor.advance(10)  # SIGKILL
        self.assertEqual(self.state("C"), STOPPED)
        self.ready("B")
        self.successResultOf(b)
        self.assertEqual(self.state("A"), RUNNING)

    def test_start_nobody_waits_for_is_kept(self) -> None:
        """A pinned start whose client left is not stopped mid-start for another service."""
        self.pinned_and_b()
        self.abandon("A")
        self.assertEqual(self.state("A"), STARTING)
        self.acquire("B")
        self.assertEqual((self.state("A"), self.state("B")), (STARTING, WAITING))
        self.ready("A")
        self.assertEqual((self.state("A"), self.state("B")), (RUNNING, WAITING))

    def test_own_idle_timeout_frees_the_waiter(self) -> None:
        """
        Race: a pinned service with an idle timeout stops at that timeout while B
        waits for its resources; B starts at once.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 6}, pinned=True, idle_timeout=60.0),
                self.service("B", {"VRAM": 6}),
            ],
            VRAM,
            max_wait=120.0,
        )
        self.run_idle("A")
        self.reactor.advance(30)
        b = self.acquire("B")
        self.reactor.advance(29.999)
        self.assertEqual((self.state("A"), self.state("B")), (RUNNING, WAITING))
        self.reactor.advance(0.001)
        self.assertEqual(self.state("A"), STOPPED)
        self.assertEqual(self.status("A").evictions, 0)  # it was idle, not evicted
        self.assertEqual(self.state("B"), STARTING)
        self.ready("B")
        self.successResultOf(b)

    def test_stop_action_frees_the_waiter(self) -> None:
        """A stop action still stops a pinned service, and B takes its place."""
        self.pinned_and_b()
        self.run_idle("A")
        b = self.acquire("B")
        self.supervisor.stop("A", force=False)
        self.ready("B")
        self.successResultOf(b)

    def test_in_use_and_behind(self) -> None:
        """
        Who is in use is said apart from who is pinned; a second service
        waiting for the same resource says whom it waits behind.
        """
        self.supervise(
            [
                self.service("A", {"VRAM": 6}),
                self.service("B", {"VRAM": 6}),
                self.service("C", {"VRAM": 6}),
            ],
            VRAM,
        )
        lease = self.lease("A")
        self.acquire("B")
        self.acquire("C")
        b, c = self.status("B").waiting_for, self.status("C").waiting_for
        assert b is not None and c is not None
        self.assertEqual((b.behind, b.shortages[0].in_use), ((), ("A",)))
        self.assertEqual(c.behind, ("B",))
        lease.release()  # A idle: evicted for B, the first in line
        self.assertEqual(self.state("A"), STOPPED)
        self.assertEqual((self.state("B"), self.state("C")), (STARTING, WAITING))
        self.assertIsNone(self.status("B").waiting_for)
        # B's reservation holds the VRAM now, for a client: C waits behind nobody.
        c = self.status("C").waiting_for
        assert c is not None
        self.assertEqual(
            (c.behind, c.shortages[0].held_by, c.shortages[0].in_use), ((), ("B",), ("B",))
        )

    def test_observers_hear_when_the_explanation_changes(self) -> None:
        """
        A waiting service is told as changed when what its waiting_for says
        may change (a holder gets or loses a client), so that /events carries it.
        """
        self.supervise([self.service("A", {"VRAM": 6}), self.service("B", {"VRAM": 6})], VRAM)
        changes: list[frozenset[str]] = []

        @implementer(IStatusObserver)
        class Changes:
            def status_changed(self, change: StatusChange) -> None:
                changes.append(change.services)

            def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
                pass

            def service_evicted(self, service: str) -> None:
                pass

        self.supervisor.subscribe(Changes())
        first = self.lease("A")
        self.acquire("B")
        self.reactor.advance(0)
        del changes[:]
        second = self.lease("A")  # A now has two clients: only A's counts changed
        self.reactor.advance(0)
        self.assertEqual(changes, [frozenset({"A", "B"})])
        second.release()
        first.release()  # A idle: evicted, B starts
        self.reactor.advance(0)
        self.assertEqual(self.state("B"), STARTING)


class StartOnLaunchTests(SupervisorTestCase):
    """C{start_on_launch}: started after the listeners, in config order, as resources allow."""

    def fake_reactor(self) -> ReadinessReactor:
        return cast(ReadinessReactor, self.reactor)

    def test_started_in_config_order_after_the_first_turn(self) -> None:
        """Nothing spawns in startService itself; the next reactor turn starts them, in order."""
        config = Config(
            services=(
                self.service("A", start_on_launch=True),
                self.service("B"),
                self.service("C", start_on_launch=True),
            )
        )
        self.supervisor = Supervisor(config, self.fake_reactor(), self.reactor.signal_group)
        self.addCleanup(self.shut_down)
        self.supervisor.startService()
        self.assertEqual(self.reactor.processes, [])
        self.reactor.advance(0)
        self.assertEqual([p.command[1] for p in self.reactor.processes], ["A", "C"])
        self.assertEqual(self.state("B"), STOPPED)
        self.ready("A")
        self.ready("C")
        # Nobody holds them: idle, running, their idle timer armed.
        self.assertEqual((self.state("A"), self.state("C")), (RUNNING, RUNNING))
        self.assertEqual(self.status("A").proxied_connections, 0)
        self.assertEqual(self.status("A").last_used, T0)
        self.reactor.advance(120)
        self.assertEqual(self.state("A"), STOPPED)

    def test_pinned_preload_keeps_its_place(self) -> None:
        """
        A pinned preload gets the VRAM first; a second preload that needs it waits
        (without evicting it), says why, and gives up after the max wait; lmproxy
        goes on.
        """
        self.supervise(
            [
                self.service(
                    "A", {"VRAM": 6}, pinned=True, start_on_launch=True, idle_timeout=None
                ),
                self.service("B", {"VRAM": 6}, start_on_launch=True),
            ],
            VRAM,
            max_wait=20.0,
        )
        self.assertEqual((self.state("A"), self.state("B")), (STARTING, WAITING))
        self.ready("A")
        self.assertEqual((self.state("A"), self.state("B")), (RUNNING, WAITING))
        why = self.status("B").waiting_for
        assert why is not None
        self.assertEqual(why.shortages[0].pinned, ("A",))
        self.reactor.advance(20)
        self.assertEqual((self.state("A"), self.state("B")), (RUNNING, STOPPED))
        # A client of B later waits too, like the preload did.
        self.assertNoResult(self.acquire("B"))
        self.assertEqual(self.state("B"), WAITING)

    def test_unpinned_preload_may_be_evicted_later(self) -> None:
        """A preloaded service that is not pinned is idle: a client of another evicts it."""
        self.supervise(
            [self.service("A", {"VRAM": 6}, start_on_launch=True), self.service("B", {"VRAM": 6})],
            VRAM,
        )
        self.ready("A")
        b = self.acquire("B")
        self.assertEqual(self.state("A"), STOPPED)
        self.ready("B")
        self.successResultOf(b)

    def test_client_shares_the_preload(self) -> None:
        """Race: a client arriving while the preload starts shares that one start."""
        self.supervise([self.service("A", start_on_launch=True)])
        d = self.acquire("A")
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.status("A").waiting_connections, 2)
        self.ready("A")
        lease = self.successResultOf(d)
        self.assertEqual(len(self.spawned("A")), 1)
        self.assertEqual(self.status("A").proxied_connections, 1)
        lease.release()

    def test_failed_preload_backs_off(self) -> None:
        """A preload whose server exits is a failed start: logged, back-off, lmproxy goes on."""
        self.supervise([self.service("A", start_on_launch=True), self.service("B")])
        self.proc("A").exit(1)
        self.assertEqual(self.state("A"), STOPPED)
        self.assertEqual(self.status("A").failed_starts, 1)
        refused = self.acquire("A")
        self.failureResultOf(refused, ServiceUnavailable)
        # Another service is not affected.
        self.run_idle("B")
        self.assertEqual(self.state("B"), RUNNING)

    def test_shutdown_while_the_preload_waits(self) -> None:
        """Race: lmproxy stops while a preload waits for resources; it ends quietly."""
        self.supervise(
            [
                self.service("A", {"VRAM": 6}, pinned=True, start_on_launch=True),
                self.service("B", {"VRAM": 6}, start_on_launch=True),
            ],
            VRAM,
        )
        self.ready("A")
        self.assertEqual(self.state("B"), WAITING)
        d = self.supervisor.stopService()
        self.successResultOf(d)
        self.assertEqual((self.state("A"), self.state("B")), (STOPPED, STOPPED))
        self.assertEqual(len(self.spawned("B")), 0)

    def test_shutdown_before_the_first_turn(self) -> None:
        """A stop before the reactor turns starts nothing."""
        supervisor = Supervisor(
            Config(services=(self.service("A", start_on_launch=True),)),
            self.fake_reactor(),
            self.reactor.signal_group,
        )
        supervisor.startService()
        self.successResultOf(supervisor.stopService())
        self.reactor.advance(0)
        self.assertEqual(self.reactor.processes, [])


class EnvTests(SupervisorTestCase):
    """C{env}: in the service's environment, its healthcheck's and its KillCommand's."""

    ENV = {"CUDA_VISIBLE_DEVICES": "1", "PATH": "/opt/bin", "EMPTY": ""}

    def test_command_healthcheck_and_kill_command(self) -> None:
        self.supervise(
            [self.service("A", env=self.ENV, healthcheck_command="hc", kill_command="kc")]
        )
        self.acquire("A")
        env = self.proc("A").env
        assert env is not None
        self.assertEqual({k: env[k] for k in self.ENV}, self.ENV)
        self.assertIn(MARK_VARIABLE, env)
        healthcheck = self.shell("hc")
        assert healthcheck.env is not None
        self.assertEqual({k: healthcheck.env[k] for k in self.ENV}, self.ENV)
        healthcheck.exit(0)
        self.reactor.advance(1)  # its pipes are read
        self.ready("A")
        self.assertEqual(self.state("A"), RUNNING)
        self.supervisor.stop("A", force=True)
        kill = self.shell("kc")
        assert kill.env is not None
        self.assertEqual({k: kill.env[k] for k in self.ENV}, self.ENV)
        self.assertNotIn(MARK_VARIABLE, kill.env)
        kill.exit(0)

    def test_without_env(self) -> None:
        """No Env: lmproxy's environment, unchanged but for the mark."""
        self.supervise([self.service("A")])
        self.acquire("A")
        env = self.proc("A").env
        assert env is not None
        self.assertEqual({k: v for k, v in env.items() if k != MARK_VARIABLE}, dict(os.environ))

    def test_watchdog_line(self) -> None:
        """The watchdog learns the Env with the KillCommand; a run without one writes none."""
        run = ServiceRun("m", "kc", "/w", (("A", "1"), ("B", "x y")))
        line = service_line(7, run)
        self.assertEqual(json.loads(line[1:])["env"], {"A": "1", "B": "x y"})
        self.assertEqual(parse_service_line(line[1:-1].decode()), (7, run))
        self.assertNotIn(b"env", service_line(7, ServiceRun("m", "kc")))
        self.assertEqual(
            parse_service_line(service_line(7, ServiceRun("m"))[1:-1].decode()),
            (7, ServiceRun("m")),
        )
        bad = json.dumps(
            {"pgid": 7, "mark": "m", "kill_command": None, "work_dir": None, "env": [1]}
        )
        self.assertIsNone(parse_service_line(bad))
