"""
Tests for L{lmproxy.manage.timeline} and C{GET /timeline}: the last hour of
every service, over L{ScriptedBackends} and a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.interfaces import ServiceState, StartFailure
from lmproxy.manage.statusjson import rfc3339
from lmproxy.manage.timeline import SPAN_SECONDS, Timeline
from lmproxy.testing import ScriptedBackends
from tests.test_management import ALPHA, MARKUP, QWEN, ApiCase, make_config

T0 = 1_700_000_000.0


def states(document: dict[str, Any], name: str) -> list[tuple[str, str | None, str | None]]:
    """The spans of service C{name}: (state, from, to)."""
    [service] = [s for s in document["services"] if s["name"] == name]
    return [(span["state"], span["from"], span["to"]) for span in service["states"]]


class TimelineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = make_config()
        self.backends = ScriptedBackends(self.config)
        self.clock = Clock()
        self.clock.advance(T0)
        self.timeline = Timeline(self.backends, self.clock)

    def at(self, seconds: float) -> str | None:
        return rfc3339(T0 + seconds)

    def test_a_start_then_a_run(self) -> None:
        self.clock.advance(10)
        self.backends.set_state(ALPHA, ServiceState.STARTING)
        self.clock.advance(5)
        self.backends.finish_start(ALPHA)
        self.backends.changed([ALPHA])  # no new state: nothing new
        document = self.timeline.json()
        self.assertEqual(
            states(document, ALPHA),
            [
                ("stopped", self.at(0), self.at(10)),
                ("starting", self.at(10), self.at(15)),
                ("running", self.at(15), None),
            ],
        )
        self.assertEqual(states(document, QWEN), [("stopped", self.at(0), None)])
        self.assertEqual([s["name"] for s in document["services"]], [ALPHA, QWEN, MARKUP])
        self.assertEqual((document["since"], document["now"]), (self.at(0), self.at(15)))

    def test_an_hour_at_most(self) -> None:
        """What ended before the hour is gone; the state at its start stays."""
        self.backends.set_state(ALPHA, ServiceState.STARTING)
        self.clock.advance(10)
        self.backends.set_state(ALPHA, ServiceState.RUNNING)
        self.clock.advance(SPAN_SECONDS)
        document = self.timeline.json()
        self.assertEqual(states(document, ALPHA), [("running", self.at(10), None)])
        self.assertEqual(document["since"], self.at(10))

    def test_evictions_and_failures(self) -> None:
        self.timeline.service_evicted(ALPHA)
        self.clock.advance(2)
        self.backends.service_changes[QWEN] = {
            "last_failure": StartFailure(T0 + 2, "exited with status 3", (), True, None)
        }
        self.timeline.start_finished(QWEN, 1.5, False)
        self.timeline.start_finished(ALPHA, 1.0, True)  # a success is in the states
        self.assertEqual(
            self.timeline.json()["events"],
            [
                {"at": self.at(0), "service": ALPHA, "kind": "evicted", "reason": None},
                {
                    "at": self.at(2),
                    "service": QWEN,
                    "kind": "failed",
                    "reason": "exited with status 3",
                },
            ],
        )

    def test_unsubscribe(self) -> None:
        self.assertIn(self.timeline, self.backends.observers)
        self.timeline.unsubscribe()
        self.assertNotIn(self.timeline, self.backends.observers)


class TimelineRouteTests(ApiCase):
    def test_get(self) -> None:
        self.backends.set_state(ALPHA, ServiceState.STARTING)
        document = self.client.json("GET", "/timeline")
        self.assertEqual(
            [span["state"] for span in document["services"][0]["states"]], ["stopped", "starting"]
        )
        self.assertEqual(document["events"], [])
