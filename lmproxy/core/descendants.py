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


def parse_stat(pid: int, text: str) -> Proc | None:
    """
    The L{Proc} that a C{/proc/PID/stat} line describes, or C{None} if it is
    not one.

    @param pid: the process's id (the directory the line was read in).
    @param text: the line.
    """
    # The command name, in parentheses, may hold spaces and parentheses itself.
    _, paren, after = text.rpartition(")")
    fields = after.split()
    if not paren or len(fields) < 20:
        return None
    try:
        ppid, pgrp, start = int(fields[1]), int(fields[2]), int(fields[19])
    except ValueError:
        return None
    return Proc(pid, ppid, pgrp, start, fields[0] in ("Z", "X"))


def _read(path: str) -> bytes:
    """The whole of a small file, with plain system calls (a scan reads hundreds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_proc(pid: int, root: str = PROC) -> Proc | None:
    """The process C{pid} now, or C{None} if there is none (or no C{/proc})."""
    try:
        return parse_stat(pid, _read(f"{root}/{pid}/stat").decode("utf-8", "replace"))
    except OSError:
        return None


def scan(root: str = PROC) -> list[Proc]:
    """Every process there is now (none without C{/proc})."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found = (read_proc(int(name), root) for name in names if name.isdigit())
    return [proc for proc in found if proc is not None]


def carries(pid: int, mark: str, root: str = PROC) -> bool:
    """
    Whether process C{pid} has C{mark} in its environment.

    Another user's processes cannot be read, so they never carry it; a
    zombie's environment is empty.
    """
    entry = f"{MARK_VARIABLE}={mark}".encode()
    try:
        return entry in _read(f"{root}/{pid}/environ").split(b"\0")
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
