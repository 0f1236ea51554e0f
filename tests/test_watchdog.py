"""Unit tests of the watchdog's registration protocol and of lmproxy's side of it."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.reaper import read_groups
from lmproxy.core.watchdog import Watchdog
from lmproxy.testing import MemoryProcessReactor


class ReadGroupsTests(SynchronousTestCase):
    """What the watchdog process makes of lmproxy's lines."""

    def test_groups_still_registered_at_the_end(self) -> None:
        self.assertEqual(read_groups(["+10\n", "+11\n", "-10\n", "+12\n"]), {11, 12})

    def test_garbage_is_ignored(self) -> None:
        self.assertEqual(read_groups(["+x\n", "hello\n", "-\n", "+7"]), {7})


class WatchdogServiceTests(SynchronousTestCase):
    """lmproxy's side: spawns the watchdog in its own session and keeps it informed."""

    def test_registrations_are_written_to_the_watchdog(self) -> None:
        reactor = MemoryProcessReactor()
        watchdog = Watchdog(reactor, "/usr/bin/setsid")
        watchdog.add(5)  # before it runs: sent once it starts
        watchdog.startService()
        [process] = reactor.processes
        self.assertEqual(process.args[0], "/usr/bin/setsid")
        self.assertEqual(process.args[-2:], ["-m", "lmproxy.core.reaper"])
        watchdog.add(6)
        watchdog.discard(5)
        watchdog.discard(99)  # never registered: nothing sent
        self.assertEqual(process.transport.written, [b"+5\n", b"+6\n", b"-5\n"])

    def test_the_child_reads_what_lmproxy_writes(self) -> None:
        """Both sides speak the same protocol: the child's parser reads lmproxy's lines."""
        reactor = MemoryProcessReactor()
        watchdog = Watchdog(reactor, "/usr/bin/setsid")
        watchdog.startService()
        for pgid in (1234, 5678, 4194304):
            watchdog.add(pgid)
        watchdog.discard(5678)
        [process] = reactor.processes
        written = b"".join(process.transport.written).decode("ascii")
        self.assertEqual(read_groups(written.splitlines(keepends=True)), {1234, 4194304})

    def test_child_ending_while_running_is_logged(self) -> None:
        """Without its child nothing guards the groups any more: lmproxy says so."""
        reactor = MemoryProcessReactor()
        watchdog = Watchdog(reactor, "/usr/bin/setsid")
        watchdog.startService()
        [process] = reactor.processes
        with capturedLogs() as events:
            process.exit(1)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("service processes may outlive lmproxy", formatEvent(event))
        watchdog.add(7)  # the child is gone: nothing is written to it any more
        self.assertEqual(process.transport.written, [])

    def test_child_ending_after_stop_is_not_an_error(self) -> None:
        """At shutdown the child ends with lmproxy: nothing to report."""
        reactor = MemoryProcessReactor()
        watchdog = Watchdog(reactor, "/usr/bin/setsid")
        watchdog.startService()
        watchdog.stopService()
        [process] = reactor.processes
        with capturedLogs() as events:
            process.exit(0)
        self.assertEqual(events, [])
