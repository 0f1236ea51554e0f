"""
Tests of what SIGINT and SIGTERM do, from the first line of lmproxy's Python
on: L{lmproxy.quitsignals.QuitSignals} (exit 0 at once while nothing is
started, held once something may be) and L{lmproxy.shutdown.ShutdownSignals}
(once the reactor runs: stop gracefully, then kill at once).  No real signals
(the handlers are recorded, not installed), no real exit, a fake reactor.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.quitsignals import QUIT_SIGNALS, QuitSignals, SignalHandler
from lmproxy.shutdown import ShutdownSignals


class Exited(Exception):
    """What the fake C{os._exit} raises, so that the code after it does not run."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class FakeSignals:
    """Installs handlers by recording them, exits by raising L{Exited}."""

    def __init__(self) -> None:
        self.handlers: dict[int, SignalHandler | signal.Handlers] = {}
        self.installs = 0
        self.written: list[str] = []

    def install(self, signum: int, handler: SignalHandler | signal.Handlers) -> object:
        replaced = self.handlers.get(signum, signal.SIG_DFL)
        self.handlers[signum] = handler
        self.installs += 1
        return replaced

    def exit(self, status: int) -> None:
        raise Exited(status)

    def quit_signals(self) -> QuitSignals:
        return QuitSignals(self.install, self.exit, self.written.append)

    def deliver(self, signum: int) -> None:
        """Run the handler of C{signum}, as the interpreter would."""
        handler = self.handlers[signum]
        assert callable(handler), f"signal {signum} is ignored"
        handler(signum, None)


class FakeReactor:
    """Runs what it is given as a running reactor would, and records stops."""

    def __init__(self, signals: FakeSignals) -> None:
        self.signals = signals
        self.running = False
        self.during_startup: list[Callable[[], object]] = []
        self.from_thread: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.stops = 0

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., Any], *args: Any
    ) -> None:
        assert (phase, eventType) == ("during", "startup")
        self.during_startup.append(lambda: callable(*args))

    def callFromThread(self, callable: Callable[..., Any], *args: Any) -> None:
        self.from_thread.append((callable, args))

    def stop(self) -> None:
        self.stops += 1

    def run(self) -> None:
        """Start running: install the reactor's own SIGTERM handler, then the triggers."""
        self.running = True
        self.signals.handlers[signal.SIGTERM] = self.reactor_handler
        for f in self.during_startup:
            f()

    def reactor_handler(self, signum: int, frame: object) -> None:
        raise AssertionError("the reactor's own handler must be replaced")

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


