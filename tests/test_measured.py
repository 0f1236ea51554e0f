"""
Tests for L{lmproxy.core.measured}: how a CheckCommand's value is read (its
stdout's last non-empty line, an integer as Go's C{strconv.Atoi} reads one,
within 64 bits), what is logged about a run (its stderr, why it gave no
value: one line each, never a traceback), on a L{MemoryProcessReactor}.
"""

from __future__ import annotations

import re
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ResourceConfig
from lmproxy.core import measured
from lmproxy.core.measured import (
    MAX_LINE_CHARS,
    MAX_STDERR_LINES,
    MAX_VALUE,
    MIN_VALUE,
    Measurements,
    parse_measurement,
    read_result,
)
from lmproxy.core.resources import Ledger
from lmproxy.core.shell import Reactor, ShellResult
from lmproxy.logs import set_log_level
from lmproxy.testing import FakeProcess, MemoryProcessReactor, QuickExit

OK = "exited with status 0"
whitespace = st.text(alphabet=" \t", max_size=3)


def problem(stdout: str) -> str:
    """Why C{stdout} gives no value."""
    try:
        parse_measurement(stdout)
    except ValueError as e:
        return str(e)
    raise AssertionError(f"{stdout!r} gave a value")


class ParseMeasurementTests(SynchronousTestCase):
    """L{parse_measurement}: the value on stdout, or why there is none."""

    def test_plain(self) -> None:
        """One integer on a line; surrounding whitespace ignored."""
        self.assertEqual(parse_measurement("7\n"), 7)
        self.assertEqual(parse_measurement(" \t7 \r\n"), 7)
        self.assertEqual(parse_measurement("7"), 7)

    def test_last_non_empty_line(self) -> None:
        """With several lines, the last that is not blank."""
        self.assertEqual(parse_measurement("memory.free [MiB]\n24000\n8000\n\n  \n"), 8000)

    def test_signs_and_zeros(self) -> None:
        """An optional sign and leading zeros, as Go's Atoi reads them."""
        self.assertEqual(parse_measurement("+5"), 5)
        self.assertEqual(parse_measurement("-5"), -5)
        self.assertEqual(parse_measurement("007"), 7)
        self.assertEqual(parse_measurement("0" * 5000 + "7"), 7)

    def test_range(self) -> None:
        """A signed 64-bit integer; anything larger is out of range."""
        self.assertEqual(parse_measurement(str(MAX_VALUE)), 2**63 - 1)
        self.assertEqual(parse_measurement(str(MIN_VALUE)), -(2**63))
        self.assertEqual(problem(str(MAX_VALUE + 1)), "out of range")
        self.assertEqual(problem(str(MIN_VALUE - 1)), "out of range")
        self.assertEqual(problem("1" * 401), "out of range")
        # More digits than Python's int() accepts from a string.
        self.assertEqual(problem("1" * 5000), "out of range")

    def test_nothing(self) -> None:
        """No output, or only blank lines."""
        self.assertEqual(problem(""), "it printed nothing")
        self.assertEqual(problem("\n \n\t\n"), "it printed nothing")

    def test_not_an_integer(self) -> None:
        """What Python's int() would take but Atoi would not, and the rest."""
        for text in ["N/A", "7 MiB", "1e3", "7.0", "1_000", "\u0663", "0x10", "- 5", "++5", "7\nx"]:
            self.assertEqual(problem(text), "not an integer", text)

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(MIN_VALUE, MAX_VALUE),
        st.lists(st.text(max_size=20), max_size=3),
        whitespace,
        whitespace,
        st.sampled_from(["", "\n", "\r\n", "\n\n \n"]),
    )
    def test_any_value_in_range(
        self, value: int, before: list[str], left: str, right: str, end: str
    ) -> None:
        """Any value in range is read, whatever lines come before it."""
        stdout = "".join(line + "\n" for line in before) + left + str(value) + right + end
        self.assertEqual(parse_measurement(stdout), value)

    @settings(max_examples=500, deadline=None)
    @given(st.text())
    def test_any_text(self, stdout: str) -> None:
        """
        Any text gives a value in range, exactly when its last non-empty line
        is a sign and ASCII digits within range; else a ValueError, never
        another exception.
        """
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        atoi = bool(lines) and re.fullmatch(r"[+-]?[0-9]+", lines[-1]) is not None
        try:
            value = parse_measurement(stdout)
        except ValueError:
            self.assertFalse(atoi and MIN_VALUE <= int(lines[-1]) <= MAX_VALUE)
        else:
            self.assertTrue(atoi)
            self.assertEqual(value, int(lines[-1]))
            self.assertTrue(MIN_VALUE <= value <= MAX_VALUE)


