"""
Tests for L{lmproxy.core.lifecycle}: one service's state machine on its own,
with a recording owner in place of the supervisor, on a
L{MemoryProcessReactor}.  The supervisor's tests cover lifecycles scheduled
together; these cover the machine itself: the transitions it makes, in which
order its owner hears of them, and that a move the table does not list is a
programming error.
"""

from __future__ import annotations

import os
from typing import cast

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.lifecycle import ServiceLifecycle
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.startup import Launcher, StartAttempt
from lmproxy.core.states import (
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    TRANSITIONS,
    WAITING,
    ImpossibleTransition,
)
from lmproxy.interfaces import ILease, ServiceState, ServiceUnavailable
from lmproxy.testing import MemoryProcessReactor

PORT = 9001
Move = tuple[ServiceState, ServiceState]


@define
class RecordingOwner:
    """A L{LifecycleOwner} that places a waiting service at once and records everything."""

    shutting_down: bool = False
    place: bool = True
    moves: list[Move] = field(factory=list)
    idles: int = 0
    changes: int = 0
    starts: list[bool] = field(factory=list)

    def transitioned(
        self, lifecycle: ServiceLifecycle, old: ServiceState, new: ServiceState
    ) -> None:
        self.moves.append((old, new))
        if new is WAITING and self.place:
            lifecycle.start()

    def idle(self, lifecycle: ServiceLifecycle) -> None:
        self.idles += 1

    def changed(self, lifecycle: ServiceLifecycle) -> None:
        self.changes += 1

    def start_finished(self, lifecycle: ServiceLifecycle, seconds: float, ok: bool) -> None:
        self.starts.append(ok)


