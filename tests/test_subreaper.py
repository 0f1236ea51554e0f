"""
Tests for L{lmproxy.core.subreaper}: reaping only the orphans, with a fake
C{waitid}; the service on a fake clock; and, in a real child process (so
that the test runner itself does not become a subreaper), C{prctl} and the
reaping of a real re-parented orphan.  (The assumption made of Twisted, that
its children are known, is tested in C{tests/test_compat.py}.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.descendants import Proc
from lmproxy.core.subreaper import REAP_SECONDS, Subreaper, reap_orphans
from lmproxy.logs import set_log_level
from tests.harness import child_env

TIMEOUT = 60  # seconds; only a bound against a hang, never a measure


class FakeChildren:
    """Exited children waiting to be reaped, for C{reap_orphans}' C{waitid}."""

    def __init__(self, *exited: int) -> None:
        self.exited = list(exited)
        self.reaped: list[int] = []
        self.children = True

    def waitid(self, idtype: int, pid: int, options: int) -> Any:
        if not self.children:
            raise ChildProcessError()
        if idtype == os.P_ALL:
            assert options & os.WNOWAIT, "never reap without looking first"
            return SimpleNamespace(si_pid=self.exited[0]) if self.exited else None
        assert idtype == os.P_PID and not options & os.WNOWAIT
        self.exited.remove(pid)
        self.reaped.append(pid)
        return SimpleNamespace(si_pid=pid)


class ReapOrphansTests(SynchronousTestCase):
    def test_orphans_are_reaped(self) -> None:
        children = FakeChildren(40, 41)
        self.assertEqual(reap_orphans(lambda: {10}, children.waitid), [40, 41])
        self.assertEqual(children.reaped, [40, 41])

    def test_twisted_children_are_left_to_twisted(self) -> None:
        """A child of Twisted's is not reaped (its exit status is Twisted's): the round ends."""
        children = FakeChildren(40, 10, 41)
        self.assertEqual(reap_orphans(lambda: {10}, children.waitid), [40])
        self.assertEqual(children.exited, [10, 41])

    def test_no_children(self) -> None:
        children = FakeChildren()
        children.children = False
        self.assertEqual(reap_orphans(lambda: set(), children.waitid), [])


class SubreaperServiceTests(SynchronousTestCase):
    def test_reaps_every_interval(self) -> None:
        set_log_level("Debug")
        self.addCleanup(set_log_level, "Normal")
        clock = MemoryReactorClock()
        rounds: list[float] = []
        service = Subreaper(clock, lambda: None, lambda: rounds.append(clock.seconds()) or [7])
        with capturedLogs() as events:
            service.startService()
            clock.advance(REAP_SECONDS)
            clock.advance(REAP_SECONDS)
        self.assertEqual(rounds, [REAP_SECONDS, 2 * REAP_SECONDS])
        self.assertIn("reaped orphan process 7", [formatEvent(e) for e in events])
        service.stopService()
        clock.advance(REAP_SECONDS)
        self.assertEqual(len(rounds), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_orphans_left_after_shutdown_are_killed(self) -> None:
        """
        After the reactor's shutdown (every service stopped), an orphan still
        there gets SIGKILL; one gone meanwhile is not reported.
        """
        reactor = MemoryReactorClock()
        left = [Proc(40, os.getpid(), 40, 1, False), Proc(41, 40, 40, 2, False)]
        sent: list[tuple[int, int]] = []

        def send(proc: Proc, signum: int) -> bool:
            sent.append((proc.pid, signum))
            return proc.pid == 40

        service = Subreaper(reactor, lambda: None, lambda: [], lambda: left, send)
        service.startService()
        [(trigger, args, kwargs)] = reactor.triggers["after"]["shutdown"]
        with capturedLogs() as events:
            trigger(*args, **kwargs)
        self.assertEqual(sent, [(40, signal.SIGKILL), (41, signal.SIGKILL)])
        [said] = [formatEvent(e) for e in events]
        self.assertIn("killed process 40, left behind outside its process group", said)
        service.stopService()

    def test_not_a_subreaper(self) -> None:
        """Said once, at start-up; nothing to reap or kill then."""
        clock = MemoryReactorClock()
        service = Subreaper(clock, lambda: "prctl failed: EINVAL", lambda: self.fail("reaped"))
        with capturedLogs() as events:
            service.startService()
        [event] = events
        self.assertIn("not a child subreaper (prctl failed: EINVAL)", formatEvent(event))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.triggers, {})
        service.stopService()


ORPHAN_SCRIPT = """
import os, sys, time
from lmproxy.core.subreaper import become_subreaper, reap_orphans

problem = become_subreaper()
if problem is not None:
    print("skip", problem)
    sys.exit(0)
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        os.setsid()
        os.write(write_end, b"%d\\n" % os.getpid())
        time.sleep(0.05)
        os._exit(3)
    os._exit(0)
os.waitpid(middle, 0)
orphan = int(os.read(read_end, 100))
with open(f"/proc/{orphan}/stat") as f:
    ppid = int(f.read().rpartition(")")[2].split()[1])
reaped = []
deadline = time.monotonic() + 60
while not reaped and time.monotonic() < deadline:
    reaped = reap_orphans(lambda: set())
    time.sleep(0.01)
print(ppid == os.getpid(), reaped == [orphan], os.path.exists(f"/proc/{orphan}"))
"""


class RealSubreaperTests(SynchronousTestCase):
    """In a child process: an orphan is re-parented to the subreaper, which reaps it."""

    def run_script(self, script: str) -> list[str]:
        """Run C{script} in a child Python; the words it printed (it may ask to skip)."""
        ran = subprocess.run(
            [sys.executable, "-c", script],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(ran.returncode, 0, ran.stderr)
        if ran.stdout.startswith("skip"):
            raise self.skipTest(ran.stdout)
        return ran.stdout.split()

    def test_orphan_is_ours_and_reaped(self) -> None:
        self.assertEqual(self.run_script(ORPHAN_SCRIPT), ["True", "True", "False"])

    def test_orphans_and_their_children_are_found(self) -> None:
        """L{orphans}: the children Twisted did not spawn, and their descendants."""
        self.assertEqual(self.run_script(LEFT_SCRIPT), ["True", "True"])


LEFT_SCRIPT = """
import os, signal, sys, time
from lmproxy.core import descendants
from lmproxy.core.subreaper import become_subreaper, orphans

if become_subreaper() is not None:
    print("skip")
    sys.exit(0)
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # the orphan's own child
            time.sleep(600)
        os.write(write_end, b"%d\\n" % os.getpid())
        time.sleep(600)
    os._exit(0)
os.waitpid(middle, 0)
orphan = int(os.read(read_end, 100))
while len(orphans(lambda: set())) < 2:  # its child is forked, or the test's timeout ends it
    time.sleep(0.01)
found = orphans(lambda: set())
print(found[0].pid == orphan, found[1].ppid == orphan)
for proc in found:
    descendants.signal_proc(proc, signal.SIGKILL)
os.waitpid(orphan, 0)
"""
