"""
Tests for L{lmproxy.core.status.StatusPublisher}: observers hear the names of
what changed, once per reactor turn, and a snapshot is never built for them.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lmproxy.core.status import StatusPublisher
from lmproxy.interfaces import IStatusObserver, StatusChange


@implementer(IStatusObserver)
class Recorder:
    """Records what it is told."""

    def __init__(self) -> None:
        self.changes: list[StatusChange] = []
        self.notices: list[tuple[str, ...]] = []

    def status_changed(self, change: StatusChange) -> None:
        self.changes.append(change)

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        self.notices.append(("start_finished", service, str(seconds), str(succeeded)))

    def service_evicted(self, service: str) -> None:
        self.notices.append(("evicted", service))


class PublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.publisher = StatusPublisher(self.clock)
        self.recorder = Recorder()
        self.unsubscribe = self.publisher.subscribe(self.recorder)

    def test_one_call_per_turn_with_every_name(self) -> None:
        self.publisher.service_changed("a")
        self.publisher.service_changed("b", ["VRAM"])
        self.publisher.service_changed("a", ["RAM"])
        self.publisher.resource_changed("GPU")
        self.assertEqual(self.recorder.changes, [], "nothing before the turn ends")
        self.clock.advance(0)
        self.assertEqual(
            self.recorder.changes,
            [StatusChange(frozenset({"a", "b"}), frozenset({"VRAM", "RAM", "GPU"}))],
        )
        self.clock.advance(0)
        self.assertEqual(len(self.recorder.changes), 1, "told once")

    def test_next_turn_is_a_new_change(self) -> None:
        self.publisher.service_changed("a")
        self.clock.advance(0)
        self.publisher.service_changed("b")
        self.clock.advance(0)
        self.assertEqual(
            [c.services for c in self.recorder.changes], [frozenset({"a"}), frozenset({"b"})]
        )

    def test_nothing_pending_without_observers(self) -> None:
        """With nobody listening, a change costs no timer and is not remembered."""
        self.unsubscribe()
        self.publisher.service_changed("a", ["VRAM"])
        self.publisher.resource_changed("VRAM")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.publisher.subscribe(self.recorder)
        self.publisher.service_changed("b")
        self.clock.advance(0)
        self.assertEqual(self.recorder.changes, [StatusChange(frozenset({"b"}), frozenset())])

    def test_notices_at_once(self) -> None:
        self.publisher.start_finished("a", 1.5, True)
        self.publisher.service_evicted("b")
        self.assertEqual(
            self.recorder.notices, [("start_finished", "a", "1.5", "True"), ("evicted", "b")]
        )

    def test_failing_observer(self) -> None:
        """An observer that raises is logged; the ones after it are still told."""

        @implementer(IStatusObserver)
        class Broken(Recorder):
            def status_changed(self, change: StatusChange) -> None:
                raise ZeroDivisionError()

        self.unsubscribe()
        self.publisher.subscribe(Broken())
        self.publisher.subscribe(self.recorder)
        self.publisher.service_changed("a")
        self.clock.advance(0)
        self.assertEqual(len(self.recorder.changes), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
