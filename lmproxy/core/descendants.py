"""
Finding the processes a service started, including those that left its
process group (a daemon that double-forks and calls C{setsid}).

Every service process is spawned with L{MARK_VARIABLE} set to a mark of its
own (L{new_mark}) in its environment.  Children inherit their parent's
environment, whatever group or session they move to, and whichever process
they are re-parented to when their parent exits: the processes that carry the
mark, and their descendants, are the service's, found by walking C{/proc}
(Linux).  A process that clears its environment and leaves the group is not
found; one whose children are found through it is.

Where there is no C{/proc}, nothing is found: the process group is all there
is to end, as before.

A process is named by its pid and its start time (L{Proc}), and signalled only
while a process with that pid has that start time: a pid reused meanwhile by
someone else's process is left alone.

This module imports the standard library only: the watchdog child
(L{lmproxy.core.reaper}) uses it after lmproxy has died.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

MARK_VARIABLE = "LMPROXY_MARK"
"""The environment variable that carries a service process's mark."""

PROC = "/proc"


def new_mark() -> str:
    """A mark no other process carries: for one run of a service."""
    import secrets  # lmproxy's side only: the watchdog child never makes one

    return secrets.token_hex(8)


class Proc(NamedTuple):
    """
    One process, as C{/proc/PID/stat} describes it.

    @ivar pid: its process id.
    @ivar ppid: its parent's.
    @ivar pgrp: its process group.
    @ivar start: when it started (clock ticks after boot): with C{pid}, names it.
    @ivar zombie: it has exited and waits to be reaped.
    """

    pid: int
    ppid: int
    pgrp: int
    start: int
    zombie: bool


def parse_stat(pid: int, line: bytes) -> Proc | None:
    """
    The L{Proc} that a C{/proc/PID/stat} line describes, or C{None} if it is
    not one.

    @param pid: the process's id (the directory the line was read in).
    @param line: the line, as read (bytes: a scan parses hundreds, undecoded).
    """
    # The command name, in parentheses, may hold spaces and parentheses itself.
    _, paren, after = line.rpartition(b")")
    fields = after.split(maxsplit=20)  # the start time is the 20th field after it
    if not paren or len(fields) < 20:
        return None
    try:
        ppid, pgrp, start = int(fields[1]), int(fields[2]), int(fields[19])
    except ValueError:
        return None
    return Proc(pid, ppid, pgrp, start, fields[0] in (b"Z", b"X"))


_STAT_SIZE = 4096
"""More than a stat line ever holds (its command name is at most 64 bytes)."""

_ENVIRON_SIZE = 65536


