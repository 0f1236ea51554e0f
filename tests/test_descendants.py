"""
Tests for L{lmproxy.core.descendants}: a service run's processes found by the
mark in their environment, on a fake C{/proc} tree written to a temporary
directory, and once on the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core import descendants
from lmproxy.core.descendants import (
    MARK_VARIABLE,
    PidWindow,
    Proc,
    carries,
    marked,
    new_mark,
    parse_stat,
    pid_window,
    read_proc,
    same,
    scan,
    signal_proc,
)

TIMEOUT = 60  # seconds; only a bound against a hang, never a measure


def stat_line(pid: int, ppid: int, pgrp: int, start: int, state: str = "S", comm: str = "x") -> str:
    """A C{/proc/PID/stat} line as Linux writes it (its first 24 fields, most of them zeros)."""
    rest = " ".join(["0"] * 12)
    return f"{pid} ({comm}) {state} {ppid} {pgrp} {pgrp} 0 -1 4194560 {rest} {start} 0 0\n"


class FakeProc:
    """A fake C{/proc} in a directory."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.root = Path(test.mktemp())
        self.root.mkdir()
        (self.root / "self").mkdir()  # not a pid: skipped

    def add(
        self,
        pid: int,
        ppid: int,
        pgrp: int | None = None,
        start: int = 100,
        state: str = "S",
        env: dict[str, str] | None = None,
        comm: str = "x",
    ) -> Proc:
        directory = self.root / str(pid)
        directory.mkdir()
        (directory / "stat").write_text(stat_line(pid, ppid, pgrp or pid, start, state, comm))
        entries = [f"{k}={v}".encode() for k, v in (env or {}).items()]
        (directory / "environ").write_bytes(b"".join(e + b"\0" for e in entries))
        return Proc(pid, ppid, pgrp or pid, start, state == "Z")


class ParseStatTests(SynchronousTestCase):
    def test_fields(self) -> None:
        self.assertEqual(
            parse_stat(12, stat_line(12, 3, 7, 999).encode()), Proc(12, 3, 7, 999, False)
        )

    def test_command_name_with_spaces_and_parentheses(self) -> None:
        line = stat_line(12, 3, 7, 999, comm="a) (b c")
        self.assertEqual(parse_stat(12, line.encode()), Proc(12, 3, 7, 999, False))

    def test_zombie(self) -> None:
        self.assertTrue(parse_stat(12, stat_line(12, 3, 7, 999, state="Z").encode()).zombie)  # type: ignore[union-attr]

    def test_not_a_stat_line(self) -> None:
        for text in (b"", b"12 (x) S 1 2", b"12 (x) S a b c" + b" 0" * 20, b"no parenthesis " * 5):
            self.assertIsNone(parse_stat(12, text), text)


class ScanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(self)

    def test_scan(self) -> None:
        a = self.proc.add(10, 1)
        b = self.proc.add(11, 10, pgrp=10)
        (self.proc.root / "12").mkdir()  # vanished meanwhile: no stat
        self.assertEqual(sorted(scan(str(self.proc.root))), [a, b])
        self.assertEqual(read_proc(11, str(self.proc.root)), b)
        self.assertIsNone(read_proc(12, str(self.proc.root)))

    def test_no_proc(self) -> None:
        """Without C{/proc} nothing is found: the process group is all there is."""
        self.assertEqual(scan(self.mktemp()), [])

    def test_carries(self) -> None:
        root = str(self.proc.root)
        self.proc.add(10, 1, env={"A": "1", MARK_VARIABLE: "m1"})
        self.proc.add(11, 1, env={MARK_VARIABLE: "m11"})
        self.assertTrue(carries(10, "m1", root))
        self.assertFalse(carries(11, "m1", root))  # a mark that begins alike is another
        self.assertFalse(carries(12, "m1", root))  # no such process (or not ours to read)

    def test_carries_after_a_long_environment(self) -> None:
        """An environment longer than one read is read to its end."""
        root = str(self.proc.root)
        for size in (65536 - len("A=\0"), 200000):  # a read's size exactly, and several
            self.proc.add(size, 1, env={"A": "x" * size, MARK_VARIABLE: "m1"})
            self.assertTrue(carries(size, "m1", root), size)


