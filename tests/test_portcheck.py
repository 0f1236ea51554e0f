"""
Tests for L{lmproxy.core.portcheck} (real sockets on 127.0.0.1, ports the OS
chose) and for the start attempt that uses it (L{lmproxy.core.startup}, on
the fake reactor): a target port already taken fails the start before the
spawn, with a reason naming the port; the back-off may retry it.
"""

from __future__ import annotations

import os
import socket
from typing import cast

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.portcheck import port_taken
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.startup import Launcher, StartFailed
from lmproxy.testing import MemoryProcessReactor


def _listening(test: SynchronousTestCase, family: int = socket.AF_INET) -> tuple[str, int]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind((host, 0))
    except OSError as e:
        raise test.skipTest(f"cannot listen on {host}: {e}") from None
    test.addCleanup(server.close)
    server.listen()
    return host, server.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PortTakenTests(SynchronousTestCase):
    def test_listener_on_the_port(self) -> None:
        host, port = _listening(self)
        self.assertEqual(
            port_taken(host, port), f"port {port} on {host} is already in use by another process"
        )

    def test_localhost(self) -> None:
        _, port = _listening(self)
        self.assertEqual(
            port_taken("localhost", port),
            f"port {port} on localhost is already in use by another process",
        )

    def test_ipv6(self) -> None:
        host, port = _listening(self, socket.AF_INET6)
        self.assertIsNotNone(port_taken(host, port))

    def test_free(self) -> None:
        self.assertIsNone(port_taken("127.0.0.1", _free_port()))

    def test_connection_in_time_wait_does_not_count(self) -> None:
        """What an earlier run's connections leave behind is no stray."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: TIME_WAIT on the server's port
        client.close()
        server.close()
        self.assertIsNone(port_taken("127.0.0.1", port))

    def test_not_checked(self) -> None:
        """A name (resolving it would block) or another machine's address: upstream's way."""
        _, port = _listening(self)
        self.assertIsNone(port_taken("model-box.example", port))
        self.assertIsNone(port_taken("192.0.2.1", port))  # TEST-NET-1: not this machine's


class StartAttemptTests(SynchronousTestCase):
    """The attempt checks the port before it spawns anything."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        self.checked: list[tuple[str, int]] = []

    def attempt(self, taken: str | None) -> Deferred[str]:
        def check(host: str, port: int) -> str | None:
            self.checked.append((host, port))
            return taken

        launcher = Launcher(
            cast(ReadinessReactor, self.reactor),
            self.reactor.signal_group,
            False,
            port_check=check,
        )
        config = ServiceConfig(
            name="s",
            command="true",
            proxy_target_host="127.0.0.1",
            proxy_target_port=9001,
            log_file_path=os.path.join(os.path.abspath(self.mktemp()), "s.log"),
        )
        return Deferred.fromCoroutine(launcher.attempt(config).run())

    def test_taken(self) -> None:
        failed = self.failureResultOf(self.attempt("port 9001 on 127.0.0.1 is taken"))
        self.assertIsInstance(failed.value, StartFailed)
        self.assertEqual(str(failed.value), "port 9001 on 127.0.0.1 is taken")
        self.assertTrue(failed.value.retryable)  # the stray may go: with back-off
        self.assertEqual(self.checked, [("127.0.0.1", 9001)])
        self.assertEqual(self.reactor.processes, [])  # nothing spawned

    def test_free(self) -> None:
        d = self.attempt(None)
        [process] = self.reactor.processes
        self.assertNoResult(d)
        process.exit(0)
        self.failureResultOf(d, StartFailed)  # it exited while starting: not the port
