"""
No service process outlives lmproxy, even when lmproxy is killed with SIGKILL.

lmproxy starts one small watchdog process, in a session of its own, and tells it
over a pipe which process groups it owns (``+PGID`` / ``-PGID`` lines).  When the
pipe closes (lmproxy has exited, however it died), the watchdog sends SIGTERM to
every group still registered, and SIGKILL to those still there after a grace
period.  After a normal shutdown no group is registered and it just exits.

``python -m lmproxy.core.watchdog`` is the watchdog itself; L{Watchdog} is lmproxy's
side of the pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

from twisted.application.service import Service
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.logs import log_observer

GRACE_SECONDS = 5.0


class Watchdog(Service):
    """lmproxy's side: starts the watchdog process and keeps it informed."""

    log = Logger(observer=log_observer)

    def __init__(self, reactor: IReactorProcess, setsid: str) -> None:
        self._reactor = reactor
        self._setsid = setsid
        self._transport: IProcessTransport | None = None
        self._groups: set[int] = set()

    def startService(self) -> None:
        super().startService()
        self._transport = self._reactor.spawnProcess(
            _WatchdogProtocol(self),
            self._setsid,
            [self._setsid, sys.executable, "-m", "lmproxy.core.watchdog"],
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        for pgid in self._groups:
            self._send(f"+{pgid}")

    def add(self, pgid: int) -> None:
        """lmproxy now owns process group ``pgid``."""
        self._groups.add(pgid)
        self._send(f"+{pgid}")

    def discard(self, pgid: int) -> None:
        """Process group ``pgid`` is gone."""
        if pgid in self._groups:
            self._groups.discard(pgid)
            self._send(f"-{pgid}")

    def _send(self, line: str) -> None:
        if self._transport is not None:
            self._transport.write(f"{line}\n".encode())

    def _ended(self) -> None:
        self._transport = None
        if self.running:
            self.log.error("the watchdog process ended; service processes may outlive lmproxy")


class _WatchdogProtocol(ProcessProtocol):
    def __init__(self, owner: Watchdog) -> None:
        self._owner = owner

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended()


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_all(groups: Iterable[int], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def terminate_groups(groups: set[int], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every group, then SIGKILL those still alive after ``grace`` seconds."""
    _signal_all(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        groups = {g for g in groups if _alive(g)}
        if not groups:
            return
        time.sleep(0.05)  # a separate process with nothing else to do: polling is fine
    _signal_all(groups, signal.SIGKILL)


def read_groups(lines: Iterable[str]) -> set[int]:
    """The groups still registered when ``lines`` end."""
    groups: set[int] = set()
    for line in lines:
        line = line.strip()
        if line[:1] == "+" and line[1:].isdigit():
            groups.add(int(line[1:]))
        elif line[:1] == "-" and line[1:].isdigit():
            groups.discard(int(line[1:]))
    return groups


def main() -> None:
    """Read registrations until lmproxy's end of the pipe closes, then clean up."""
    # Signals meant for lmproxy's terminal or group are not for us: we end on EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups = read_groups(sys.stdin)
    if groups:
        terminate_groups(groups)


if __name__ == "__main__":
    main()
