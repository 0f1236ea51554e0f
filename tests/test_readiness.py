"""
Tests for L{lmproxy.core.readiness}: the HealthcheckCommand retried until it
passes, the port probed, and a wait that is cancelled (the start failed, timed
out or was aborted) leaving nothing behind, on a L{MemoryProcessReactor}.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.readiness import (
    PROBE_FIRST_DELAY,
    SPIN_SECONDS,
    SPIN_TURNS,
    ReadinessReactor,
    Wakeup,
    connect_now,
    is_loopback,
    wait_until_ready,
)
from lmproxy.logs import set_log_level
from lmproxy.testing import MemoryProcessReactor, QuickExit
from tests.test_shell import RecordingRegistry

HC = "curl -f http://127.0.0.1:9001/health"


class WaitUntilReadyTests(SynchronousTestCase):
    """L{wait_until_ready} on a fake reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.typed = cast(ReadinessReactor, self.reactor)
        self.registry = RecordingRegistry()

    def wait(self, **changes: object) -> Deferred[str]:
        values: dict[str, object] = {
            "name": "A",
            "command": "true",
            "proxy_target_port": 9001,
            "proxy_target_host": "127.0.0.1",
        }
        values.update(changes)
        config = ServiceConfig(**values)  # type: ignore[arg-type]
        return Deferred.fromCoroutine(
            wait_until_ready(
                self.typed,
                config,
                self.reactor.seconds() + config.startup_timeout,
                Wakeup(self.typed),
                self.reactor.signal_group,
                self.registry,
            )
        )

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.reactor.pending_probes(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        probes = len(self.reactor.tcpClients)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), probes, "probed after the cancel")

    def test_cancelled_while_probing(self) -> None:
        """
        Cancelled while a probe is pending: the wait ends (the given-up
        connection is not taken for a refusal, to be probed again for ever).
        """
        d = self.wait()
        self.assertEqual(len(self.reactor.pending_probes()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertNothingLeft()

    def test_cancelled_while_sleeping(self) -> None:
        """Cancelled between two probes: the wait ends too."""
        d = self.wait()
        self.reactor.refuse_connections()
        self.reactor.advance(PROBE_FIRST_DELAY / 2)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertNothingLeft()

    def test_healthcheck_group_is_registered(self) -> None:
        """The watchdog knows a running healthcheck's group (until it is gone)."""
        d = self.wait(healthcheck_command=HC)
        [check] = self.reactor.live_processes()
        self.assertEqual(self.registry.groups, {check.pid: None})
        check.exit(0)
        self.assertEqual(self.registry.told, [("add", check.pid), ("discard", check.pid)])
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_cancelled_during_healthcheck(self) -> None:
        """Cancelled while the healthcheck runs: it is killed, and nothing is left."""
        d = self.wait(healthcheck_command=HC)
        [check] = self.reactor.live_processes()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(check.exited)
        self.assertNothingLeft()

    def test_failing_healthcheck_retried(self) -> None:
        """
        A healthcheck that fails at once (a 503 while the model loads) is run
        again every interval, each failure a debug line with what it printed;
        then the port is probed.
        """
        set_log_level("Debug")
        self.addCleanup(set_log_level, "Normal")
        self.reactor.exit_during_spawn[HC] = QuickExit(22, b"", b"curl: (22) error: 503\n")
        with capturedLogs() as events:
            d = self.wait(healthcheck_command=HC, healthcheck_interval=0.2)
            for _ in range(5):
                self.reactor.advance(0)
                self.reactor.advance(0.2)
        self.assertEqual(len(self.reactor.processes), 6)
        self.assertEqual(self.reactor.pending_probes(), [])
        self.assertEqual(
            {(e["log_level"], formatEvent(e)) for e in events},
            {
                (
                    LogLevel.debug,
                    "A: healthcheck not passing yet (exited with status 22): curl: (22) error: 503",
                )
            },
        )
        self.reactor.exit_during_spawn[HC] = 0
        self.reactor.advance(0)
        self.reactor.advance(0.2)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.pending_probes()), 1)
        self.reactor.accept_connection(9001)
        self.assertEqual(self.successResultOf(d), "127.0.0.1")


