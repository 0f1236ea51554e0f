"""
Tests for L{lmproxy.demo.output}: which events become which lines on the demo
process's standard output and standard error.
"""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel, eventAsText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.demo.output import LineOutput, is_demo_event, line_writer, observers


def _events(namespace: str) -> list[dict[str, object]]:
    """
    One event of each level from a logger in C{namespace}.
    """
    events: list[dict[str, object]] = []
    log = Logger(namespace=namespace, observer=events.append)
    for level in LogLevel.iterconstants():
        log.emit(level, "{name} line {n}", name=level.name, n=1)
    return events


class FlushCountingIO(io.StringIO):
    """
    A text stream that counts its flushes.
    """

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class LineOutputTests(SynchronousTestCase):
    """
    L{LineOutput} writes the demo's events as bare lines, split by level.
    """

    def setUp(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.output = LineOutput(self.out.append, self.err.append)

    def test_levels(self) -> None:
        """
        Debug and info go to C{out}, warn and above to C{err}, each as its
        message only.
        """
        for event in _events("lmproxy.demo.server"):
            self.output(event)
        self.assertEqual(self.out, ["debug line 1", "info line 1"])
        self.assertEqual(self.err, ["warn line 1", "error line 1", "critical line 1"])

    def test_others_ignored(self) -> None:
        """
        Events from outside the package, or from a namespace that only starts
        like it, are not written.
        """
        for namespace in ("twisted.web.server", "lmproxy.core.process", "lmproxy.demonic"):
            for event in _events(namespace):
                self.output(event)
        self.assertEqual((self.out, self.err), ([], []))

    def test_package_namespace(self) -> None:
        """
        The package's own namespace counts, and so do its modules' classes.
        """
        self.assertTrue(is_demo_event({"log_namespace": "lmproxy.demo"}))
        self.assertTrue(is_demo_event({"log_namespace": "lmproxy.demo.api.DemoAPI"}))
        self.assertFalse(is_demo_event({}))

    def test_failure(self) -> None:
        """
        A failure's traceback follows the message.
        """
        events: list[dict[str, object]] = []
        log = Logger(namespace="lmproxy.demo.api", observer=events.append)
        log.failure("it broke", Failure(ZeroDivisionError("boom")))
        self.output(events[0])
        [text] = self.err
        self.assertTrue(text.startswith("it broke\n"), text)
        self.assertIn("ZeroDivisionError: boom", text)
        self.assertEqual(text, eventAsText(events[0], includeTimestamp=False, includeSystem=False))


class ObserversTests(SynchronousTestCase):
    """
    The observers of the demo process: its own lines, and Twisted's warnings.
    """

    def test_streams(self) -> None:
        """
        The demo's lines go bare to stdout and stderr; Twisted's warnings and
        errors go time-stamped to stderr, its chatter nowhere.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        demo = _events("lmproxy.demo.server")
        twisted = _events("twisted.web.server")
        for observer in observers(stdout, stderr):
            for event in demo + twisted:
                observer(event)
        self.assertEqual(stdout.getvalue(), "debug line 1\ninfo line 1\n")
        lines = stderr.getvalue().splitlines()
        self.assertEqual(lines[:3], ["warn line 1", "error line 1", "critical line 1"])
        self.assertEqual(len(lines), 6)
        for line, level in zip(lines[3:], ("warn", "error", "critical"), strict=True):
            self.assertTrue(line.endswith(f" [twisted.web.server#{level}] {level} line 1"), line)

    def test_flush_per_line(self) -> None:
        """
        Every line is flushed at once: a reader waits for the listening line.
        """
        stream = FlushCountingIO()
        write = line_writer(stream)
        write("one")
        self.assertEqual((stream.getvalue(), stream.flushes), ("one\n", 1))
        write("two")
        self.assertEqual((stream.getvalue(), stream.flushes), ("one\ntwo\n", 2))
