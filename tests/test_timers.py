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