class ReadResultTests(SynchronousTestCase):
    """L{read_result}: a run's value and its warnings."""

    def warnings(self, result: ShellResult) -> list[str]:
        return [
            log_format.format(resource="R", **dict(fields))
            for log_format, fields in read_result(result)[1]
        ]

    def test_value_with_stderr(self) -> None:
        """A warning on stderr does not spoil the value on stdout; it is a warning."""
        result = ShellResult(0, "7\n", "warning: something\n", OK)
        self.assertEqual(read_result(result)[0], 7)
        self.assertEqual(
            self.warnings(result),
            ["CheckCommand of resource R wrote to stderr: warning: something"],
        )

    def test_clean(self) -> None:
        """A value and nothing on stderr: nothing to say."""
        self.assertEqual(read_result(ShellResult(0, "7\n", "", OK)), (7, []))

    def test_failed(self) -> None:
        """A non-zero status gives no value, whatever it printed."""
        result = ShellResult(3, "5\n", "", "exited with status 3")
        self.assertIsNone(read_result(result)[0])
        self.assertEqual(
            self.warnings(result),
            [
                "CheckCommand of resource R gave no value: it failed (exited with status 3); "
                "its stdout: 5"
            ],
        )

    def test_garbage(self) -> None:
        """What was printed is shown on one line, escaped and cut short."""
        stdout = "no GPU\n" + "x" * 1000 + "\n"
        [warning] = self.warnings(ShellResult(0, stdout, "", OK))
        self.assertEqual(
            warning,
            "CheckCommand of resource R gave no value: not an integer (exited with status 0); "
            "its stdout: no GPU\\n" + "x" * (MAX_LINE_CHARS - 7) + "...",
        )

    def test_printed_nothing(self) -> None:
        [warning] = self.warnings(ShellResult(0, "", "", OK))
        self.assertEqual(
            warning,
            "CheckCommand of resource R gave no value: it printed nothing (exited with status 0); "
            "its stdout: nothing",
        )

    def test_stderr_bounded(self) -> None:
        """At most MAX_STDERR_LINES lines of stderr, each cut short; the rest counted."""
        stderr = "".join(f"line {i} " + "y" * 300 + "\n\n" for i in range(MAX_STDERR_LINES + 7))
        warnings = self.warnings(ShellResult(0, "1\n", stderr, OK))
        self.assertEqual(len(warnings), MAX_STDERR_LINES + 1)
        self.assertTrue(warnings[0].endswith("wrote to stderr: line 0 " + "y" * 193 + "..."))
        self.assertEqual(warnings[-1], "CheckCommand of resource R wrote 7 more lines to stderr")


