"""
How lmproxy ends on SIGINT and SIGTERM, and reloads its config on SIGHUP.

The first signal stops the reactor, which stops every service in parallel
before lmproxy exits 0, as large-model-proxy does; a second one kills every
service's process group at once instead of waiting for graceful stops.
Signals that came before the reactor ran were held by
L{lmproxy.quitsignals.QuitSignals}, installed earlier still: they are acted
on as soon as it runs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger

from lmproxy.logs import log_observer
from lmproxy.quitsignals import QuitSignals


class KillsAll(Protocol):
    """What a second signal needs: the supervisor's L{kill_all}."""

    def kill_all(self) -> None:
        """SIGKILL every service's process group now."""


class ShutdownReactor(Protocol):
    """The parts of the reactor that L{ShutdownSignals} uses."""

    running: bool
    """Is the reactor running?"""

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., Any], *args: Any
    ) -> object:
        """Call C{callable} in the given phase of the given event."""

    def callFromThread(self, callable: Callable[..., Any], *args: Any) -> None:
        """Call C{callable} in the reactor's thread, on its next turn."""

    def stop(self) -> None:
        """Stop the reactor: twistd then stops every service and exits."""


class ShutdownSignals(Service):
    """
    What SIGINT and SIGTERM do from the moment the reactor runs.

    The handler stays L{QuitSignals}' own: it replaces the reactor's, which
    would make twistd re-raise the signal at exit (lmproxy would not exit 0)
    and log an error for a second signal.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        supervisor: KillsAll,
        reactor: ShutdownReactor,
        quit: QuitSignals,
        reload: Callable[[], object] | None = None,
    ) -> None:
        """
        @param supervisor: kills every service on a second signal.
        @param reactor: stopped on the first signal.
        @param quit: the process's signal handler, which hands the signals
            over once the reactor runs.
        @param reload: what SIGHUP does (in the reactor's thread); without
            it, SIGHUP stops lmproxy as SIGTERM does.
        """
        self._reload = reload
        self._supervisor = supervisor
        self._reactor = reactor
        self._quit = quit
        self._shutting_down = False

    def startService(self) -> None:
        """Take the signals over once the reactor runs."""
        super().startService()
        if self._reactor.running:
            self._take_over()
        else:
            # The reactor installs its own SIGTERM handler in the "during
            # startup" phase, first of all; this trigger, added later, runs
            # right after it and replaces it, before any "after startup" code.
            self._reactor.addSystemEventTrigger("during", "startup", self._take_over)

    @property
    def stopping(self) -> bool:
        """Is lmproxy stopping (a quit signal was acted on, or the tree is stopping)?"""
        return self._shutting_down

    def stopService(self) -> None:
        """
        lmproxy is stopping (for whatever reason): a signal from now on kills
        every service at once.
        """
        super().stopService()
        self._shutting_down = True

    def _take_over(self) -> None:
        self._quit.install()
        self._quit.hand_over(self._received)

    def _received(self, signum: int) -> None:
        # A signal handler runs between any two bytecodes of the reactor's
        # thread: hand the work to the reactor's next turn.
        self._reactor.callFromThread(self._act, signal.Signals(signum).name)

    def _act(self, name: str) -> None:
        if name == "SIGHUP" and self._reload is not None:
            if not self._shutting_down:
                self.log.info("SIGHUP: reloading the config")
                self._reload()
            return
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
