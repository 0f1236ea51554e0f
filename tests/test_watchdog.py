"""Unit tests of the watchdog's registration protocol and of lmproxy's side of it."""

from __future__ import annotations

import os

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.reaper import Registry, ServiceRun, read_groups, service_line
from lmproxy.core.watchdog import Watchdog
from lmproxy.testing import MemoryProcessReactor


class PipeSpy:
    """
    Makes real pipes for the watchdog, as C{os.pipe} does, and keeps its own
    copy of the child's end, to read what lmproxy wrote.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self._test = test
        self.read_end: int | None = None
        self.write_end: int | None = None

    def __call__(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self.read_end, self.write_end = os.dup(read_end), write_end
        os.set_blocking(self.read_end, False)
        self._test.addCleanup(self.close_read_end)
        return read_end, write_end

    def close_read_end(self) -> None:
        """No reader left: a write to the pipe fails with EPIPE."""
        if self.read_end is not None:
            os.close(self.read_end)
            self.read_end = None

    def written(self) -> bytes:
        """Everything in the pipe so far: it is there as soon as the call that wrote it returns."""
        assert self.read_end is not None
        try:
            return os.read(self.read_end, 65536)
        except BlockingIOError:
            return b""

    def write_end_open(self) -> bool:
        assert self.write_end is not None
        try:
            os.fstat(self.write_end)
        except OSError:
            return False
        return True


def _watchdog(test: SynchronousTestCase) -> tuple[MemoryProcessReactor, Watchdog, PipeSpy]:
    reactor = MemoryProcessReactor()
    pipe = PipeSpy(test)
    watchdog = Watchdog(reactor, "/usr/bin/setsid", pipe)
    test.addCleanup(watchdog._close)
    return reactor, watchdog, pipe


class ReadGroupsTests(SynchronousTestCase):
    """What the watchdog process makes of lmproxy's lines."""

    def test_groups_still_registered_at_the_end(self) -> None:
        self.assertEqual(read_groups(["+10\n", "+11\n", "-10\n", "+12\n"]), {11, 12})

    def test_garbage_is_ignored(self) -> None:
        self.assertEqual(read_groups(["+x\n", "hello\n", "-\n", "+7"]), {7})


class WatchdogServiceTests(SynchronousTestCase):
    """lmproxy's side: spawns the watchdog in its own session and keeps it informed."""

    def test_registrations_are_written_to_the_watchdog(self) -> None:
        reactor, watchdog, pipe = _watchdog(self)
        watchdog.add(5)  # before it runs: sent once it starts
        watchdog.startService()
        [process] = reactor.processes
        self.assertEqual(process.args[0], "/usr/bin/setsid")
        self.assertEqual(process.args[-2:], ["-m", "lmproxy.core.reaper"])
        assert process.child_fds is not None
        self.assertIsInstance(process.child_fds[0], int)  # our pipe's other end
        self.assertEqual(pipe.written(), b"+5\n")
        watchdog.add(6)
        # In the pipe at once, not when the reactor next turns (it never does here).
        self.assertEqual(pipe.written(), b"+6\n")
        watchdog.discard(5)
        watchdog.discard(99)  # never registered: nothing sent
        self.assertEqual(pipe.written(), b"-5\n")

    def test_service_runs(self) -> None:
        """A service's group is sent with its run: mark, KillCommand, WorkDir."""
        _reactor, watchdog, pipe = _watchdog(self)
        run = ServiceRun("mark", "docker stop m", "/w")
        watchdog.add(7, run)  # before it runs: sent with its run once it starts
        watchdog.startService()
        watchdog.add(8, ServiceRun("other"))
        registry = Registry()
        for line in pipe.written().decode("ascii").splitlines():
            registry.feed(line)
        self.assertEqual(registry.services, {7: run, 8: ServiceRun("other")})
        watchdog.discard(7)
        self.assertEqual(pipe.written(), b"-7\n")
        self.assertEqual(service_line(7, run)[:1], b"*")

    def test_the_child_reads_what_lmproxy_writes(self) -> None:
        """Both sides speak the same protocol: the child's parser reads lmproxy's lines."""
        _reactor, watchdog, pipe = _watchdog(self)
        watchdog.startService()
        for pgid in (1234, 5678, 4194304):
            watchdog.add(pgid)
        watchdog.discard(5678)
        written = pipe.written().decode("ascii")
        self.assertEqual(read_groups(written.splitlines(keepends=True)), {1234, 4194304})

    def test_child_ending_while_running_is_logged(self) -> None:
        """Without its child nothing guards the groups any more: lmproxy says so."""
        reactor, watchdog, pipe = _watchdog(self)
        watchdog.startService()
        [process] = reactor.processes
        with capturedLogs() as events:
            process.exit(1)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("service processes may outlive lmproxy", formatEvent(event))
        self.assertFalse(pipe.write_end_open())
        watchdog.add(7)  # the child is gone: nothing is written to it any more
        self.assertEqual(pipe.written(), b"")

    def test_child_gone_before_it_is_reaped(self) -> None:
        """A write to a child that is gone (EPIPE) closes the pipe, and raises nothing."""
        _reactor, watchdog, pipe = _watchdog(self)
        watchdog.startService()
        pipe.close_read_end()
        watchdog.add(7)
        self.assertFalse(pipe.write_end_open())

    def test_child_ending_after_stop_is_not_an_error(self) -> None:
        """At shutdown the child ends with lmproxy: nothing to report."""
        reactor, watchdog, _pipe = _watchdog(self)
        watchdog.startService()
        watchdog.stopService()
        [process] = reactor.processes
        with capturedLogs() as events:
            process.exit(0)
        self.assertEqual(events, [])