class MeasurementsTests(SynchronousTestCase):
    """L{Measurements} runs a CheckCommand and logs about it without tracebacks."""

    CHECK = "nvidia-free"

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.ledger = Ledger.from_config(
            [ResourceConfig("VRAM", None, check_command=self.CHECK, check_interval=1.0)]
        )
        self.changes: list[str] = []
        self.measurements = Measurements(
            cast(Reactor, self.reactor), self.ledger, self.reactor.signal_group, self.changes.append
        )
        self.events: list[dict[str, Any]] = []
        set_log_level("Debug")
        self.addCleanup(set_log_level, "Normal")

    def tearDown(self) -> None:
        self.assertEqual([e for e in self.events if "log_failure" in e], [], "no traceback")
        self.assertEqual(self.flushLoggedErrors(), [])

    def check(self, *outputs: tuple[int, bytes]) -> FakeProcess:
        """Run the check once; its process writes C{outputs} (fd, data)."""
        self.measurements.invalidate(["VRAM"])
        with capturedLogs() as events:
            self.measurements.fresh(["VRAM"])
            [process] = self.reactor.live_processes()
            for fd, data in outputs:
                process.output(data, fd)
        self.events.extend(events)
        return process

    def end(self, process: FakeProcess, code: int = 0) -> list[tuple[LogLevel, str]]:
        """The check's process exits; what was logged."""
        with capturedLogs() as events:
            process.exit(code)
        self.events.extend(events)
        return [(e["log_level"], formatEvent(e)) for e in events]

    def test_stderr_then_value(self) -> None:
        """The value is read from stdout; the stderr line is a warning."""
        logged = self.end(self.check((2, b"warning: something\n"), (1, b"7\n")))
        self.assertEqual(self.ledger.measured["VRAM"], 7)
        self.assertEqual(
            logged,
            [(LogLevel.warn, "CheckCommand of resource VRAM wrote to stderr: warning: something")],
        )
        self.assertEqual(self.changes, ["VRAM"])

    def test_same_warnings_again_are_debug(self) -> None:
        """A check that warns the same at every run warns once; the rest is debug."""
        for _ in range(3):
            logged = self.end(self.check((2, b"warning: something\n"), (1, b"7\n")))
        self.assertEqual([level for level, _ in logged], [LogLevel.debug])
        logged = self.end(self.check((2, b"warning: other\n"), (1, b"7\n")))
        self.assertEqual([level for level, _ in logged], [LogLevel.warn])

    def test_no_value(self) -> None:
        """
        Garbage, a failure, a huge number: one warning line each, no value
        (and the value before is forgotten); a good value later is said so.
        """
        self.end(self.check((1, b"8000\n")))
        cases: list[tuple[bytes, int, str]] = [
            (b"N/A\n", 0, "not an integer (exited with status 0); its stdout: N/A"),
            (b"5\n", 3, "it failed (exited with status 3); its stdout: 5"),
            (b"1" * 401 + b"\n", 0, "out of range (exited with status 0); its stdout: "),
        ]
        for stdout, code, said in cases:
            logged = self.end(self.check((1, stdout)), code)
            self.assertIsNone(self.ledger.measured["VRAM"])
            [(level, line)] = logged
            self.assertEqual(level, LogLevel.warn)
            self.assertTrue(
                line.startswith("CheckCommand of resource VRAM gave no value: " + said), line
            )
        logged = self.end(self.check((1, b"6000\n")))
        self.assertEqual(self.ledger.measured["VRAM"], 6000)
        self.assertEqual(
            logged, [(LogLevel.info, "CheckCommand of resource VRAM gave a value again: 6000")]
        )

    def test_exits_during_spawn(self) -> None:
        """A check reaped before its spawn returns gives the value it printed."""
        self.reactor.exit_during_spawn[self.CHECK] = QuickExit(0, b"7\n", b"warn\n")
        with capturedLogs() as events:
            self.measurements.check_all()
            self.assertNotIn("VRAM", self.ledger.measured)
            self.reactor.advance(0)
        self.events.extend(events)
        self.assertEqual(self.ledger.measured["VRAM"], 7)
        self.assertEqual(self.changes, ["VRAM"])
        self.assertTrue(self.measurements.fresh(["VRAM"]))

    def test_exits_during_spawn_printing_nothing(self) -> None:
        """A check that exits at once printing nothing: no value, one warning."""
        self.reactor.exit_during_spawn[self.CHECK] = 1
        with capturedLogs() as events:
            self.measurements.check_all()
            self.reactor.advance(0)
        self.events.extend(events)
        self.assertIsNone(self.ledger.measured["VRAM"])
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "CheckCommand of resource VRAM gave no value: it failed (exited with status 1); "
                "its stdout: nothing"
            ],
        )

    def test_crash_is_logged(self) -> None:
        """A bug in a check is logged with its traceback, not left unhandled."""

        def broken(result: ShellResult) -> None:
            raise RuntimeError("a bug")

        self.patch(measured, "read_result", broken)
        self.measurements.check_all()
        process = self.reactor.live_processes()[0]
        process.output(b"7\n")
        with capturedLogs() as events:
            process.exit(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([e["resource"] for e in events if "log_failure" in e], ["VRAM"])
