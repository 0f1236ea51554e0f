"""
Tests for L{lmproxy.core.strays} and for a service's stop with strays
(L{lmproxy.core.process.ServiceProcess}), on a fake clock with fake processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import cast
from unittest import SkipTest

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.descendants import MARK_VARIABLE, PidWindow, Proc, new_mark, pid_window, read_proc
from lmproxy.core.groups import KILL_WAIT_SECONDS, STOP_GRACE_SECONDS
from lmproxy.core.process import ServiceProcess
from lmproxy.core.shell import Reactor
from lmproxy.core.strays import POLL_SECONDS, Strays, boot_ticks, find_marked
from lmproxy.testing import MemoryProcessReactor


class FakeStrays:
    """
    Marked processes on a clock: found by mark, signalled, gone some time
    after SIGTERM (or never), at once after SIGKILL.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.by_mark: dict[str, list[Proc]] = {}
        self.takes: dict[int, float | None] = {}  # pid: seconds after SIGTERM; None: ignores it
        self.ends_at: dict[int, float] = {}
        self.sent: list[tuple[float, int, int]] = []
        self.since: list[int] = []  # as each find was asked
        self.windows: list[PidWindow | None] = []

    def add(self, mark: str, pid: int, pgrp: int, takes: float | None = 0.0) -> Proc:
        proc = Proc(pid, 1, pgrp, 1000 + pid, False)
        self.by_mark.setdefault(mark, []).append(proc)
        self.takes[pid] = takes
        return proc

    def find(self, mark: str, since: int, window: PidWindow | None = None) -> list[Proc]:
        self.since.append(since)
        self.windows.append(window)
        procs = self.by_mark.get(mark, [])
        return [proc for proc in procs if proc.start >= since and self.running(proc)]

    def running(self, proc: Proc) -> bool:
        return self.clock.seconds() < self.ends_at.get(proc.pid, float("inf"))

    def send(self, proc: Proc, signum: int) -> bool:
        if not self.running(proc):
            return False
        now = self.clock.seconds()
        self.sent.append((now, proc.pid, signum))
        takes = self.takes[proc.pid]
        if signum == signal.SIGKILL:
            self.ends_at[proc.pid] = now
        elif signum == signal.SIGTERM and takes is not None:
            self.ends_at.setdefault(proc.pid, now + takes)
        return True

    def strays(self, mark: str) -> Strays:
        return Strays(self.clock, mark, self.find, self.send, self.running)


class StraysTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeStrays(self.clock)

    def test_group_members_are_not_strays(self) -> None:
        """The run's group is signalled as a group: only the others are strays."""
        self.fake.add("m", 10, 10)
        self.fake.add("m", 11, 10)
        self.fake.add("m", 20, 20)
        self.assertEqual([p.pid for p in self.fake.strays("m").outside(10)], [20])

    def test_sigterm_ends_them(self) -> None:
        self.fake.add("m", 20, 20, takes=0.3)
        d = Deferred.fromCoroutine(self.fake.strays("m").terminate(10, 5.0, 2.0))
        self.assertEqual(self.fake.sent, [(0.0, 20, signal.SIGTERM)])
        self.clock.advance(0.3)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(len(self.fake.sent), 1)

    def test_sigkill_after_grace(self) -> None:
        stubborn = self.fake.add("m", 20, 20, takes=None)
        d = Deferred.fromCoroutine(self.fake.strays("m").terminate(10, 5.0, 2.0))
        self.clock.pump([POLL_SECONDS] * (int(5.0 / POLL_SECONDS) - 1))
        self.assertNoResult(d)
        self.assertEqual(len(self.fake.sent), 1)
        self.clock.pump([POLL_SECONDS] * 5)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(
            [(pid, s) for _, pid, s in self.fake.sent],
            [(stubborn.pid, signal.SIGTERM), (stubborn.pid, signal.SIGKILL)],
        )

    def test_found_again_before_sigkill(self) -> None:
        """A stray forked while the others were being stopped gets SIGKILL too."""
        self.fake.add("m", 20, 20, takes=None)
        d = Deferred.fromCoroutine(self.fake.strays("m").terminate(10, 1.0, 2.0))
        late = self.fake.add("m", 21, 21, takes=None)
        self.clock.pump([POLL_SECONDS] * int(1.0 / POLL_SECONDS + 1))
        self.assertEqual(self.successResultOf(d), [])
        self.assertIn((late.pid, signal.SIGKILL), [(pid, s) for _, pid, s in self.fake.sent])

    def test_none_found_is_not_looked_for_again(self) -> None:
        """No stray at SIGTERM: no second scan of /proc for SIGKILL, at the same moment."""
        self.fake.add("m", 10, 10)  # in the group
        d = Deferred.fromCoroutine(self.fake.strays("m").terminate(10, 5.0, 2.0))
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual((self.fake.since, self.fake.sent), ([0], []))

    def test_only_processes_started_since_the_leader(self) -> None:
        """Older processes cannot carry a new mark: those started before the leader are not read."""
        self.fake.add("m", 20, 20)  # started at tick 1020
        strays = Strays(
            self.clock, "m", self.fake.find, self.fake.send, self.fake.running, ticks=lambda: 1021
        )
        self.assertEqual([p.pid for p in strays.outside(30)], [20])  # not begun: every one
        strays.begin()
        self.assertEqual((strays.since, strays.outside(30)), (1021, []))
        self.assertEqual(self.fake.since, [0, 1021])

    def test_window_once_spawned(self) -> None:
        """Once its leader is spawned, a run's processes are looked for in its pid window."""
        window = PidWindow(20, 5)
        strays = Strays(
            self.clock,
            "m",
            self.fake.find,
            self.fake.send,
            self.fake.running,
            window=lambda pid: window if pid == 20 else None,
        )
        strays.outside(30)
        strays.begin()
        strays.spawned(20)
        strays.outside(30)
        strays.begin()  # the next run: anywhere until its leader is spawned
        strays.outside(30)
        self.assertEqual(self.fake.windows, [None, window, None])

    def test_boot_ticks(self) -> None:
        """A moment before a process spawned now started, in its own ticks."""
        before = boot_ticks()
        child = subprocess.Popen(["true"])
        self.addCleanup(child.wait)
        proc = read_proc(child.pid)
        if proc is None:
            raise SkipTest("no /proc")
        self.assertLessEqual(before, proc.start)
        self.assertGreater(before, proc.start - 100 * os.sysconf("SC_CLK_TCK"))  # not 0

    def test_survivors_are_returned(self) -> None:
        """Still there after SIGKILL (stuck in the kernel): the caller says so."""
        stuck = self.fake.add("m", 20, 20, takes=None)
        self.patch(self.fake, "send", lambda proc, signum: True)
        d = Deferred.fromCoroutine(self.fake.strays("m").terminate(10, 1.0, 2.0))
        self.clock.pump([POLL_SECONDS] * int(3.0 / POLL_SECONDS + 2))
        self.assertEqual(self.successResultOf(d), [stuck])


