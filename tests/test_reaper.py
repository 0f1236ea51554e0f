"""
Unit tests of the watchdog child (L{lmproxy.core.reaper}): its protocol parser
and its cleanup loop, with a fake clock, a fake sleep and fake process groups.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.reaper import (
    GRACE_SECONDS,
    POLL_SECONDS,
    Registry,
    add_line,
    discard_line,
    read_groups,
    terminate_groups,
    watch,
)


class FakeGroups:
    """
    Process groups on a fake clock, for C{terminate_groups}' C{kill},
    C{sleep} and C{clock}.

    @ivar now: the fake monotonic time, moved only by L{sleep}.
    @ivar sent: every signal sent, as C{(time, pgid, signum)}.
    @ivar slept: every sleep, in seconds.
    """

    def __init__(self) -> None:
        self.now = 1000.0  # not 0: the loop must not assume the clock starts there
        self.sent: list[tuple[float, int, int]] = []
        self.slept: list[float] = []
        self._exit_after: dict[int, float | None] = {}
        self._ends_at: dict[int, float] = {}
        self._not_ours: set[int] = set()
        self.on_sleep: Callable[[], None] = lambda: None

    def group(self, pgid: int, exit_after: float | None = 0.0) -> None:
        """
        A group of ours that is there.

        @param exit_after: seconds it takes to exit after SIGTERM; C{None} if it
            ignores SIGTERM.
        """
        self._exit_after[pgid] = exit_after

    def not_ours(self, pgid: int) -> None:
        """A group that belongs to someone else: signals to it fail with EPERM."""
        self._not_ours.add(pgid)

    def vanish(self, pgid: int) -> None:
        """The group is gone, on its own."""
        self._exit_after.pop(pgid, None)
        self._ends_at.pop(pgid, None)

    def _alive(self, pgid: int) -> bool:
        if pgid not in self._exit_after:
            return False
        return pgid not in self._ends_at or self.now < self._ends_at[pgid]

    def kill(self, pgid: int, signum: int) -> None:
        self.sent.append((self.now, pgid, signum))
        if pgid in self._not_ours:
            raise PermissionError(pgid)
        if not self._alive(pgid):
            raise ProcessLookupError(pgid)
        if signum == signal.SIGKILL:
            self.vanish(pgid)
        elif signum == signal.SIGTERM:
            exit_after = self._exit_after[pgid]
            if exit_after is not None:
                self._ends_at.setdefault(pgid, self.now + exit_after)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep()

    def clock(self) -> float:
        return self.now

    def terminate(self, groups: set[int], grace: float = GRACE_SECONDS) -> set[int]:
        """Run the cleanup loop on these fakes."""
        return terminate_groups(
            groups, grace, kill=self.kill, sleep=self.sleep, clock=self.clock, poll=POLL_SECONDS
        )

    def signals(self, signum: int) -> list[int]:
        """The groups sent C{signum}, in order."""
        return [pgid for _, pgid, sent in self.sent if sent == signum]


class TerminateGroupsTests(SynchronousTestCase):
    """SIGTERM to all, wait until they are gone, SIGKILL the survivors at the deadline."""

    def setUp(self) -> None:
        self.groups = FakeGroups()

    def test_empty_set(self) -> None:
        """No groups: no signal, no sleep."""
        self.assertEqual(self.groups.terminate(set()), set())
        self.assertEqual(self.groups.sent, [])
        self.assertEqual(self.groups.slept, [])

    def test_sigterm_to_every_group_at_once(self) -> None:
        """Every group gets SIGTERM before the first sleep."""
        for pgid in (30, 10, 20):
            self.groups.group(pgid)
        self.groups.terminate({30, 10, 20})
        self.assertEqual(
            self.groups.sent[:3],
            [
                (1000.0, 10, signal.SIGTERM),
                (1000.0, 20, signal.SIGTERM),
                (1000.0, 30, signal.SIGTERM),
            ],
        )

    def test_polls_until_gone_and_no_sigkill(self) -> None:
        """Groups that exit on SIGTERM get no SIGKILL, and the loop returns once they are gone."""
        self.groups.group(10, exit_after=0.12)
        self.groups.group(20, exit_after=0.01)
        self.assertEqual(self.groups.terminate({10, 20}), set())
        self.assertEqual(self.groups.signals(signal.SIGKILL), [])
        # Three polls: 20 is gone at the first, 10 at the third (0.15 s > 0.12 s).
        self.assertEqual(self.groups.slept, [POLL_SECONDS] * 3)
        self.assertEqual(self.groups.signals(0), [10, 20, 10, 10])

    def test_sigkill_to_the_survivors_at_the_deadline(self) -> None:
        """A group still there after the grace period gets SIGKILL then, and only it."""
        self.groups.group(10, exit_after=None)  # ignores SIGTERM
        self.groups.group(20, exit_after=1.0)
        self.assertEqual(self.groups.terminate({10, 20}, grace=2.0), {10})
        [(when, pgid, _)] = [s for s in self.groups.sent if s[2] == signal.SIGKILL]
        self.assertEqual(pgid, 10)
        self.assertAlmostEqual(when, 1002.0)
        # Never slept past the deadline, nor a poll longer than POLL_SECONDS.
        self.assertAlmostEqual(sum(self.groups.slept), 2.0)
        self.assertLessEqual(max(self.groups.slept), POLL_SECONDS)

    def test_default_grace(self) -> None:
        """Without a grace argument, SIGKILL comes GRACE_SECONDS after SIGTERM."""
        self.groups.group(10, exit_after=None)
        terminate_groups(
            {10}, kill=self.groups.kill, sleep=self.groups.sleep, clock=self.groups.clock
        )
        [(when, _, _)] = [s for s in self.groups.sent if s[2] == signal.SIGKILL]
        self.assertAlmostEqual(when, 1000.0 + GRACE_SECONDS)

    def test_no_grace(self) -> None:
        """A grace of 0: SIGTERM, then SIGKILL at once, without sleeping."""
        self.groups.group(10, exit_after=None)
        self.assertEqual(self.groups.terminate({10}, grace=0), {10})
        self.assertEqual(self.groups.signals(signal.SIGKILL), [10])
        self.assertEqual(self.groups.slept, [])

    def test_group_already_gone(self) -> None:
        """A group gone before SIGTERM (ProcessLookupError) is left alone; the others are not."""
        self.groups.group(20, exit_after=None)
        self.assertEqual(self.groups.terminate({10, 20}, grace=1.0), {20})
        self.assertEqual(self.groups.signals(signal.SIGTERM), [10, 20])
        self.assertNotIn(10, self.groups.signals(0) + self.groups.signals(signal.SIGKILL))

    def test_group_not_ours(self) -> None:
        """A group we may not signal (PermissionError) is never signalled again."""
        self.groups.not_ours(10)
        self.groups.group(20, exit_after=None)
        self.assertEqual(self.groups.terminate({10, 20}, grace=1.0), {20})
        self.assertEqual([pgid for _, pgid, _ in self.groups.sent].count(10), 1)

    def test_group_not_ours_any_more(self) -> None:
        """A group whose id turns to someone else's while we wait gets no SIGKILL."""
        self.groups.group(10, exit_after=None)
        self.groups.group(20, exit_after=None)
        self.groups.on_sleep = lambda: self.groups.not_ours(10)
        self.assertEqual(self.groups.terminate({10, 20}, grace=1.0), {20})
        self.assertEqual(self.groups.signals(signal.SIGKILL), [20])

    def test_group_gone_just_before_sigkill(self) -> None:
        """A group that ends between the last look and SIGKILL is no error."""
        self.groups.group(10, exit_after=None)
        real_clock = self.groups.clock
        looks = []

        def clock() -> float:
            # The loop reads the clock once per round; on the round that
            # finds the deadline passed, the group has just ended.
            now = real_clock()
            looks.append(now)
            if now >= 1001.0:
                self.groups.vanish(10)
            return now

        result = terminate_groups(
            {10}, 1.0, kill=self.groups.kill, sleep=self.groups.sleep, clock=clock
        )
        self.assertEqual(result, set())
        self.assertEqual(self.groups.signals(signal.SIGKILL), [10])  # sent, ProcessLookupError
        self.assertGreater(len(looks), 2)


