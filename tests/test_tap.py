"""
Tests of the composition root, L{lmproxy.tap}, and of the listening sockets
it starts from (L{lmproxy.listen.sockets}): every port is bound and listening
when makeService returns (those opened earlier by the C{lmproxy} command
reused), a port that cannot be opened is an error that names it and its key,
the reactor adopts the sockets when the tree starts, and quit signals are
held from then on.  Real sockets on ports the OS chose, a memory reactor,
nothing started.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import sys
from pathlib import Path

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.listen.ports import LazySite
from lmproxy.listen.porttable import PortTable
from lmproxy.listen.sockets import (
    LISTEN_BACKLOG,
    ListeningSocket,
    PortsUnavailable,
    listen_early,
    listen_socket,
    port_keys,
    take_ports,
)
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.quitsignals import QUIT_SIGNALS
from lmproxy.shutdown import ShutdownSignals
from lmproxy.tap import Options, makeService
from tests.harness import free_ports, port_open
from tests.test_shutdown import FakeSignals


def _config(service_port: int, openai_port: int, management_port: int) -> Config:
    return Config(
        services=(
            ServiceConfig(name="a", command="true", listen_port=service_port, proxy_target_port=1),
            ServiceConfig(name="b", command="true", proxy_target_port=2),
        ),
        openai_listen_port=openai_port,
        management_listen_port=management_port,
    )


def _options(service_port: int, openai_port: int, management_port: int) -> Options:
    options = Options()
    options.loaded = _config(service_port, openai_port, management_port)
    return options


def _busy(test: SynchronousTestCase, port: int) -> None:
    """Listen on C{port} (all interfaces, as lmproxy would) until the test ends."""
    busy = socket.socket()
    test.addCleanup(busy.close)
    busy.bind(("", port))
    busy.listen()


def _ports(top: IService) -> list[PortTable]:
    """The service of every port (started alone by these tests)."""
    assert isinstance(top, MultiService)
    return [s for s in top if isinstance(s, PortTable)]


class MakeServiceTests(SynchronousTestCase):
    """The listening half of L{makeService}."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.ports = free_ports(3)

    def build(self) -> IService:
        top = makeService(_options(*self.ports), self.reactor)
        # Close the sockets the ports own, started or not.
        for port in _ports(top):
            self.addCleanup(port.stopService)
        return top

    def test_listening_when_built(self) -> None:
        """Clients can connect as soon as makeService returns, before anything starts."""
        top = self.build()
        self.assertEqual([port_open(port) for port in self.ports], [True, True, True])
        self.assertFalse(top.running)

    def test_config_warnings_logged(self) -> None:
        """What the config loads with a warning is logged once, when lmproxy starts."""
        options = _options(*self.ports)
        warning = 'Services[0] ("a").ProxyTargetPort: 70000 is not a port number (1-65535)'
        options.loaded = attrs.evolve(options.loaded, warnings=(warning,))
        with capturedLogs() as events:
            top = makeService(options, self.reactor)
        for port in _ports(top):
            self.addCleanup(port.stopService)
        self.assertEqual(
            [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn],
            [f"config: {warning}"],
        )

    def test_port_in_use(self) -> None:
        """
        A port that cannot be opened ends lmproxy with a line naming it and
        the key that asks for it, no traceback; the ports bound before it
        are closed again.
        """
        _busy(self, self.ports[1])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, makeService, _options(*self.ports), self.reactor)
        self.assertEqual(error.code, 1)
        self.assertEqual(
            stderr.getvalue(),
            f"lmproxy: OpenAiApi.ListenPort {self.ports[1]}: address already in use\n",
        )
        self.assertFalse(port_open(self.ports[0]))

    def test_ports_in_use(self) -> None:
        """Every port that cannot be opened is named, one a line."""
        _busy(self, self.ports[0])
        _busy(self, self.ports[2])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertRaises(SystemExit, makeService, _options(*self.ports), self.reactor)
        self.assertEqual(
            stderr.getvalue(),
            "lmproxy: ports cannot be opened:\n"
            f'  Services[0] ("a").ListenPort {self.ports[0]}: address already in use\n'
            f"  ManagementApi.ListenPort {self.ports[2]}: address already in use\n",
        )

    def test_uses_the_sockets_opened_early(self) -> None:
        """The lmproxy command's sockets are adopted, not opened a second time."""
        options = _options(*self.ports)
        options.listening = {port: listen_socket(port) for port in self.ports}
        descriptors = [options.listening[port].fileno() for port in self.ports]
        top = makeService(options, self.reactor)
        for port in _ports(top):
            self.addCleanup(port.stopService)
            port.startService()
        readers = sorted(self.reactor.getReaders(), key=lambda port: port.fileno())
        self.assertEqual([port.fileno() for port in readers], sorted(descriptors))

    def prebuilt(self, stopping: bool) -> list[LazySite]:
        """The sites built on the reactor's first turn."""
        built: list[LazySite] = []
        self.patch(LazySite, "site", lambda site: built.append(site))
        top = self.build()
        assert isinstance(top, MultiService)
        if stopping:
            [signals] = [s for s in top if isinstance(s, ShutdownSignals)]
            signals.stopService()
        self.reactor.run()
        self.reactor.advance(0)
        return built

    def test_sites_built_on_the_first_turn(self) -> None:
        """Before a client needs them: their imports take a few hundred milliseconds."""
        self.assertEqual(len(self.prebuilt(stopping=False)), 2)

    def test_sites_not_built_when_stopping_already(self) -> None:
        """A quit signal during the start-up: building them would only delay the exit."""
        self.assertEqual(self.prebuilt(stopping=True), [])

    def test_quit_signals_held_once_built(self) -> None:
        """
        From the end of makeService on (twistd may write its pid file, the
        tree may start), a quit signal waits for the reactor instead of
        exiting.
        """
        signals = FakeSignals()
        options = _options(*self.ports)
        options.quit = signals.quit_signals()
        options.quit.install()
        for port in _ports(makeService(options, self.reactor)):
            self.addCleanup(port.stopService)
        signals.deliver(signal.SIGTERM)  # would raise Exited if not held
        received: list[int] = []
        options.quit.hand_over(received.append)
        self.assertEqual(received, [signal.SIGTERM])

    def test_adopted_when_started(self) -> None:
        """Each port's socket is watched, with its factory, when its service starts."""
        top = self.build()
        for port in _ports(top):
            self.addCleanup(port.stopService)
            port.startService()
        adopted = sorted(
            self.reactor.getReaders(), key=lambda port: self.ports.index(port.getHost().port)
        )
        self.assertEqual([type(port.getHost()) for port in adopted], [IPv4Address] * 3)
        factories = [port.factory for port in adopted]
        self.assertIsInstance(factories[0], ServiceProxyFactory)
        assert isinstance(factories[0], ServiceProxyFactory)
        self.assertEqual(factories[0].service, "a")
        self.assertIsInstance(factories[1], LazySite)
        self.assertIsInstance(factories[2], LazySite)