class FindMarkedTests(SynchronousTestCase):
    """L{find_marked} on this machine's /proc."""

    def test_since(self) -> None:
        mark = new_mark()
        child = subprocess.Popen(
            ["sh", "-c", "echo ready; read x"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, MARK_VARIABLE: mark},
        )
        assert child.stdin is not None and child.stdout is not None
        self.addCleanup(child.wait)
        self.addCleanup(child.stdout.close)
        self.addCleanup(child.stdin.close)
        # Once it runs: just after its exec, its environment may not be readable yet.
        child.stdout.readline()
        proc = read_proc(child.pid)
        if proc is None:
            raise SkipTest("no /proc")
        self.assertEqual([p.pid for p in find_marked(mark)], [child.pid])
        self.assertEqual([p.pid for p in find_marked(mark, proc.start)], [child.pid])
        self.assertEqual(find_marked(mark, proc.start + 1), [])

    def test_window(self) -> None:
        """A process spawned after the leader is in its window; one spawned before is not."""
        mark = new_mark()
        env = {**os.environ, MARK_VARIABLE: mark}
        before = subprocess.Popen(["sleep", "30"], env=env)
        self.addCleanup(before.wait)
        self.addCleanup(before.kill)
        leader = subprocess.Popen(["sleep", "30"])
        self.addCleanup(leader.wait)
        self.addCleanup(leader.kill)
        window = pid_window(leader.pid)
        after = subprocess.Popen(
            ["sh", "-c", "echo ready; exec sleep 30"], env=env, stdout=subprocess.PIPE
        )
        assert after.stdout is not None
        self.addCleanup(after.wait)
        self.addCleanup(after.kill)
        self.addCleanup(after.stdout.close)
        after.stdout.readline()
        if window is None or read_proc(before.pid) is None:
            raise SkipTest("no /proc")
        # "before" is found without a window (or when the pids may have gone round since).
        self.assertEqual([p.pid for p in find_marked(mark)], sorted([before.pid, after.pid]))
        self.assertEqual([p.pid for p in find_marked(mark, 0, window)], [after.pid])


class ServiceStopTests(SynchronousTestCase):
    """A service's stop ends its strays beside its group, in the same grace period."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.fake = FakeStrays(cast(Clock, self.reactor))
        config = ServiceConfig(
            name="s",
            command="true",
            proxy_target_port=9001,
            log_file_path=os.path.join(os.path.abspath(self.mktemp()), "s.log"),
        )
        self.service = ServiceProcess(
            cast(Reactor, self.reactor),
            config,
            False,
            self.reactor.signal_group,
            find_strays=self.fake.find,
        )
        self.patch(self.service.strays, "_send", self.fake.send)
        self.patch(self.service.strays, "_running", self.fake.running)
        self.patch(self.service.strays, "_ticks", lambda: 0)  # the fakes' start times are small
        self.service.spawn()
        [self.process] = self.reactor.processes

    def test_stop_ends_group_and_strays_at_once(self) -> None:
        mark = self.service.strays.mark
        self.fake.add(mark, self.process.pid, self.process.pid)  # the leader: in its group
        self.fake.add(mark, 50, 50, takes=None)  # a daemon that ignores SIGTERM
        self.reactor.on_signal = lambda process, signum: None  # the group too
        d = Deferred.fromCoroutine(self.service.stop())
        self.assertEqual(self.reactor.signals, [(self.process.pid, signal.SIGTERM)])
        self.assertEqual(self.fake.sent, [(0.0, 50, signal.SIGTERM)])
        self.reactor.advance(STOP_GRACE_SECONDS)
        self.assertIn((self.process.pid, signal.SIGKILL), self.reactor.signals)
        self.assertEqual(
            [(t, pid, s) for t, pid, s in self.fake.sent if s == signal.SIGKILL],
            [(STOP_GRACE_SECONDS, 50, signal.SIGKILL)],
        )
        self.process.exit(None, signal.SIGKILL)
        self.reactor.advance(KILL_WAIT_SECONDS)
        self.successResultOf(d)

    def test_stray_that_survives_is_logged(self) -> None:
        self.fake.add(self.service.strays.mark, 50, 50, takes=None)
        self.patch(self.service.strays, "_send", lambda proc, signum: True)
        with capturedLogs() as events:
            d = Deferred.fromCoroutine(self.service.stop())  # SIGTERM: its leader exits
            self.reactor.pump([POLL_SECONDS] * 400)
            self.successResultOf(d)
        said = [formatEvent(e) for e in events]
        self.assertIn("s: process 50, which left its process group, survived SIGKILL", said)

    def test_kill_ends_strays_at_once(self) -> None:
        self.fake.add(self.service.strays.mark, 50, 50, takes=None)
        self.service.kill()
        self.assertEqual(self.fake.sent, [(0.0, 50, signal.SIGKILL)])
        self.assertTrue(self.process.exited)  # and its group got SIGKILL
