"""
Tests for L{lmproxy.surfaces.Surfaces}: what serves each port, and that the
same objects serve from one reload to the next.
"""

from __future__ import annotations

from typing import Any, cast

from attrs import evolve
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.core.supervisor import Supervisor
from lmproxy.listen.ports import LazySite
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.surfaces import Surfaces
from lmproxy.testing import FakeBackends

A = ServiceConfig(name="a", command="srv", proxy_target_port=9001, listen_port=8001)
B = ServiceConfig(name="b", command="srv", proxy_target_port=9002, listen_port=8002)
HIDDEN = ServiceConfig(name="h", command="srv", proxy_target_port=9003, openai_api=True)


class SurfacesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = Config(services=(A, B, HIDDEN), openai_listen_port=7070)
        backends = FakeBackends(self.config)
        self.surfaces = Surfaces(cast(Supervisor, backends), self.config, cast(Any, Clock()))

    def test_a_factory_per_port(self) -> None:
        """Service ports (not a service without one), then the APIs', with banners."""
        factories = self.surfaces.factories()
        self.assertEqual(list(factories), [8001, 8002, 7070])
        factory, banner = factories[8001]
        self.assertIsInstance(factory, ServiceProxyFactory)
        self.assertEqual(banner, "a: port 8001, forwarded to localhost:9001")
        self.assertIs(factories[7070][0], self.surfaces.openai)
        self.assertIsInstance(self.surfaces.openai, LazySite)

    def test_the_same_factories_follow_a_reload(self) -> None:
        """A kept service keeps its factory, with its new settings; ports move with it."""
        before = self.surfaces.factories()
        moved = evolve(A, listen_port=8009, proxy_target_port=9011)
        config = Config(services=(moved,), management_listen_port=7071)
        after = self.surfaces.reconfigure(config)
        self.assertEqual(list(after), [8009, 7071])
        factory, banner = after[8009]
        self.assertIs(factory, before[8001][0])
        self.assertEqual(banner, "a: port 8009, forwarded to localhost:9011")
        self.assertIs(after[7071][0], self.surfaces.management)

    def test_added_service_gets_a_new_factory(self) -> None:
        before = self.surfaces.factories()
        c = ServiceConfig(name="c", command="srv", proxy_target_port=9004, listen_port=8003)
        after = self.surfaces.reconfigure(evolve(self.config, services=(A, B, c)))
        self.assertIs(after[8001][0], before[8001][0])
        self.assertNotIn(after[8003][0], [f for f, _ in before.values()])