class OptionsTests(SynchronousTestCase):
    """C{twistd lmproxy}'s options."""

    def test_installs_the_quit_signals_and_loads(self) -> None:
        """Under twistd, lmproxy handles quit signals from its options on."""
        path = Path(self.mktemp())
        path.write_text(json.dumps({"Services": []}))
        signals = FakeSignals()
        options = Options()
        options.quit = signals.quit_signals()
        options.parseOptions(["-c", str(path)])
        self.assertEqual(sorted(signals.handlers), sorted(QUIT_SIGNALS))
        self.assertEqual(options.loaded.services, ())

    def test_bad_config(self) -> None:
        path = Path(self.mktemp())
        path.write_text("{")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        options = Options()
        options.quit = FakeSignals().quit_signals()
        error = self.assertRaises(SystemExit, options.parseOptions, ["-c", str(path)])
        self.assertEqual(error.code, 1)
        self.assertIn("lmproxy: the config cannot be used:\n", stderr.getvalue())


class SocketsTests(SynchronousTestCase):
    """L{lmproxy.listen.sockets}: real sockets on ports the OS chose."""

    def setUp(self) -> None:
        self.ports = free_ports(3)

    def take(
        self, keys: dict[int, tuple[str, str]], early: dict[int, ListeningSocket | OSError]
    ) -> None:
        for sock in take_ports(keys, early).values():
            self.addCleanup(sock.close)

    def test_listen_socket(self) -> None:
        sock = listen_socket(self.ports[0])
        self.addCleanup(sock.close)
        self.assertEqual(sock.getsockname(), ("0.0.0.0", self.ports[0]))
        self.assertFalse(sock.getblocking())
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
        self.assertTrue(port_open(self.ports[0]))
        self.assertGreater(LISTEN_BACKLOG, 50)

    def test_port_keys(self) -> None:
        """Named as the parser names places, the service's name quoted."""
        config = Config(
            services=(
                ServiceConfig(name="x", command="true", proxy_target_port=1, openai_api=True),
                ServiceConfig(
                    name='Gemma-27B "é"', command="true", listen_port=8081, proxy_target_port=2
                ),
            ),
            openai_listen_port=7070,
        )
        self.assertEqual(
            port_keys(config),
            {
                8081: ('Services[1] ("Gemma-27B \\"é\\"").ListenPort', "0.0.0.0"),
                7070: ("OpenAiApi.ListenPort", "0.0.0.0"),
            },
        )

    def test_early_failures_are_kept_for_later(self) -> None:
        _busy(self, self.ports[1])
        early = listen_early([self.ports[0], self.ports[1], self.ports[0]])
        for sock in early.values():
            if isinstance(sock, ListeningSocket):
                self.addCleanup(sock.close)
        self.assertEqual(list(early), self.ports[:2])
        self.assertIsInstance(early[self.ports[0]], ListeningSocket)
        self.assertIsInstance(early[self.ports[1]], OSError)

    def test_take_keeps_what_the_config_wants(self) -> None:
        """The early sockets it wants are kept, the others closed, the missing ones opened."""
        a, b, c = self.ports
        early = listen_early([a, b])
        taken = take_ports({a: ("A", "0.0.0.0"), c: ("C", "0.0.0.0")}, early)
        for sock in taken.values():
            self.addCleanup(sock.close)
        self.assertIs(taken[a], early[a])
        self.assertEqual(sorted(taken), sorted([a, c]))
        self.assertEqual((port_open(a), port_open(b), port_open(c)), (True, False, True))

    def test_take_retries_a_port_that_failed_early(self) -> None:
        """A port busy a moment ago, free now (a previous lmproxy just exited), is opened."""
        early: dict[int, ListeningSocket | OSError] = {self.ports[0]: OSError(98, "busy")}
        self.take({self.ports[0]: ("A", "0.0.0.0")}, early)
        self.assertTrue(port_open(self.ports[0]))

    def test_take_fails_closing_everything(self) -> None:
        a, b, c = self.ports
        _busy(self, b)
        early = listen_early([a])
        error = self.assertRaises(
            PortsUnavailable,
            take_ports,
            {a: ("A.ListenPort", "0.0.0.0"), b: ("B.ListenPort", "0.0.0.0"), c: ("C", "0.0.0.0")},
            early,
        )
        self.assertEqual(error.problems, [f"B.ListenPort {b}: address already in use"])
        self.assertEqual((port_open(a), port_open(c)), (False, False))
