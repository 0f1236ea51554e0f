"""
Unit tests of the watchdog child (L{lmproxy.core.reaper}): its protocol parser
and its cleanup loop, with a fake clock, a fake sleep and fake process groups.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from io import StringIO
from typing import cast

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.descendants import Proc
from lmproxy.core.reaper import (
    GRACE_SECONDS,
    KILL_COMMANDS_SECONDS,
    POLL_SECONDS,
    Registry,
    ServiceRun,
    add_line,
    discard_line,
    last_rites,
    read_groups,
    run_kill_commands,
    service_line,
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

    def end(self, registry: Registry) -> None:
        self.terminated.append(set(registry.groups))

    def test_groups_left_at_the_end_are_terminated(self) -> None:
        watch([b"+10\n", b"+11\n", b"-10\n"], self.end)
        self.assertEqual(self.terminated, [{11}])

    def test_nothing_left_nothing_done(self) -> None:
        """After a normal shutdown every group was discarded: cleanup is not even called."""
        watch([b"+10\n", b"-10\n"], self.end)
        watch([service_line(10, ServiceRun("m", "kill it")), b"-10\n"], self.end)
        watch([], self.end)
        self.assertEqual(self.terminated, [])

    def test_bytes_that_are_not_ascii(self) -> None:
        """Undecodable bytes cannot make the child die and leave the groups unguarded."""
        watch([b"\xff\xfe+10\n", b"+11\xff\n", b"+12\n"], self.end)
        self.assertEqual(self.terminated, [{12}])


class ServiceLineTests(SynchronousTestCase):
    """C{*JSON}: a service run's group, its mark and its KillCommand."""

    def feed(self, *lines: bytes) -> Registry:
        registry = Registry()
        for line in lines:
            registry.feed(line.decode("ascii"))
        return registry

    def test_round_trip(self) -> None:
        """The parser reads back what L{service_line} writes, as one line."""
        run = ServiceRun("ab12", "docker stop x\nrm -f 'é'", "/srv/models")
        line = service_line(4194304, run)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n"))
        registry = self.feed(line, service_line(11, ServiceRun("cd34")))
        self.assertEqual(registry.groups, {11, 4194304})
        self.assertEqual(registry.services, {4194304: run, 11: ServiceRun("cd34", None, None)})

    def test_discard_forgets_the_run(self) -> None:
        registry = self.feed(service_line(10, ServiceRun("m", "k")), discard_line(10))
        self.assertEqual((registry.groups, registry.services), (set(), {}))

    def test_malformed_lines_are_ignored(self) -> None:
        """A service line that is not one registers nothing, and breaks nothing."""
        registry = self.feed(
            b"*not json\n",
            b"*[]\n",
            b'*{"pgid": 10}\n',
            b'*{"pgid": 1, "mark": "m", "kill_command": null, "work_dir": null}\n',
            b'*{"pgid": true, "mark": "m", "kill_command": null, "work_dir": null}\n',
            b'*{"pgid": "12", "mark": "", "kill_command": null, "work_dir": null}\n',
            b'*{"pgid": 13, "mark": 5, "kill_command": null, "work_dir": null}\n',
            b'*{"pgid": 14, "mark": "m", "kill_command": 5, "work_dir": null}\n',
            b'*{"pgid": 15, "mark": "m", "kill_command": null, "work_dir": []}\n',
            add_line(16),
        )
        self.assertEqual((registry.groups, registry.services), ({16}, {}))


def _proc(pid: int, pgrp: int | None = None) -> Proc:
    return Proc(pid, 1, pgrp or pid, 100 + pid, False)


class StraysTests(SynchronousTestCase):
    """C{terminate_groups} ends the processes that left their group, beside the groups."""

    def setUp(self) -> None:
        self.groups = FakeGroups()
        self.alive: dict[Proc, float | None] = {}  # a stray: seconds it takes after SIGTERM
        self.sent: list[tuple[float, int, int]] = []
        self._ends_at: dict[Proc, float] = {}

    def send(self, proc: Proc, signum: int) -> bool:
        if not self.running(proc):
            return False
        self.sent.append((self.groups.now, proc.pid, signum))
        if signum == signal.SIGKILL:
            self._ends_at[proc] = self.groups.now
        elif self.alive[proc] is not None:
            self._ends_at.setdefault(proc, self.groups.now + cast(float, self.alive[proc]))
        return True

    def running(self, proc: Proc) -> bool:
        return proc in self.alive and self.groups.now < self._ends_at.get(proc, float("inf"))

    def terminate(self, groups: set[int], strays: list[Proc]) -> set[int]:
        return terminate_groups(
            groups,
            GRACE_SECONDS,
            kill=self.groups.kill,
            sleep=self.groups.sleep,
            clock=self.groups.clock,
            strays=strays,
            send=self.send,
            running=self.running,
        )

    def test_sigterm_then_sigkill_to_the_survivors(self) -> None:
        quick, stubborn, gone = _proc(20), _proc(21), _proc(22)
        self.alive.update({quick: 0.5, stubborn: None})
        self.groups.group(10, exit_after=0.0)
        self.terminate({10}, [quick, stubborn, gone])
        start = 1000.0
        self.assertEqual(
            self.sent,
            [
                (start, 20, signal.SIGTERM),
                (start, 21, signal.SIGTERM),
                (start + GRACE_SECONDS, 21, signal.SIGKILL),
            ],
        )
        self.assertEqual(self.groups.signals(signal.SIGTERM), [10])

    def test_returns_once_the_strays_are_gone(self) -> None:
        """No waiting out the grace period when every stray exited on SIGTERM."""
        stray = _proc(20)
        self.alive[stray] = 0.2
        self.terminate(set(), [stray])
        self.assertLess(self.groups.now, 1000.0 + 1.0)
        self.assertEqual([s for _, _, s in self.sent], [signal.SIGTERM])


