"""
Tests for L{lmproxy.core.starttimes}: the learned start durations, their
median, and the small file that keeps them across restarts.
"""

from __future__ import annotations

import json
import os

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.starttimes import FILE_NAME, KEEP, StartTimes, state_file


class StartTimesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.dir, FILE_NAME)

    def test_median_of_the_last_starts(self) -> None:
        times = StartTimes(None)
        self.assertIsNone(times.estimate("a"))
        for seconds in (9.0, 1.0, 2.0, 3.0, 4.0, 5.0):
            times.record("a", seconds)
        # The first (9 s) is forgotten: the median of the last KEEP.
        self.assertEqual(KEEP, 5)
        self.assertEqual(times.estimate("a"), 3.0)
        self.assertIsNone(times.estimate("b"))

    def test_kept_across_restarts(self) -> None:
        first = StartTimes(self.path)
        first.record("a", 12.0)
        first.record("a", 14.0)
        self.assertEqual(StartTimes(self.path).estimate("a"), 13.0)
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"version": 1, "start_seconds": {"a": [12.0, 14.0]}})

    def test_a_bad_file_is_learned_anew(self) -> None:
        os.makedirs(self.dir)
        for text in ("{not json", '["a list"]', '{"start_seconds": {"a": ["x", -1, 3]}}'):
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(text)
            with capturedLogs() as events:
                times = StartTimes(self.path)
            if text.startswith('{"start'):
                self.assertEqual(times.estimate("a"), 3.0)  # only the good entries
            else:
                self.assertIsNone(times.estimate("a"))
                self.assertIn("learning anew", formatEvent(events[0]))
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("{not json")
        with capturedLogs():
            times = StartTimes(self.path)
        times.record("a", 1.0)  # the bad file is replaced
        self.assertEqual(StartTimes(self.path).estimate("a"), 1.0)

    def test_an_unwritable_file_costs_only_the_learning(self) -> None:
        os.makedirs(self.dir)
        blocked = os.path.join(self.dir, "file")
        with open(blocked, "w"):
            pass
        times = StartTimes(os.path.join(blocked, FILE_NAME))  # under a file: cannot be made
        with capturedLogs() as events:
            times.record("a", 2.0)
            times.record("a", 4.0)
        self.assertEqual(times.estimate("a"), 3.0)
        self.assertEqual(len([e for e in events if "cannot be written" in formatEvent(e)]), 1)

    def test_state_file_beside_the_logs(self) -> None:
        logs = os.path.join(self.dir, "logs")
        service = ServiceConfig(
            name="a", command="x", proxy_target_port=1, log_file_path=f"{logs}/a.log"
        )
        self.assertEqual(state_file([service]), os.path.join(logs, FILE_NAME))
        self.assertIsNone(state_file([]))
        self.assertIsNone(state_file([ServiceConfig(name="a", command="x", proxy_target_port=1)]))
