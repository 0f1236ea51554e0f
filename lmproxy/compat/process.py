"""
What lmproxy assumes of Twisted's process support beyond its public API (see
L{lmproxy.compat}).

lmproxy is a child subreaper (L{lmproxy.core.subreaper}): it must reap the
orphans re-parented to it, and never a child that Twisted spawned, whose exit
status Twisted reads.  Twisted has no public way to tell which children are
its own.  The assumption, tested: a child spawned with C{spawnProcess} is a key
of C{twisted.internet.process.reapProcessHandlers} from the spawn until
Twisted has reaped it.

Every process lmproxy runs leads a session of its own.  Through the C{setsid}
command, that costs an exec more per spawn (about a millisecond, on the way of
every cold start and swap); L{spawn_in_session} has C{posix_spawn} call
C{setsid} instead.  The assumptions, tested: Twisted's C{Process} spawns with
C{_trySpawnInsteadOfFork} (its file actions from C{_listOpenFDs} and
C{_getFileActions}), and falls back to forking (another working directory)
with C{_setupChild} run in the child.

This module imports only Twisted's process support.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Container, Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeGuard

from twisted.internet import process as twisted_process
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol

if TYPE_CHECKING:
    from twisted.internet.posixbase import PosixReactorBase


def twisted_children() -> Container[int]:
    """The pids of the children that Twisted's process support will reap."""
    return twisted_process.reapProcessHandlers


class _SessionProcess(twisted_process.Process):
    """
    Twisted's C{Process}, its child the leader of a new session: spawned as
    Twisted spawns it (the same file actions and signal defaults) with
    C{posix_spawn}'s C{setsid}; forked where Twisted forks, with C{setsid}
    first thing in the child, as Twisted's own C{PTYProcess} does.
    """

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: Mapping[str, str] | None,
        kwargs: dict[str, Any],
    ) -> bool:
        # The same conditions as Twisted's (posix_spawn has no chdir here).
        if uid is not None or gid is not None:
            return False
        if path is not None and os.path.abspath(path) != os.path.abspath("."):
            return False
        fd_state: list[tuple[int, bool]] = []
        for fd in twisted_process._listOpenFDs():
            with suppress(OSError):  # listed, closed since
                fd_state.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC))))
        self.pid = os.posix_spawnp(
            executable,
            args,
            os.environ if environment is None else environment,
            file_actions=twisted_process._getFileActions(
                fd_state,
                kwargs["fdmap"],
                doClose=os.POSIX_SPAWN_CLOSE,
                doDup2=os.POSIX_SPAWN_DUP2,
            ),
            setsigdef=ignored_signals(),
            setsid=True,
        )
        self.status = -1
        # The child was made on this CPU and waits for it, while lmproxy
        # would go on with its bookkeeping of the spawn: let the child start
        # first (measured: cold starts and swaps 0.15-0.35 ms sooner).
        os.sched_yield()
        return True

    def _setupChild(self, fdmap: dict[int, int]) -> None:
        os.setsid()
        super()._setupChild(fdmap)


def ignored_signals(status: str = "/proc/self/status") -> list[int]:
    """
    The signals whose disposition is C{SIG_IGN}, which a spawned child
    would inherit: Twisted resets them to their default in the child.

    Twisted asks C{signal.getsignal} for each of the 64 signals (27 µs
    at every spawn here); on Linux the kernel's C{SigIgn} mask in
    C{/proc/self/status} says the same in one read (12 µs).  Elsewhere, or if it
    cannot be read, each signal is asked as Twisted does.

    @param status: the file to read the mask from.
    """
    try:
        with open(status, "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    mask = int(line[7:], 16)
                    return [n for n in _VALID_SIGNALS if mask >> (n - 1) & 1]
    except (OSError, ValueError):
        pass
    return [n for n in range(1, signal.NSIG) if signal.getsignal(n) == signal.SIG_IGN]


# The kernel's mask also has the C library's own signals (32 and 33 with
# glibc), which a process may inherit ignored: posix_spawn refuses them, and
# getsignal never says they are ignored.
_VALID_SIGNALS = sorted(int(n) for n in signal.valid_signals() if 0 < n < signal.NSIG)


def can_spawn_in_session(reactor: object) -> TypeGuard[PosixReactorBase]:
    """Whether L{spawn_in_session} works with C{reactor}: Twisted's posix reactors."""
    # Here: the module is the reactor's (imported by now), and imports TCP and TLS.
    from twisted.internet.posixbase import PosixReactorBase

    return isinstance(reactor, PosixReactorBase) and hasattr(os, "POSIX_SPAWN_CLOSE")


def spawn_in_session(
    reactor: PosixReactorBase,
    protocol: ProcessProtocol,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str],
    path: str | None,
    child_fds: Mapping[int, int | str],
) -> IProcessTransport:
    """
    C{reactor.spawnProcess(protocol, executable, args, env, path,
    childFDs=child_fds)}, the child in a new session (as if run through the
    C{setsid} command).
    """
    process: IProcessTransport = _SessionProcess(
        reactor, executable, list(args), dict(env), path, protocol, None, None, dict(child_fds)
    )
    return process
