"""
Tests of the composition root, L{lmproxy.tap.makeService}: every port is
bound and listening when it returns, a port that cannot be opened is an error
that names it, and the reactor adopts the sockets when the tree starts.  Real
sockets on ports the OS chose, a memory reactor, nothing started.
"""

from __future__ import annotations

import io
import socket
import sys

from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.listen.ports import AdoptedPort, LazySite
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.tap import Options, makeService
from tests.harness import free_ports


def _options(service_port: int, openai_port: int, management_port: int) -> Options:
    options = Options()
    options.loaded = Config(
        services=(
            ServiceConfig(name="a", command="true", listen_port=service_port, proxy_target_port=1),
            ServiceConfig(name="b", command="true", proxy_target_port=2),
        ),
        openai_listen_port=openai_port,
        management_listen_port=management_port,
    )
    return options


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _ports(top: IService) -> list[AdoptedPort]:
    assert isinstance(top, MultiService)
    return [s for s in top if isinstance(s, AdoptedPort)]


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
        self.assertEqual([_accepts(port) for port in self.ports], [True, True, True])
        self.assertFalse(top.running)

    def test_port_in_use(self) -> None:
        """
        A port that cannot be opened ends lmproxy with a line naming it and
        the key that asks for it, no traceback; the ports bound before it
        are closed again.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", self.ports[1]))
        busy.listen()
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, makeService, _options(*self.ports), self.reactor)
        self.assertEqual(error.code, 1)
        self.assertEqual(
            stderr.getvalue(),
            "lmproxy: a port cannot be opened:\n"
            f"  port {self.ports[1]} (OpenAiApi.ListenPort): Address already in use\n",
        )
        self.assertFalse(_accepts(self.ports[0]))

    def test_adopted_when_started(self) -> None:
        """Each port's socket is adopted, with its factory, when its service starts."""
        top = self.build()
        for port in _ports(top):
            port.startService()
        adopted = self.reactor.adoptedPorts
        self.assertEqual([family for _, family, _ in adopted], [socket.AF_INET] * 3)
        factories = [factory for _, _, factory in adopted]
        self.assertIsInstance(factories[0], ServiceProxyFactory)
        assert isinstance(factories[0], ServiceProxyFactory)
        self.assertEqual(factories[0].service, "a")
        self.assertIsInstance(factories[1], LazySite)
        self.assertIsInstance(factories[2], LazySite)