class FakeKillCommand:
    """A started KillCommand on the fake clock."""

    def __init__(self, clock: FakeGroups, pid: int, takes: float | None) -> None:
        self.pid = pid
        self._clock = clock
        self._ends_at = None if takes is None else clock.now + takes

    def poll(self) -> int | None:
        if self._ends_at is not None and self._clock.now >= self._ends_at:
            return 0
        return None


class RunKillCommandsTests(SynchronousTestCase):
    """When lmproxy died: the KillCommands of the runs left, at once, 30 s in all."""

    def setUp(self) -> None:
        self.clock = FakeGroups()
        self.spawned: list[tuple[float, ServiceRun]] = []
        self.takes: dict[str, float | None] = {}

    def spawn(self, run: ServiceRun) -> FakeKillCommand:
        assert run.kill_command is not None
        if run.kill_command == "broken":
            raise FileNotFoundError(2, "No such file or directory", run.work_dir)
        self.spawned.append((self.clock.now, run))
        self.clock.group(5000 + len(self.spawned), exit_after=None)
        return FakeKillCommand(self.clock, 5000 + len(self.spawned), self.takes[run.kill_command])

    def run_all(self, *runs: ServiceRun) -> list[ServiceRun]:
        return run_kill_commands(
            runs,
            spawn=self.spawn,
            kill=self.clock.kill,
            sleep=self.clock.sleep,
            clock=self.clock.clock,
        )

    def test_all_at_once_until_the_last_is_done(self) -> None:
        self.takes.update({"a": 1.0, "b": 3.0})
        a, b, none = ServiceRun("m1", "a", "/w"), ServiceRun("m2", "b"), ServiceRun("m3")
        self.assertEqual(self.run_all(a, none, b), [])
        self.assertEqual(self.spawned, [(1000.0, a), (1000.0, b)])
        self.assertGreaterEqual(self.clock.now, 1003.0)
        self.assertLess(self.clock.now, 1003.0 + 2 * POLL_SECONDS)
        self.assertEqual(self.clock.sent, [])

    def test_bounded_in_all(self) -> None:
        """Those still running at the limit get SIGKILL, to their whole group."""
        self.takes.update({"quick": 1.0, "hangs": None})
        hangs = ServiceRun("m2", "hangs")
        self.assertEqual(self.run_all(ServiceRun("m1", "quick"), hangs), [hangs])
        self.assertEqual(self.clock.now, 1000.0 + KILL_COMMANDS_SECONDS)
        self.assertEqual(self.clock.signals(signal.SIGKILL), [5002])

    def test_one_that_cannot_run(self) -> None:
        """It is reported; the others still run."""
        self.takes["a"] = 0.0
        a = ServiceRun("m1", "a")
        with capture_stderr() as said:
            self.assertEqual(self.run_all(ServiceRun("m2", "broken", "/gone"), a), [])
        self.assertEqual(self.spawned, [(1000.0, a)])
        self.assertIn("cannot run KillCommand 'broken'", said.getvalue())


class LastRitesTests(SynchronousTestCase):
    """lmproxy died: KillCommands first, then the groups and the strays."""

    def test_order_and_strays(self) -> None:
        registry = Registry()
        for line in (
            service_line(10, ServiceRun("m10", "stop ten", "/w")),
            service_line(11, ServiceRun("m11")),
            add_line(12),  # a helper command's
        ):
            registry.feed(line.decode("ascii"))
        done: list[object] = []
        found = {"m10": [_proc(10), _proc(30, 30), _proc(31, 30)], "m11": [_proc(11), _proc(12)]}

        def terminate(groups: set[int], strays: list[Proc]) -> None:
            done.append(("terminate", set(groups), [p.pid for p in strays]))

        scanned = [_proc(99)]

        def marked(procs: list[Proc], mark: str) -> list[Proc]:
            self.assertIs(procs, scanned)
            return found[mark]

        last_rites(
            registry,
            kill_commands=lambda runs: done.append(("kill", [r.kill_command for r in runs])),
            scan=lambda: done.append("scan") or scanned,
            marked=marked,
            terminate=terminate,
        )
        # Members of a registered group are signalled as a group, not one by one.
        self.assertEqual(
            done,
            [("kill", ["stop ten", None]), "scan", ("terminate", {10, 11, 12}, [30, 31])],
        )


@contextmanager
def capture_stderr() -> Iterator[StringIO]:
    """What is written to C{sys.stderr} meanwhile."""
    said = StringIO()
    with redirect_stderr(said):
        yield said