class RegistryTests(SynchronousTestCase):
    """The protocol: what lmproxy writes and what the child makes of it."""

    def test_lines(self) -> None:
        """C{+PGID} registers a group, C{-PGID} unregisters it, one line each."""
        self.assertEqual(add_line(1234), b"+1234\n")
        self.assertEqual(discard_line(1234), b"-1234\n")

    def test_round_trip(self) -> None:
        """The parser reads back what the line builders write."""
        registry = Registry()
        for line in (add_line(10), add_line(11), discard_line(10), add_line(4194304)):
            registry.feed(line.decode("ascii"))
        self.assertEqual(registry.groups, {11, 4194304})

    def test_line_ends(self) -> None:
        """CRLF, a missing line end and surrounding blanks do not matter."""
        self.assertEqual(read_groups(["+10\r\n", "  +11  \n", "+12"]), {10, 11, 12})

    def test_unknown_verbs_are_ignored(self) -> None:
        """Lines with a verb this child does not know are skipped, so the protocol can grow."""
        self.assertEqual(read_groups(["+10\n", "K10 docker stop x\n", "?10\n", "-\n"]), {10})

    def test_groups_that_lmproxy_cannot_own(self) -> None:
        """
        0 (killpg: our own group), 1 (killpg: every process we may signal) and
        numbers too large for a group id are refused.
        """
        self.assertEqual(read_groups(["+0\n", "+1\n", "+2\n", f"+{2**31}\n", "+" + "9" * 30]), {2})

    def test_digits_that_are_not_ascii(self) -> None:
        """Unicode digits such as C{²} pass C{str.isdigit} but are not group ids: no crash."""
        self.assertEqual(read_groups(["+²\n", "+١٢\n", "+12\n"]), {12})

    def test_discarding_an_unknown_group(self) -> None:
        """Unregistering a group never registered is no error."""
        self.assertEqual(read_groups(["-10\n", "+11\n"]), {11})


class WatchTests(SynchronousTestCase):
    """The child's main loop: follow the pipe, then clean up once."""

    def setUp(self) -> None:
        self.terminated: list[set[int]] = []

    def test_groups_left_at_the_end_are_terminated(self) -> None:
        watch([b"+10\n", b"+11\n", b"-10\n"], self.terminated.append)
        self.assertEqual(self.terminated, [{11}])

    def test_nothing_left_nothing_done(self) -> None:
        """After a normal shutdown every group was discarded: cleanup is not even called."""
        watch([b"+10\n", b"-10\n"], self.terminated.append)
        watch([], self.terminated.append)
        self.assertEqual(self.terminated, [])

    def test_bytes_that_are_not_ascii(self) -> None:
        """Undecodable bytes cannot make the child die and leave the groups unguarded."""
        watch([b"\xff\xfe+10\n", b"+11\xff\n", b"+12\n"], self.terminated.append)
        self.assertEqual(self.terminated, [{12}])
