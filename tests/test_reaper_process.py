"""
The real watchdog child, run as lmproxy runs it (L{waiter.waiter_command}: a
shell loop, then C{python -m lmproxy.core.reaper}) and as Python alone: it
imports the standard library only, and it ends the groups it was told of.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core import descendants, reaper, waiter

CHILD = [sys.executable, "-m", reaper.__name__]
TIMEOUT = 60  # seconds; only a bound against a hang, never a measure


def imported_modules(stderr: str) -> list[str]:
    """
    The module names in the output of C{python -X importtime}.

    @param stderr: lines like C{import time:   133 |   1160 |   importlib.machinery}.
    """
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.append(name)
    return names


class StandardLibraryOnlyTests(SynchronousTestCase):
    """The child does not pay for lmproxy's Twisted side."""

    def test_no_twisted_module_is_imported(self) -> None:
        """
        Run the child exactly as lmproxy does, with C{-X importtime} added, to
        EOF: no C{twisted} module is imported, and of lmproxy only the child
        and its (empty) packages.
        """
        ran = subprocess.run(
            [sys.executable, "-X", "importtime", *CHILD[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(ran.returncode, 0, ran.stderr)
        modules = imported_modules(ran.stderr)
        # The check sees lmproxy's imports at all (else it would pass vacuously).
        self.assertIn("lmproxy.core", modules)
        self.assertEqual([m for m in modules if m.split(".")[0] == "twisted"], [])
        self.assertEqual(
            sorted({m for m in modules if m.split(".")[0] == "lmproxy"}),
            # -m runs lmproxy.core.reaper without importing it; it finds the
            # processes that left their group with lmproxy.core.descendants.
            ["lmproxy", "lmproxy.core", "lmproxy.core.descendants"],
        )

    def test_imports_name_the_standard_library_only(self) -> None:
        """
        In a fresh interpreter, importing the child loads no module from
        outside the standard library besides its own packages (and what the
        interpreter had loaded before it).
        """
        script = (
            "import sys\n"
            "before = set(sys.modules)\n"
            f"import {reaper.__name__}\n"
            "for name in sorted(set(sys.modules) - before):\n"
            "    if name.split('.')[0] not in sys.stdlib_module_names:\n"
            "        print(name)\n"
        )
        ran = subprocess.run(
            [sys.executable, "-c", script],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(ran.returncode, 0, ran.stderr)
        self.assertEqual(
            ran.stdout.split(),
            ["lmproxy", "lmproxy.core", "lmproxy.core.descendants", "lmproxy.core.reaper"],
        )


class WaiterTests(SynchronousTestCase):
    """
    The shell loop that is the child while lmproxy runs (L{waiter.WAITER}):
    at the end of its pipe it hands Python what Python would have kept.
    """

    def replay(self, lines: list[bytes], then: list[str] | None = None) -> str:
        """What the waiter, told C{lines}, writes to C{then} (C{cat}) at the end of its pipe."""
        ran = subprocess.run(
            ["/bin/sh", "-c", waiter.WAITER, "lmproxy-watchdog", *(then or ["cat"])],
            input=b"".join(lines),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual((ran.returncode, ran.stderr), (0, b""))
        return ran.stdout.decode("ascii", errors="replace")

    def assertSameRegistry(self, lines: list[bytes]) -> None:
        """The replay of C{lines} leaves Python's registry as C{lines} themselves do."""
        direct, replayed = reaper.Registry(), reaper.Registry()
        # Line by line, as reaper.watch reads the pipe.
        for line in b"".join(lines).splitlines():
            direct.feed(line.decode("ascii", errors="replace"))
        for line in self.replay(lines).splitlines():
            replayed.feed(line)
        self.assertEqual((replayed.groups, replayed.services), (direct.groups, direct.services))
        self.assertTrue(direct.groups)  # else the comparison proves little

    def test_registrations_and_discards(self) -> None:
        """Groups, service runs and discards, in any order, as Python would keep them."""
        quirky = reaper.ServiceRun("m2", "kill $(cat pid) `x` 'a b' \\ \"q\" *", "/tmp/a b")
        self.assertSameRegistry(
            [
                reaper.add_line(5),
                reaper.add_line(12),
                reaper.service_line(77, reaper.ServiceRun("m1")),
                reaper.service_line(78, quirky),
                reaper.discard_line(12),
                reaper.add_line(31),
                reaper.discard_line(5),
                reaper.add_line(5),
                reaper.add_line(31),
                reaper.discard_line(77),
                reaper.add_line(78),
                reaper.add_line(2**31 - 1),
            ]
        )

    def test_garbage_is_ignored(self) -> None:
        """Lines that are not the protocol's change nothing, as in Python."""
        self.assertSameRegistry(
            [
                reaper.add_line(40),
                b'+abc\n+\n-\n*{}\n*{"pgid": x}\n?40\n+4 0\n$(touch x)\n+$x\n',
                b"+0\n+00041\n-0040\n+\xff\n",
                b"+42",  # no line end: the pipe closed
            ]
        )

    def test_lines_are_never_evaluated(self) -> None:
        """A line's text is data: nothing in it runs."""
        marker = Path(self.mktemp()).resolve()
        self.replay([b"+7$(touch %s)\n" % bytes(marker), b"+8;touch %s\n" % bytes(marker)])
        self.assertFalse(marker.exists())

    def test_nothing_registered_starts_nothing(self) -> None:
        """After a normal shutdown (every group discarded) Python is not started."""
        marker = Path(self.mktemp()).resolve()
        self.replay(
            [reaper.add_line(9), reaper.discard_line(9)], ["/bin/sh", "-c", f"touch {marker}"]
        )
        self.assertFalse(marker.exists())


class ChildTests(SynchronousTestCase):
    """The child with real process groups (each a C{sleep} in a session of its own)."""

    command = CHILD

    def group(self) -> subprocess.Popen[bytes]:
        """A real process group of our own; it is ended when the test ends."""
        process = subprocess.Popen(["sleep", "600"], start_new_session=True)

        def end() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(TIMEOUT)

        self.addCleanup(end)
        return process

    def spawn(self) -> subprocess.Popen[bytes]:
        """The watchdog child, in a session of its own as lmproxy starts it."""
        child = subprocess.Popen(self.command, stdin=subprocess.PIPE, start_new_session=True)

        def end() -> None:
            if child.poll() is None:
                child.kill()
            child.wait(TIMEOUT)

        self.addCleanup(end)
        return child

    def child(self, lines: list[bytes]) -> subprocess.Popen[bytes]:
        """The watchdog child, told C{lines}; then its pipe closes, as when lmproxy dies."""
        child = self.spawn()
        assert child.stdin is not None
        child.stdin.write(b"".join(lines))
        child.stdin.close()
        return child

    def test_registered_group_is_ended_when_the_pipe_closes(self) -> None:
        """On EOF the child sends SIGTERM to a group still registered, and exits."""
        kept = self.group()
        child = self.child([reaper.add_line(kept.pid)])
        # Reap the group first: a zombie still counts as there for killpg, so
        # the child would wait out its grace period (lmproxy's children, once
        # lmproxy is dead, are reaped by init).
        self.assertEqual(kept.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(child.wait(TIMEOUT), 0)

    def test_discarded_group_is_left_alone(self) -> None:
        """A group lmproxy discarded is not the child's business any more."""
        kept, discarded = self.group(), self.group()
        child = self.child(
            [
                reaper.add_line(kept.pid),
                reaper.add_line(discarded.pid),
                reaper.discard_line(discarded.pid),
            ]
        )
        self.assertEqual(kept.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(child.wait(TIMEOUT), 0)
        self.assertIsNone(discarded.poll())

    def test_signals_meant_for_lmproxy_do_not_end_the_child(self) -> None:
        """SIGINT and SIGTERM do not end the child: only the end of its pipe does."""
        kept = self.group()
        child = self.spawn()
        assert child.stdin is not None
        child.stdin.write(reaper.add_line(kept.pid))
        child.stdin.flush()
        _wait_until_ignored(child.pid, signal.SIGINT, signal.SIGTERM)
        child.send_signal(signal.SIGINT)
        child.send_signal(signal.SIGTERM)
        self.assertIsNone(kept.poll())
        child.stdin.close()
        self.assertEqual(kept.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(child.wait(TIMEOUT), 0)

    def test_kill_command_then_strays(self) -> None:
        """
        For a service run: the KillCommand runs in the run's WorkDir (it
        writes a marker there); a process that carries the run's mark outside
        any group registered (a daemon in a session of its own) gets SIGTERM.
        """
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        mark = descendants.new_mark()
        stray = subprocess.Popen(
            ["sleep", "600"],
            env={**os.environ, descendants.MARK_VARIABLE: mark},
            start_new_session=True,
        )
        self.addCleanup(lambda: stray.poll() is None and stray.kill())
        group = self.group()
        run = reaper.ServiceRun(mark, "pwd > kill-command-ran", str(work))
        child = self.child([reaper.service_line(group.pid, run)])
        # Reaped first, as in test_registered_group_is_ended_when_the_pipe_closes.
        self.assertEqual(group.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(stray.wait(TIMEOUT), -signal.SIGTERM)
        self.assertEqual(child.wait(TIMEOUT), 0)
        self.assertEqual((work / "kill-command-ran").read_text(), f"{work}\n")


class WaiterChildTests(ChildTests):
    """The same, with the child as lmproxy starts it: the shell loop, then Python."""

    command = waiter.waiter_command(sys.executable)


def _wait_until_ignored(pid: int, *signums: int) -> None:
    """
    Return once process C{pid} ignores every signal in C{signums}, as its
    C{SigIgn} mask in C{/proc} shows: before that, a signal could land before
    the child has set its handlers, and the test would prove nothing.
    """
    wanted = sum(1 << (signum - 1) for signum in signums)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            [ignored] = [int(line.split()[1], 16) for line in f if line.startswith("SigIgn:")]
        if ignored & wanted == wanted:
            return
        time.sleep(0.01)  # a test helper outside any reactor: polling is fine
    raise AssertionError(f"process {pid} never ignored {signums}")
