"""
Tests of L{lmproxy.shutdown.ShutdownSignals} on a fake reactor: no real
signals (the handlers are recorded, not installed), no real time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.shutdown import ShutdownSignals, SignalHandler


class FakeReactor:
    """Runs what it is given as a running reactor would, and records stops."""

    def __init__(self) -> None:
        self.running = False
        self.when_running: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.from_thread: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.stops = 0

    def callWhenRunning(self, callable: Callable[..., Any], *args: Any) -> None:
        self.when_running.append((callable, args))

    def callFromThread(self, callable: Callable[..., Any], *args: Any) -> None:
        self.from_thread.append((callable, args))

    def stop(self) -> None:
        self.stops += 1

    def run(self) -> None:
        """Start running: call what waited for it."""
        self.running = True
        for f, args in self.when_running:
            f(*args)

    def turn(self) -> None:
        """One turn: call what signal handlers handed over."""
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)


class FakeSupervisor:
    """Counts L{kill_all} calls."""

    def __init__(self) -> None:
        self.kills = 0

    def kill_all(self) -> None:
        self.kills += 1


class ShutdownSignalsTests(SynchronousTestCase):
    """SIGINT and SIGTERM: stop gracefully, then kill at once."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.supervisor = FakeSupervisor()
        self.handlers: dict[int, SignalHandler] = {}
        self.signals = ShutdownSignals(self.supervisor, self.reactor, self.install)
        self.signals.startService()

    def install(self, signum: int, handler: SignalHandler) -> None:
        self.handlers[signum] = handler

    def signal(self, signum: int) -> None:
        """Deliver C{signum} to its handler, then let the reactor take a turn."""
        self.handlers[signum](signum, None)
        self.reactor.turn()

    def test_installed_once_the_reactor_runs(self) -> None:
        """After the reactor's own handlers, which it installs when it runs."""
        self.assertEqual(self.handlers, {})
        self.reactor.run()
        self.assertEqual(sorted(self.handlers), [signal.SIGINT, signal.SIGTERM])

    def test_handler_defers_to_the_reactor(self) -> None:
        """A handler only hands the work to the reactor's next turn."""
        self.reactor.run()
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual((self.reactor.stops, len(self.reactor.from_thread)), (0, 1))

    def test_first_sigterm_stops_the_reactor(self) -> None:
        self.reactor.run()
        self.signal(signal.SIGTERM)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))

    def test_first_sigint_stops_the_reactor(self) -> None:
        self.reactor.run()
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))

    def test_second_signal_kills_every_service(self) -> None:
        """Once, at once, and the reactor is not stopped again."""
        self.reactor.run()
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 1))
        self.signal(signal.SIGTERM)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 2))

    def test_signal_while_stopping_kills(self) -> None:
        """Once lmproxy is stopping for another reason, a first signal kills at once."""
        self.reactor.run()
        self.signals.stopService()
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (0, 1))
