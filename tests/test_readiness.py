"""
Tests for L{lmproxy.core.readiness}: the HealthcheckCommand retried until it
passes, the port probed, and a wait that is cancelled (the start failed, timed
out or was aborted) leaving nothing behind, on a L{MemoryProcessReactor}.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.readiness import PROBE_FIRST_DELAY, ReadinessReactor, Wakeup, wait_until_ready
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
