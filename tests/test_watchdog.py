"""Unit tests of the watchdog's registration protocol and of lmproxy's side of it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.watchdog import Watchdog, read_groups
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
        self.assertEqual(process.args[-2:], ["-m", "lmproxy.core.watchdog"])
        watchdog.add(6)
        watchdog.discard(5)
        watchdog.discard(99)  # never registered: nothing sent
        self.assertEqual(process.transport.written, [b"+5\n", b"+6\n", b"-5\n"])
