"""
How lmproxy ends on SIGINT and SIGTERM.

The first signal stops the reactor, which stops every service in parallel
before lmproxy exits 0, as large-model-proxy does; a second one kills every
service's process group at once instead of waiting for graceful stops.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger

from lmproxy.logs import log_observer

SignalHandler = Callable[[int, FrameType | None], None]
"""What C{signal.signal} installs."""


class KillsAll(Protocol):
    """What a second signal needs: the supervisor's L{kill_all}."""

    def kill_all(self) -> None:
        """SIGKILL every service's process group now."""


class ShutdownReactor(Protocol):
    """The parts of the reactor that L{ShutdownSignals} uses."""

    def callWhenRunning(self, callable: Callable[..., Any], *args: Any) -> object:
        """Call C{callable} once the reactor runs."""

    def callFromThread(self, callable: Callable[..., Any], *args: Any) -> None:
        """Call C{callable} in the reactor's thread, on its next turn."""

    def stop(self) -> None:
        """Stop the reactor: twistd then stops every service and exits."""


class ShutdownSignals(Service):
    """
    The handlers of SIGINT and SIGTERM, from the moment the reactor runs.

    They replace the reactor's own, which would make twistd re-raise the
    signal at exit (lmproxy would not exit 0) and log an error for a second
    signal.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        supervisor: KillsAll,
        reactor: ShutdownReactor,
        install: Callable[[int, SignalHandler], object] = signal.signal,
    ) -> None:
        """
        @param supervisor: kills every service on a second signal.
        @param reactor: stopped on the first signal.
        @param install: installs a signal handler (C{signal.signal}).
        """
        self._supervisor = supervisor
        self._reactor = reactor
        self._install_handler = install
        self._shutting_down = False

    def startService(self) -> None:
        """Install the handlers once the reactor runs."""
        super().startService()
        # The reactor installs its own handlers when it starts running; ours
        # must come after them to replace them.
        self._reactor.callWhenRunning(self._install)

    def stopService(self) -> None:
        """
        lmproxy is stopping (for whatever reason): a signal from now on kills
        every service at once.
        """
        super().stopService()
        self._shutting_down = True

    def _install(self) -> None:
        self._install_handler(signal.SIGINT, self._received)
        self._install_handler(signal.SIGTERM, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes of the reactor's
        # thread: hand the work to the reactor's next turn.
        self._reactor.callFromThread(self._act, signal.Signals(signum).name)

    def _act(self, name: str) -> None:
        if not self._shutting_down:
            self._shutting_down = True
            self.log.info(
                "{signal}: stopping every service, then exiting (send it again to kill them "
                "at once)",
                signal=name,
            )
            self._reactor.stop()
        else:
            self.log.warn("{signal} again: killing every service now", signal=name)
            self._supervisor.kill_all()
