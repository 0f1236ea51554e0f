"""
The watchdog child: ends lmproxy's process groups once lmproxy is gone.

lmproxy starts C{python -m lmproxy.core.reaper} in a session of its own (see
L{lmproxy.core.watchdog.Watchdog}, lmproxy's side) and writes to its standard
input which process groups it owns, one line each::

    +PGID    lmproxy now owns group PGID (a service's, or a helper command's)
    *JSON    lmproxy now owns group PGID, a service's run: {"pgid": PGID,
             "mark": MARK, "kill_command": COMMAND or null, "work_dir": DIR or null,
             "env": {NAME: VALUE} (only when the service has an Env)}
    -PGID    group PGID is gone

Each line is one verb character and its argument.  A line this child does not
understand is ignored, so the protocol can grow new verbs without a flag day.

When the pipe closes (lmproxy has exited, however it died, SIGKILL included),
the child runs the KillCommand of every service run still registered, all at
once, as lmproxy runs them (C{sh -c} in a session of its own, in the service's
WorkDir, with lmproxy's environment and the service's Env), for at most L{KILL_COMMANDS_SECONDS} in
all.  Then it sends SIGTERM to every group still registered and to the
processes that carry a registered run's mark but left its group
(L{lmproxy.core.descendants}), and SIGKILL to those still there after
L{GRACE_SECONDS}.  After a normal shutdown lmproxy has discarded every group
first, and the child just exits.

While lmproxy runs, the child is not Python: it is
L{lmproxy.core.waiter.WAITER}, a loop of C{/bin/sh} (about 1.6 MiB
resident, where a Python reading the pipe is 10.7) that keeps the registry
in shell variables.  When the pipe closes it replays what is still
registered, in the same protocol, to this module run as C{python -m
lmproxy.core.reaper}, which does the rest; after a normal shutdown nothing
is registered and Python is not started at all.  This module imports the
standard library only, and so do the packages it lives in, so that it
starts in a few tens of milliseconds once lmproxy is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from lmproxy.core import descendants
from lmproxy.core.descendants import Proc

GRACE_SECONDS = 5.0
"""How long groups get to exit after SIGTERM before they get SIGKILL."""

KILL_COMMANDS_SECONDS = 30.0
"""How long the KillCommands get, all of them together, before their groups get SIGKILL."""

POLL_SECONDS = 0.05
"""How often to look whether the groups sent SIGTERM (or the KillCommands) are gone yet."""

MAX_PGID = 2**31 - 1
"""Above this a number cannot be a process group id (and C{os.killpg} would overflow)."""

GroupSignaller = Callable[[int, int], None]
"""Send a signal to a process group: C{os.killpg}, or a fake in tests."""


class ServiceRun(NamedTuple):
    """
    What the child needs to clean up after one run of a service.

    @ivar mark: the mark in the environment of the run's processes.
    @ivar kill_command: the service's KillCommand, if it has one.
    @ivar work_dir: the directory the KillCommand runs in (lmproxy's own if C{None}).
    @ivar env: the service's C{Env}, (name, value) pairs added to the
        KillCommand's environment.
    """

    mark: str
    kill_command: str | None = None
    work_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def add_line(pgid: int) -> bytes:
    """
    The line that registers a process group.

    @param pgid: a process group lmproxy now owns.
    """
    return b"+%d\n" % pgid


def service_line(pgid: int, run: ServiceRun) -> bytes:
    """
    The line that registers the process group of a service's run.

    @param pgid: the group of the run's process.
    @param run: how to clean up after it.
    """
    fields: dict[str, object] = {
        "pgid": pgid,
        "mark": run.mark,
        "kill_command": run.kill_command,
        "work_dir": run.work_dir,
    }
    if run.env:
        fields["env"] = dict(run.env)
    # ASCII (non-ASCII escaped), and newlines escaped: one line.
    return b"*" + json.dumps(fields).encode("ascii") + b"\n"


def discard_line(pgid: int) -> bytes:
    """
    The line that unregisters a process group.

    @param pgid: a process group that is gone.
    """
    return b"-%d\n" % pgid


def _pgid(text: object) -> int | None:
    """
    The process group id that C{text} names, or C{None} if it names none that
    lmproxy could have started.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    # isdigit() alone accepts digits such as "²" that int() refuses.
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        return None
    pgid = int(text)
    # Refuse 0 and 1 above all: killpg(0, ...) signals our own group and
    # killpg(1, ...) is kill(-1, ...), every process we may signal.  Neither can
    # be the group of a process lmproxy started in a session of its own.
    if not 2 <= pgid <= MAX_PGID:
        return None
    return pgid


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(value)


def _env(value: object) -> tuple[tuple[str, str], ...]:
    if not (isinstance(value, dict) and all(isinstance(x, str) for p in value.items() for x in p)):
        raise ValueError(value)
    return tuple(value.items())


def _service(text: str) -> tuple[int, ServiceRun] | None:
    """The group and run a C{*} line's argument describes, or C{None}."""
    try:
        fields = json.loads(text)
        pgid = _pgid(fields["pgid"])
        mark = fields["mark"]
        command, work_dir = fields["kill_command"], fields["work_dir"]
        env = _env(fields.get("env", {}))
        run = ServiceRun(mark, _optional_text(command), _optional_text(work_dir), env)
    except (ValueError, TypeError, KeyError):
        return None
    if pgid is None or not (isinstance(mark, str) and mark):
        return None
    return pgid, run


class Registry:
    """
    What lmproxy has told the child so far.

    @ivar groups: the process groups lmproxy owns, as far as the child knows.
    @ivar services: the service runs among them, by group.
    """

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.services: dict[int, ServiceRun] = {}

    def feed(self, line: str) -> None:
        """
        Apply one line of the protocol; ignore it if it is not one.

        @param line: a line as lmproxy wrote it, with or without its line end.
        """
        line = line.strip()
        verb, argument = line[:1], line[1:]
        if verb == "*":
            service = _service(argument)
            if service is not None:
                self.groups.add(service[0])
                self.services[service[0]] = service[1]
            return
        pgid = _pgid(argument)
        if pgid is None:
            return
        if verb == "+":
            self.groups.add(pgid)
        elif verb == "-":
            self.groups.discard(pgid)
            self.services.pop(pgid, None)


def read_groups(lines: Iterable[str]) -> set[int]:
    """
    The groups still registered when C{lines} end.

    @param lines: the lines lmproxy wrote, in order.
    """
    registry = Registry()
    for line in lines:
        registry.feed(line)
    return registry.groups


def _signal(kill: GroupSignaller, pgid: int, signum: int) -> bool:
    """
    Send C{signum} to group C{pgid}.

    @return: C{True} if the group is there and ours to signal; C{False} if it
        has vanished (C{ProcessLookupError}) or is not ours (C{PermissionError}:
        its id now belongs to someone else's processes), so leave it alone.
    """
    try:
        kill(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def terminate_groups(
    groups: Iterable[int],
    grace: float = GRACE_SECONDS,
    *,
    kill: GroupSignaller = os.killpg,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll: float = POLL_SECONDS,
    strays: Iterable[Proc] = (),
    send: Callable[[Proc, int], bool] = descendants.signal_proc,
    running: Callable[[Proc], bool] = descendants.same,
) -> set[int]:
    """
    SIGTERM every group (and stray process), then SIGKILL those still there
    after C{grace} seconds.

    Returns as soon as every group is gone, so a clean exit costs no more than
    it takes.  This blocks: it is meant for the child, which has nothing else
    to do (lmproxy's own side never sleeps, it uses its reactor).

    @param groups: the process groups to end.
    @param grace: seconds between SIGTERM and SIGKILL.
    @param kill: sends a signal to a process group (signal 0 asks whether it is there).
    @param sleep: waits for some seconds.
    @param clock: a monotonic clock, in seconds.
    @param poll: seconds between two looks at the groups left.
    @param strays: processes to end too, outside those groups.
    @param send: signals a stray if it still runs.
    @param running: whether a stray still runs.
    @return: the groups that got SIGKILL.
    """
    # sorted: signal in a stable order, which also makes the fakes' record readable.
    pending = {pgid for pgid in sorted(groups) if _signal(kill, pgid, signal.SIGTERM)}
    procs = [proc for proc in strays if send(proc, signal.SIGTERM)]
    deadline = clock() + grace
    while pending or procs:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(poll, remaining))  # never past the deadline
        pending = {pgid for pgid in sorted(pending) if _signal(kill, pgid, 0)}
        procs = [proc for proc in procs if running(proc)]
    for proc in procs:
        send(proc, signal.SIGKILL)
    return {pgid for pgid in sorted(pending) if _signal(kill, pgid, signal.SIGKILL)}


class _Running(Protocol):
    """A started KillCommand: a C{subprocess.Popen}, or a fake."""

    pid: int

    def poll(self) -> int | None: ...


def _say(message: str) -> None:
    # The child's stderr is lmproxy's: its log, or its terminal.
    print(f"lmproxy watchdog: {message}", file=sys.stderr, flush=True)


def spawn_kill_command(run: ServiceRun) -> _Running:
    """Start C{run}'s KillCommand as lmproxy runs one: C{sh -c}, in a session of its own."""
    import subprocess  # only when lmproxy died: it costs the child's start-up time

    assert run.kill_command is not None
    return subprocess.Popen(
        ["/bin/sh", "-c", run.kill_command],
        cwd=run.work_dir,
        env={**os.environ, **dict(run.env)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_kill_commands(
    runs: Iterable[ServiceRun],
    limit: float = KILL_COMMANDS_SECONDS,
    *,
    spawn: Callable[[ServiceRun], _Running] = spawn_kill_command,
    kill: GroupSignaller = os.killpg,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll: float = POLL_SECONDS,
) -> list[ServiceRun]:
    """
    Run the KillCommands of C{runs} all at once, and wait for them, for at
    most C{limit} seconds in all; SIGKILL the groups of those still running then.

    @return: the runs whose KillCommand was killed at the limit.
    """
    started: list[tuple[ServiceRun, _Running]] = []
    for run in runs:
        if run.kill_command:
            try:
                started.append((run, spawn(run)))
            except OSError as e:
                _say(f"cannot run KillCommand {run.kill_command!r}: {e}")
    deadline = clock() + limit
    while any(process.poll() is None for _, process in started):
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(poll, remaining))
    late = [(run, process) for run, process in started if process.poll() is None]
    for run, process in late:
        _say(f"KillCommand {run.kill_command!r} still runs after {limit:g} s: killed")
        _signal(kill, process.pid, signal.SIGKILL)
    return [run for run, _ in late]


def last_rites(
    registry: Registry,
    *,
    kill_commands: Callable[[list[ServiceRun]], object] = run_kill_commands,
    scan: Callable[[], list[Proc]] = descendants.scan,
    marked: Callable[[list[Proc], str], list[Proc]] = descendants.marked,
    terminate: Callable[..., object] = terminate_groups,
) -> None:
    """
    lmproxy is gone: run the KillCommands of its service runs, then end its
    groups and the processes that left them.

    @param registry: what lmproxy registered and did not discard.
    @param kill_commands: runs the KillCommands (a fake in tests).
    @param scan: every process there is (a fake in tests).
    @param marked: the processes of a scan that carry a mark (a fake in tests).
    @param terminate: ends groups and strays, as L{terminate_groups} (a fake in tests).
    """
    runs = [registry.services[pgid] for pgid in sorted(registry.services)]
    kill_commands(runs)
    # After the KillCommands: what they ended need not be signalled.  One
    # scan for every run: /proc is read once.
    procs = scan() if runs else []
    strays: dict[int, Proc] = {}
    for run in runs:
        for proc in marked(procs, run.mark):
            if proc.pgrp not in registry.groups:
                strays[proc.pid] = proc
    terminate(registry.groups, strays=[strays[pid] for pid in sorted(strays)])


def watch(lines: Iterable[bytes], end: Callable[[Registry], Any] = last_rites) -> None:
    """
    Follow the registrations until C{lines} end, then clean up after lmproxy.

    @param lines: lmproxy's end of the pipe, line by line.
    @param end: cleans up after the groups still registered at the end (not
        called if there are none).
    """
    registry = Registry()
    for line in lines:
        # Bytes that are not ASCII cannot be part of a valid line: replace them
        # rather than die of a decoding error and leave the groups unguarded.
        registry.feed(line.decode("ascii", errors="replace"))
    if registry.groups:
        end(registry)


def main() -> None:
    """Be the watchdog child: watch standard input, then clean up."""
    # Signals meant for lmproxy's terminal or group are not for us: we end on
    # EOF, once lmproxy is gone, so that its groups are never left unguarded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(sys.stdin.buffer)


if __name__ == "__main__":
    main()