def _read(path: str, size: int) -> bytes:
    """
    The whole of a small file, with plain system calls (a scan reads
    hundreds): one read when it holds less than C{size} bytes, which for the
    files of C{/proc} read here means the end was reached.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, size)]
        while len(chunks[-1]) == size:
            chunks.append(os.read(fd, size))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_proc(pid: int, root: str = PROC) -> Proc | None:
    """The process C{pid} now, or C{None} if there is none (or no C{/proc})."""
    try:
        return parse_stat(pid, _read(f"{root}/{pid}/stat", _STAT_SIZE))
    except OSError:
        return None


def scan(root: str = PROC, window: PidWindow | None = None) -> list[Proc]:
    """
    Every process there is now (none without C{/proc}).

    @param window: if given, only the processes whose pids are in it are
        read (a scan reads each one's stat file: most of its cost).
    """
    try:
        names = os.listdir(root)
    except OSError:
        return []
    numbers = [int(name) for name in names if name.isdigit()]
    accept = None if window is None else in_window(window, root)  # after the listing
    if accept is not None:
        numbers = [pid for pid in numbers if accept(pid)]
    found = (read_proc(pid, root) for pid in numbers)
    return [proc for proc in found if proc is not None]


class PidWindow(NamedTuple):
    """
    Where the pids of a run's processes are: Linux hands pids out in turn,
    from the last one given up to C{pid_max}, then from the bottom again
    (skipping those in use), so the processes created since the run's leader
    have pids from the leader's up to the last one given, round the end,
    until the pids have gone round once.

    @ivar first: the leader's pid.
    @ivar forks: the processes and threads the machine had created (at boot's
        count, C{/proc/stat}) just after the leader.
    """

    first: int
    forks: int


def _forks(root: str) -> int:
    """The processes and threads created since boot (C{ValueError} if not told)."""
    stat = _read(f"{root}/stat", _ENVIRON_SIZE)
    return int(stat.split(b"\nprocesses ", 1)[1].split(None, 1)[0])


def pid_window(leader: int, root: str = PROC) -> PidWindow | None:
    """The L{PidWindow} of a run whose leader was just spawned; C{None} without C{/proc}."""
    try:
        return PidWindow(leader, _forks(root))
    except (OSError, ValueError, IndexError):
        return None


def in_window(window: PidWindow, root: str = PROC) -> Callable[[int], bool] | None:
    """
    Whether a pid may be one of a run's processes, now: C{None} when any may
    (the pids may have gone round since the leader, or C{/proc} does not say).
    Called after listing the pids to be tested: they were all given by then.
    """
    try:
        # The last pid given, and the threads there are now (each holds a pid).
        fields = _read(f"{root}/loadavg", _STAT_SIZE).split()
        last, threads = int(fields[4]), int(fields[3].split(b"/")[1])
        pid_max = int(_read(f"{root}/sys/kernel/pid_max", _STAT_SIZE))
        forks = _forks(root) - window.forks
    except (OSError, ValueError, IndexError):
        return None
    # The turn advanced by a pid per fork, and by those it skipped, in use:
    # far from a whole round (half: a fork or two may be counted in window.forks).
    if forks < 0 or forks + threads >= pid_max // 2:
        return None
    first = window.first
    if first <= last:
        return lambda pid: first <= pid <= last
    return lambda pid: pid >= first or pid <= last


def carries(pid: int, mark: str, root: str = PROC) -> bool:
    """
    Whether process C{pid} has C{mark} in its environment.

    Another user's processes cannot be read, so they never carry it; a
    zombie's environment is empty.
    """
    entry = f"{MARK_VARIABLE}={mark}".encode()
    try:
        return entry in _read(f"{root}/{pid}/environ", _ENVIRON_SIZE).split(b"\0")
    except OSError:
        return False


def closure(procs: Iterable[Proc], roots: Iterable[Proc]) -> list[Proc]:
    """
    C{roots} and all their descendants in C{procs}, by pid: never init, nor
    this process (a nested lmproxy may carry its parent's mark).

    @param procs: a L{scan}.
    @param roots: some of them.
    """
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    found: dict[int, Proc] = {}
    todo = list(roots)
    while todo:
        proc = todo.pop()
        if proc.pid in found or proc.pid in (1, os.getpid()):
            continue
        found[proc.pid] = proc
        todo.extend(children.get(proc.pid, []))
    return sorted(found.values(), key=lambda proc: proc.pid)


def marked(
    procs: Iterable[Proc], mark: str, carrying: Callable[[int, str], bool] = carries
) -> list[Proc]:
    """
    The processes that carry C{mark}, and all their descendants, in C{procs}.

    @param procs: a L{scan}.
    @param mark: a service run's mark.
    @param carrying: tells whether a pid carries a mark (L{carries}, or a fake).
    """
    procs = list(procs)
    return closure(procs, [p for p in procs if not p.zombie and carrying(p.pid, mark)])


def same(proc: Proc, root: str = PROC) -> bool:
    """Whether C{proc} still runs: its pid is there, with its start time, not a zombie."""
    now = read_proc(proc.pid, root)
    return now is not None and now.start == proc.start and not now.zombie


def signal_proc(
    proc: Proc,
    signum: int,
    root: str = PROC,
    kill: Callable[[int, int], None] = os.kill,
) -> bool:
    """
    Send C{signum} to C{proc} if it still runs.

    @return: whether it was sent (C{False}: gone, or not ours to signal).
    """
    if not same(proc, root):
        return False
    try:
        kill(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True