class PidWindowTests(SynchronousTestCase):
    """Only the pids given since a run's leader are read, until the pids may have gone round."""

    def setUp(self) -> None:
        self.proc = FakeProc(self)
        self.root = str(self.proc.root)
        for pid in (5, 10, 11, 90, 99):
            self.proc.add(pid, 1)
        (self.proc.root / "sys" / "kernel").mkdir(parents=True)
        (self.proc.root / "sys" / "kernel" / "pid_max").write_text("1000\n")
        self.machine(forks=500, last=99, threads=10)

    def machine(self, forks: int, last: int, threads: int) -> None:
        """What C{/proc/stat} and C{/proc/loadavg} say now."""
        (self.proc.root / "stat").write_text(
            f"cpu  1 2 3\nintr 7 8\nprocesses {forks}\nprocs_running 1\n"
        )
        (self.proc.root / "loadavg").write_text(f"0.50 0.40 0.30 1/{threads} {last}\n")

    def pids(self, window: PidWindow | None) -> list[int]:
        return sorted(proc.pid for proc in scan(self.root, window))

    def test_window(self) -> None:
        window = pid_window(11, self.root)
        self.assertEqual(window, PidWindow(11, 500))
        self.machine(forks=600, last=99, threads=10)
        self.assertEqual(self.pids(window), [11, 90, 99])

    def test_round_the_end(self) -> None:
        """Given up to pid_max, then from the bottom again."""
        self.machine(forks=600, last=10, threads=10)
        self.assertEqual(self.pids(PidWindow(90, 500)), [5, 10, 90, 99])

    def test_gone_round(self) -> None:
        """Too many forks since (with the pids in use): any pid may be the run's."""
        self.machine(forks=500 + 490, last=99, threads=10)
        self.assertEqual(self.pids(PidWindow(90, 500)), [5, 10, 11, 90, 99])
        self.machine(forks=500 + 489, last=99, threads=10)
        self.assertEqual(self.pids(PidWindow(90, 500)), [90, 99])

    def test_not_told(self) -> None:
        """Without the counts, every pid is read; without them at spawn, no window."""
        (self.proc.root / "loadavg").unlink()
        self.assertEqual(self.pids(PidWindow(90, 500)), [5, 10, 11, 90, 99])
        (self.proc.root / "stat").write_text("cpu  1 2 3\n")
        self.assertIsNone(pid_window(90, self.root))


class MarkedTests(SynchronousTestCase):
    """The processes that carry a mark, and their descendants."""

    def setUp(self) -> None:
        self.proc = FakeProc(self)
        self.root = str(self.proc.root)

    def marked(self, mark: str) -> list[int]:
        found = marked(scan(self.root), mark, lambda pid, m: carries(pid, m, self.root))
        return [proc.pid for proc in found]

    def test_tree(self) -> None:
        mark = {MARK_VARIABLE: "m"}
        self.proc.add(10, 1, env=mark)  # the service's leader
        self.proc.add(20, 1, env=mark)  # its daemon: re-parented, a session of its own
        self.proc.add(21, 20, env={})  # the daemon's child, its environment cleared
        self.proc.add(22, 21, env={})  # and its child
        self.proc.add(30, 1, env={MARK_VARIABLE: "other"})  # another run's
        self.proc.add(31, 30, env=mark)  # nested under another run: still ours
        self.proc.add(40, 1, env={})  # nobody's
        self.assertEqual(self.marked("m"), [10, 20, 21, 22, 31])

    def test_zombies_and_init_and_ourselves_are_never_found(self) -> None:
        mark = {MARK_VARIABLE: "m"}
        self.proc.add(1, 0, env=mark)
        self.proc.add(os.getpid(), 1, env=mark)  # a lmproxy that runs as another's service
        self.proc.add(50, 1, state="Z", env=mark)
        self.assertEqual(self.marked("m"), [])

    def test_new_marks_differ(self) -> None:
        self.assertEqual(len({new_mark() for _ in range(100)}), 100)


class SignalTests(SynchronousTestCase):
    """A process is signalled only while its pid still names it."""

    def setUp(self) -> None:
        self.proc = FakeProc(self)
        self.root = str(self.proc.root)
        self.sent: list[tuple[int, int]] = []

    def kill(self, pid: int, signum: int) -> None:
        if pid == 99:
            raise PermissionError(pid)
        self.sent.append((pid, signum))

    def test_same_process(self) -> None:
        proc = self.proc.add(10, 1, start=500)
        self.assertTrue(same(proc, self.root))
        self.assertTrue(signal_proc(proc, signal.SIGTERM, self.root, self.kill))
        self.assertEqual(self.sent, [(10, signal.SIGTERM)])

    def test_pid_reused(self) -> None:
        """Another process has its pid now (another start time): left alone."""
        self.proc.add(10, 1, start=501)
        proc = Proc(10, 1, 10, 500, False)
        self.assertFalse(same(proc, self.root))
        self.assertFalse(signal_proc(proc, signal.SIGKILL, self.root, self.kill))
        self.assertEqual(self.sent, [])

    def test_gone_or_zombie(self) -> None:
        zombie = self.proc.add(11, 1, state="Z")
        self.assertFalse(same(zombie, self.root))
        self.assertFalse(signal_proc(Proc(12, 1, 12, 1, False), signal.SIGTERM, self.root))

    def test_not_ours(self) -> None:
        proc = self.proc.add(99, 1)
        self.assertFalse(signal_proc(proc, signal.SIGTERM, self.root, self.kill))


class RealProcessTests(SynchronousTestCase):
    """On this machine's C{/proc}: a marked process that left its session is found."""

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self"):
            raise self.skipTest("no /proc")

    def test_found_and_signalled(self) -> None:
        mark = new_mark()
        env = {**os.environ, MARK_VARIABLE: mark}
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env=env,
            start_new_session=True,
        )
        self.addCleanup(child.wait, TIMEOUT)
        self.addCleanup(child.kill)
        [found] = descendants.marked(descendants.scan(), mark)
        self.assertEqual((found.pid, found.pgrp), (child.pid, child.pid))
        self.assertTrue(descendants.signal_proc(found, signal.SIGTERM))
        self.assertEqual(child.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(descendants.marked(descendants.scan(), mark), [])
