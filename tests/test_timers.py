"""Tests for L{lmproxy.timers.Timer}: at most one pending call."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.timers import Timer


class TimerTests(SynchronousTestCase):
    """Arm, re-arm, fire and cancel."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.timer = Timer(self.clock)
        self.calls: list[str] = []

    def test_fires_once_after_its_delay(self) -> None:
        self.timer.arm(2, self.calls.append, "a")
        self.assertTrue(self.timer.pending)
        self.clock.advance(1.9)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["a"])
        self.assertFalse(self.timer.pending)
        self.clock.advance(10)
        self.assertEqual(self.calls, ["a"])

    def test_arm_replaces_the_pending_call(self) -> None:
        self.timer.arm(1, self.calls.append, "first")
        self.timer.arm(3, self.calls.append, "second")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertEqual(self.calls, ["second"])

    def test_cancel(self) -> None:
        """Cancel drops the call; cancelling again, or with nothing armed, is harmless."""
        self.timer.cancel()
        self.timer.arm(1, self.calls.append, "a")
        self.timer.cancel()
        self.timer.cancel()
        self.assertFalse(self.timer.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2)
        self.assertEqual(self.calls, [])

    def test_rearm_from_the_call_itself(self) -> None:
        """The call may arm the timer again (a keepalive)."""

        def beat() -> None:
            self.calls.append("beat")
            self.timer.arm(1, beat)

        self.timer.arm(1, beat)
        self.clock.pump([1, 1, 1])
        self.assertEqual(self.calls, ["beat"] * 3)
        self.assertTrue(self.timer.pending)


class PushTests(SynchronousTestCase):
    """L{Timer.push}: a deadline moved at every use, without a reactor call per use."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.timer = Timer(self.clock)
        self.calls: list[str] = []

    def test_fires_after_the_last_push(self) -> None:
        self.timer.push(10, self.calls.append, "a")
        first = self.clock.getDelayedCalls()
        self.clock.advance(4)
        self.timer.push(10, self.calls.append, "b")
        self.assertEqual(self.clock.getDelayedCalls(), first, "no new reactor call")
        self.clock.advance(10 - 0.001)
        self.assertEqual(self.calls, [])
        self.assertTrue(self.timer.pending)
        self.clock.advance(0.001)
        self.assertEqual(self.calls, ["b"], "the last push's call")
        self.assertFalse(self.timer.pending)

    def test_inexact_times(self) -> None:
        """Deadlines that floats do not hold exactly fire when due, once."""
        for _ in range(7):
            self.clock.advance(0.1)
            self.timer.push(0.3, self.calls.append, "a")
        self.clock.advance(0.29)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.01)
        self.assertEqual(self.calls, ["a"])
        self.clock.advance(5)
        self.assertEqual(self.calls, ["a"])

    def test_sooner_deadline_rearms(self) -> None:
        self.timer.push(10, self.calls.append, "late")
        self.timer.push(1, self.calls.append, "soon")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(self.calls, ["soon"])
        self.clock.advance(20)
        self.assertEqual(self.calls, ["soon"])

    def test_push_replaces_an_armed_call(self) -> None:
        self.timer.arm(1, self.calls.append, "armed")
        self.timer.push(5, self.calls.append, "pushed")
        self.clock.advance(1)
        self.assertEqual(self.calls, [])
        self.clock.advance(4)
        self.assertEqual(self.calls, ["pushed"])

    def test_arm_replaces_a_pushed_call(self) -> None:
        self.timer.push(1, self.calls.append, "pushed")
        self.timer.arm(5, self.calls.append, "armed")
        self.clock.advance(5)
        self.assertEqual(self.calls, ["armed"])

    def test_cancel(self) -> None:
        self.timer.push(1, self.calls.append, "a")
        self.clock.advance(0.5)
        self.timer.push(1, self.calls.append, "a")
        self.clock.advance(0.5)  # the first call re-armed for the rest
        self.timer.cancel()
        self.assertFalse(self.timer.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.calls, [])

    def test_push_from_the_call_itself(self) -> None:
        def again() -> None:
            self.calls.append("again")
            self.timer.push(1, again)

        self.timer.push(1, again)
        self.clock.pump([1, 1, 1])
        self.assertEqual(self.calls, ["again"] * 3)