class LifecycleTests(SynchronousTestCase):
    """A whole life, its moves, and the moves it may not make."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.owner = RecordingOwner()
        config = ServiceConfig(
            name="A",
            command="true",
            proxy_target_host="127.0.0.1",
            proxy_target_port=PORT,
            log_file_path=os.path.join(os.path.abspath(self.mktemp()), "A.log"),
            idle_timeout=60.0,
        )
        launcher = Launcher(cast(ReadinessReactor, self.reactor), self.reactor.signal_group, False)
        self.lifecycle = ServiceLifecycle(config, self.owner, launcher, max_wait=30.0)
        self.addCleanup(self.end_processes)

    def end_processes(self) -> None:
        """Processes still running at the end exit (closing their log files)."""
        for process in self.reactor.live_processes():
            process.exit(0)

    def test_table(self) -> None:
        """
        The table has the moves the module's diagram draws, and every state
        can be reached and left.
        """
        self.assertEqual(
            TRANSITIONS,
            {
                (STOPPED, WAITING),
                (WAITING, STOPPED),
                (WAITING, STARTING),
                (STARTING, RUNNING),
                (STARTING, STOPPING),
                (RUNNING, STOPPING),
                (RUNNING, STOPPED),
                (STOPPING, STOPPED),
            },
        )
        self.assertEqual({old for old, _ in TRANSITIONS}, set(ServiceState))
        self.assertEqual({new for _, new in TRANSITIONS}, set(ServiceState))

    def test_a_whole_life(self) -> None:
        """Client, start, ready, idle timeout, stop: each move in order, each in the table."""
        d = self.lifecycle.acquire()
        self.assertEqual(self.lifecycle.state, STARTING)
        self.reactor.accept_connection(PORT)
        lease = self.successResultOf(d)
        self.assertEqual(self.lifecycle.state, RUNNING)
        lease.release()
        self.assertEqual(self.owner.idles, 1)
        self.reactor.advance(60)
        self.assertEqual(self.lifecycle.state, STOPPED)
        self.assertEqual(
            self.owner.moves,
            [
                (STOPPED, WAITING),
                (WAITING, STARTING),
                (STARTING, RUNNING),
                (RUNNING, STOPPING),
                (STOPPING, STOPPED),
            ],
        )
        self.assertTrue(set(self.owner.moves) <= TRANSITIONS)
        self.assertEqual(self.owner.starts, [True])

    def test_idle_timeout_from_the_last_use(self) -> None:
        """Uses push the idle stop back, without a reactor call per use."""
        d = self.lifecycle.acquire()
        self.reactor.accept_connection(PORT)
        self.successResultOf(d).release()
        calls = [c.func for c in self.reactor.getDelayedCalls()]
        for _ in range(5):
            self.reactor.advance(25)
            self.successResultOf(self.lifecycle.acquire()).release()
            self.assertEqual([c.func for c in self.reactor.getDelayedCalls()], calls)
        self.reactor.advance(59.9)
        self.assertEqual(self.lifecycle.state, RUNNING)
        self.reactor.advance(0.1)
        self.assertEqual(self.lifecycle.state, STOPPED)

    def test_failed_start(self) -> None:
        """A process that exits while starting: starting, stopping, stopped; waiters fail."""
        d = self.lifecycle.acquire()
        [process] = self.reactor.processes
        process.exit(3)
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(self.owner.moves[2:], [(STARTING, STOPPING), (STOPPING, STOPPED)])
        self.assertEqual(self.owner.starts, [False])
        self.assertEqual(self.lifecycle.status().failed_starts, 1)

    def test_last_waiter_leaves(self) -> None:
        """Not placed, its only client leaves: back to stopped, with nothing started."""
        self.owner.place = False
        d = self.lifecycle.acquire()
        self.assertEqual(self.lifecycle.state, WAITING)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.owner.moves, [(STOPPED, WAITING), (WAITING, STOPPED)])
        self.assertEqual(self.reactor.processes, [])

    def test_idle(self) -> None:
        """
        Idle: running with no lease, or starting with nobody waiting; the
        owner hears when a start loses its last waiter, and when a stop ends
        the start, that is no failed start.
        """
        self.assertFalse(self.lifecycle.idle, "stopped: nothing to evict")
        first, second = self.lifecycle.acquire(), self.lifecycle.acquire()
        self.assertFalse(self.lifecycle.idle, "starting for its clients")
        first.cancel()
        self.assertEqual((self.lifecycle.idle, self.owner.idles), (False, 0))
        second.cancel()
        for d in (first, second):
            self.failureResultOf(d, CancelledError)
        self.assertEqual((self.lifecycle.state, self.lifecycle.idle), (STARTING, True))
        self.assertEqual(self.owner.idles, 1)
        self.lifecycle.stop("evicted for B")  # SIGTERM: the fake process exits
        self.assertEqual(self.owner.moves[2:], [(STARTING, STOPPING), (STOPPING, STOPPED)])
        self.assertEqual((self.lifecycle.status().failed_starts, self.owner.starts), (0, []))
        self.assertFalse(self.lifecycle.idle)

    def test_acquired_again_by_a_stop_waiter(self) -> None:
        """
        Whoever waits for a stop may acquire the service again at once, from
        the stop's callback: it starts again, with no impossible transition.
        """
        first = self.lifecycle.acquire()
        self.reactor.accept_connection(PORT)
        self.successResultOf(first).release()
        again: list[Deferred[ILease]] = []
        self.lifecycle.stop("on request").addCallback(
            lambda _: again.append(self.lifecycle.acquire())
        )
        self.assertEqual(len(again), 1)  # the fake process exited on SIGTERM at once
        self.assertEqual(self.lifecycle.state, STARTING)
        self.assertEqual(
            self.owner.moves[-3:], [(STOPPING, STOPPED), (STOPPED, WAITING), (WAITING, STARTING)]
        )
        self.reactor.accept_connection(PORT)
        self.successResultOf(again[0]).release()

    def test_a_start_that_crashes_fails(self) -> None:
        """A bug in a start attempt is logged, and the start fails: never starting for ever."""

        class Crashing(StartAttempt):
            async def run(self) -> str:
                raise RuntimeError("a bug")

        class CrashingLauncher(Launcher):
            def attempt(self, config: ServiceConfig) -> StartAttempt:
                return Crashing(self, config)

        launcher = CrashingLauncher(
            cast(ReadinessReactor, self.reactor), self.reactor.signal_group, False
        )
        lifecycle = ServiceLifecycle(self.lifecycle.config, self.owner, launcher, max_wait=30.0)
        d = lifecycle.acquire()
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(lifecycle.state, STOPPED)
        self.assertEqual(self.owner.starts, [False])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_process_exits_on_its_own(self) -> None:
        """A running service whose process exits becomes stopped without stopping."""
        self.lifecycle.acquire()
        self.reactor.accept_connection(PORT)
        [process] = self.reactor.processes
        process.exit(0)
        self.assertEqual(self.owner.moves[-1], (RUNNING, STOPPED))
        self.assertIsNone(self.lifecycle.process)

    def test_impossible_transition(self) -> None:
        """
        Starting a service nobody placed (it is stopped, not waiting) is a
        programming error: it raises, and the state stays as it was.
        """
        with self.assertRaises(ImpossibleTransition) as raised:
            self.lifecycle.start()
        self.assertEqual(str(raised.exception), "service 'A': stopped -> starting")
        self.assertEqual(self.lifecycle.state, STOPPED)
        self.assertEqual(self.owner.moves, [])
        self.assertEqual(self.reactor.processes, [])

    def test_impossible_transition_while_running(self) -> None:
        """Placing a running service again is refused the same way."""
        self.lifecycle.acquire()
        self.reactor.accept_connection(PORT)
        self.assertRaises(ImpossibleTransition, self.lifecycle.start)
        self.assertEqual(self.lifecycle.state, RUNNING)
        self.assertEqual(len(self.reactor.processes), 1)