class FakeConnect:
    """A L{ConnectNow}: refuses until L{listen}, then hands out one socket pair end each time."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.calls: list[tuple[str, int]] = []
        self.listening = False
        self.made: list[socket.socket] = []
        self._test = test

    def listen(self) -> None:
        self.listening = True

    def __call__(self, host: str, port: int) -> socket.socket | None:
        self.calls.append((host, port))
        if not self.listening:
            return None
        ours, theirs = socket.socketpair()
        self._test.addCleanup(ours.close)
        self._test.addCleanup(theirs.close)
        self.made.append(theirs)
        return theirs


class SpinTests(SynchronousTestCase):
    """
    A loopback port probed with L{wait_until_ready}'s C{connect} at every
    turn of the reactor at first, and the connection that finds it ready.
    """

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.typed = cast(ReadinessReactor, self.reactor)
        self.connect = FakeConnect(self)
        self.kept: list[socket.socket] = []

    def wait(self, host: str = "127.0.0.1", keep: bool = True) -> Deferred[str]:
        config = ServiceConfig(
            name="A", command="true", proxy_target_port=9001, proxy_target_host=host
        )
        return Deferred.fromCoroutine(
            wait_until_ready(
                self.typed,
                config,
                self.reactor.seconds() + config.startup_timeout,
                Wakeup(self.typed),
                self.reactor.signal_group,
                connect=self.connect,
                connected=self.kept.append if keep else None,
            )
        )

    def test_ready_at_the_first_try(self) -> None:
        """A port that accepts at once: ready, its connection kept, no reactor probe."""
        self.connect.listen()
        d = self.wait()
        self.assertEqual(self.successResultOf(d), "127.0.0.1")
        self.assertEqual(self.connect.calls, [("127.0.0.1", 9001)])
        self.assertEqual(self.kept, self.connect.made)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_every_turn(self) -> None:
        """
        Refused: tried again at the next turn of the reactor, not after a
        delay, until it accepts.
        """
        d = self.wait()
        self.assertEqual(len(self.connect.calls), 1)
        self.assertEqual(
            [call.getTime() for call in self.reactor.getDelayedCalls()], [self.reactor.seconds()]
        )
        self.connect.listen()
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d), "127.0.0.1")
        self.assertEqual(len(self.connect.calls), 2)
        self.assertEqual(len(self.kept), 1)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_then_the_reactor_probes_by_turns(self) -> None:
        """
        After SPIN_TURNS tries (on this fake reactor, no time passes between
        two turns), the reactor's probes (with their back-off) take over.
        """
        d = self.wait()
        self.reactor.advance(0)
        self.assertEqual(len(self.connect.calls), SPIN_TURNS)
        self.assertEqual(len(self.reactor.pending_probes()), 1)
        self.reactor.accept_connection(9001)
        self.assertEqual(self.successResultOf(d), "127.0.0.1")
        self.assertEqual(self.kept, [])  # the reactor's probe hangs up

    def test_then_the_reactor_probes_by_time(self) -> None:
        """After SPIN_SECONDS, too: a turn of a busy reactor may take long."""
        d = self.wait()
        self.reactor.advance(SPIN_SECONDS)
        self.assertEqual(len(self.connect.calls), 2)
        self.assertEqual(len(self.reactor.pending_probes()), 1)
        self.reactor.accept_connection(9001)
        self.assertEqual(self.successResultOf(d), "127.0.0.1")

    def test_not_loopback(self) -> None:
        """Another host is probed by the reactor alone: a connect may take a round trip."""
        self.connect.listen()
        d = self.wait(host="10.1.2.3")
        self.assertEqual(self.connect.calls, [])
        self.reactor.accept_connection(9001)
        self.assertEqual(self.successResultOf(d), "10.1.2.3")

    def test_closed_without_taker(self) -> None:
        """Without C{connected}, the connection that found the port ready is closed."""
        self.connect.listen()
        self.successResultOf(self.wait(keep=False))
        [made] = self.connect.made
        self.assertEqual(made.fileno(), -1)

    def test_cancelled_while_spinning(self) -> None:
        """Cancelled between two turns: nothing more is tried."""
        d = self.wait()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.reactor.advance(1)
        self.assertEqual(len(self.connect.calls), 1)
        self.assertEqual(self.reactor.tcpClients, [])


class ConnectNowTests(SynchronousTestCase):
    """L{connect_now} on real loopback sockets."""

    def test_refused(self) -> None:
        """A port where nothing listens: C{None}, at once."""
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now (nor, in practice, in a moment)
        self.assertIsNone(connect_now("127.0.0.1", port))

    def test_connected(self) -> None:
        """A listening port: a connected, non-blocking socket to it, within the call."""
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen()
        made = connect_now("127.0.0.1", server.getsockname()[1])
        assert made is not None
        self.addCleanup(made.close)
        self.assertEqual(made.getpeername(), server.getsockname())
        self.assertFalse(made.getblocking())
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        made.send(b"x")
        self.assertEqual(accepted.recv(1), b"x")

    def test_loopback(self) -> None:
        """Which addresses count as this machine's loopback."""
        self.assertTrue(is_loopback("127.0.0.1"))
        self.assertTrue(is_loopback("127.5.6.7"))
        self.assertTrue(is_loopback("::1"))
        self.assertFalse(is_loopback("10.0.0.1"))
        self.assertFalse(is_loopback("1.2.3.4"))
        self.assertFalse(is_loopback("::ffff:1.2.3.4"))