class QuitSignalsTests(SynchronousTestCase):
    """Before the reactor runs."""

    def setUp(self) -> None:
        self.signals = FakeSignals()
        self.quit = self.signals.quit_signals()
        self.quit.install()

    def test_installs_all_three(self) -> None:
        """SIGHUP too: its default would kill lmproxy without stopping anything."""
        self.assertEqual(
            sorted(self.signals.handlers), [signal.SIGHUP, signal.SIGINT, signal.SIGTERM]
        )

    def test_nothing_started_exits_0_at_once(self) -> None:
        """From the handler itself: no exception reaches the code that was running."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            exited = self.assertRaises(Exited, self.signals.deliver, signum)
            self.assertEqual(exited.status, 0)
        self.assertEqual(
            self.signals.written,
            [
                "lmproxy: SIGINT before anything was started: exiting\n",
                "lmproxy: SIGTERM before anything was started: exiting\n",
                "lmproxy: SIGHUP before anything was started: exiting\n",
            ],
        )

    def test_held_signals_wait_for_the_receiver(self) -> None:
        """Once held, a signal neither exits nor is lost: the receiver gets it, in order."""
        self.quit.hold()
        self.signals.deliver(signal.SIGTERM)
        self.signals.deliver(signal.SIGINT)
        received: list[int] = []
        self.quit.hand_over(received.append)
        self.assertEqual(received, [signal.SIGTERM, signal.SIGINT])
        self.signals.deliver(signal.SIGINT)
        self.assertEqual(received, [signal.SIGTERM, signal.SIGINT, signal.SIGINT])
        self.assertEqual(self.signals.written, [])

    def test_an_ignored_sigint_stays_ignored(self) -> None:
        """
        A background job of a shell without job control starts with SIGINT
        ignored: it stays so (as Python and Twisted leave it); SIGTERM is handled.
        """
        signals = FakeSignals()
        signals.handlers[signal.SIGINT] = signal.SIG_IGN
        quit = signals.quit_signals()
        quit.install()
        self.assertEqual(signals.handlers[signal.SIGINT], signal.SIG_IGN)
        quit.install()  # again, after the reactor's SIGTERM handler
        self.assertEqual(signals.handlers[signal.SIGINT], signal.SIG_IGN)
        self.assertTrue(callable(signals.handlers[signal.SIGTERM]))

    def test_an_ignored_sighup_stays_ignored(self) -> None:
        """Started by C{nohup}, SIGHUP ignored: it stays so."""
        signals = FakeSignals()
        signals.handlers[signal.SIGHUP] = signal.SIG_IGN
        quit = signals.quit_signals()
        quit.install()
        quit.install()
        self.assertEqual(signals.handlers[signal.SIGHUP], signal.SIG_IGN)
        self.assertTrue(callable(signals.handlers[signal.SIGINT]))

    def test_reinstall(self) -> None:
        """Installing again (after the reactor replaced one) installs the same handler."""
        first = dict(self.signals.handlers)
        self.quit.install()
        self.assertEqual(self.signals.handlers, first)


class ShutdownSignalsTests(SynchronousTestCase):
    """SIGINT and SIGTERM around and after the start of the reactor."""

    def setUp(self) -> None:
        self.fake = FakeSignals()
        self.quit = self.fake.quit_signals()
        self.quit.install()
        self.reactor = FakeReactor(self.fake)
        self.supervisor = FakeSupervisor()
        self.signals = ShutdownSignals(self.supervisor, self.reactor, self.quit)

    def start(self) -> None:
        """What makeService and then the tree's start do."""
        self.quit.hold()
        self.signals.startService()

    def signal(self, signum: int) -> None:
        """Deliver C{signum} to its handler, then let the reactor take a turn."""
        self.fake.deliver(signum)
        self.reactor.turn()

    def test_takes_over_right_after_the_reactor_installs_its_own(self) -> None:
        """The reactor's SIGTERM handler is replaced in the same startup phase."""
        self.start()
        quit_signals = len(QUIT_SIGNALS)
        self.assertEqual((len(self.reactor.during_startup), self.fake.installs), (1, quit_signals))
        self.reactor.run()
        self.assertEqual(self.fake.installs, 2 * quit_signals)
        self.signal(signal.SIGTERM)
        self.assertEqual(self.reactor.stops, 1)

    def test_sighup_stops_cleanly_without_a_reload(self) -> None:
        """Without a reload to do, SIGHUP stops lmproxy as SIGTERM does."""
        self.start()
        self.reactor.run()
        self.signal(signal.SIGHUP)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))

    def test_sighup_reloads(self) -> None:
        """With one, SIGHUP reloads, in the reactor's thread, every time; nothing stops."""
        reloads: list[int] = []
        self.signals = ShutdownSignals(
            self.supervisor, self.reactor, self.quit, reload=lambda: reloads.append(1)
        )
        self.start()
        self.reactor.run()
        self.fake.deliver(signal.SIGHUP)
        self.assertEqual(reloads, [])  # not from the handler
        self.reactor.turn()
        self.signal(signal.SIGHUP)
        self.assertEqual((len(reloads), self.reactor.stops), (2, 0))
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGHUP)  # stopping: no reload, no kill
        self.assertEqual((len(reloads), self.reactor.stops, self.supervisor.kills), (2, 1, 0))

    def test_sighup_before_the_reactor_runs_reloads_once_it_does(self) -> None:
        """A SIGHUP held before the reactor runs is a reload once it runs."""
        reloads: list[int] = []
        self.signals = ShutdownSignals(
            self.supervisor, self.reactor, self.quit, reload=lambda: reloads.append(1)
        )
        self.start()
        self.fake.deliver(signal.SIGHUP)
        self.reactor.run()
        self.reactor.turn()
        self.assertEqual((len(reloads), self.reactor.stops), (1, 0))

    def test_signal_after_the_start_before_the_reactor_runs(self) -> None:
        """
        The tree started (the watchdog child may run) but not the reactor: the
        signal is acted on once it runs, by a graceful stop.
        """
        self.start()
        self.fake.deliver(signal.SIGINT)
        self.assertEqual(self.reactor.stops, 0)
        self.reactor.run()
        self.reactor.turn()
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))
        self.assertEqual(self.fake.written, [])

    def test_two_signals_before_the_reactor_runs(self) -> None:
        """Both are kept: a graceful stop, then the kill."""
        self.start()
        self.fake.deliver(signal.SIGTERM)
        self.fake.deliver(signal.SIGTERM)
        self.reactor.run()
        self.reactor.turn()
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 1))

    def test_started_while_running(self) -> None:
        """A tree started on a running reactor takes the signals over at once."""
        self.reactor.running = True
        self.start()
        self.assertEqual(self.reactor.during_startup, [])
        self.signal(signal.SIGTERM)
        self.assertEqual(self.reactor.stops, 1)

    def test_handler_defers_to_the_reactor(self) -> None:
        """A handler only hands the work to the reactor's next turn."""
        self.start()
        self.reactor.run()
        self.fake.deliver(signal.SIGTERM)
        self.assertEqual((self.reactor.stops, len(self.reactor.from_thread)), (0, 1))

    def test_first_sigterm_stops_the_reactor(self) -> None:
        self.start()
        self.reactor.run()
        self.signal(signal.SIGTERM)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))

    def test_first_sigint_stops_the_reactor(self) -> None:
        self.start()
        self.reactor.run()
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 0))

    def test_second_signal_kills_every_service(self) -> None:
        """Once, at once, and the reactor is not stopped again."""
        self.start()
        self.reactor.run()
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 1))
        self.signal(signal.SIGTERM)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (1, 2))

    def test_signal_while_stopping_kills(self) -> None:
        """Once lmproxy is stopping for another reason, a first signal kills at once."""
        self.start()
        self.reactor.run()
        self.signals.stopService()
        self.signal(signal.SIGINT)
        self.assertEqual((self.reactor.stops, self.supervisor.kills), (0, 1))
