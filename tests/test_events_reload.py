"""
Tests for C{GET /events} across a reload: when the services or resources a
stream was sent change (one added, one gone), it sends the whole status again.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.interfaces import ServiceState, StatusChange
from tests.test_management import ALPHA, MARKUP, QWEN, ApiCase


class EventsAcrossReloadTests(ApiCase):
    def reloaded(self, config: Config, services: set[str], resources: set[str]) -> None:
        """The backends now have C{config}; observers hear of the names that changed."""
        self.backends.config = config
        self.backends.__attrs_post_init__()  # states of the new services
        change = StatusChange(frozenset(services), frozenset(resources))
        for observer in list(self.backends.observers):
            observer.status_changed(change)
        self.clock.advance(0)

    def names(self, document: dict[str, Any]) -> list[str]:
        return [s["name"] for s in document["services"]]

    def test_added_service_sends_the_whole_status(self) -> None:
        """The new service comes in a status event, and then as any other."""
        stream = self.client.stream("/events")
        added = ServiceConfig(name="new", command="srv", proxy_target_port=9999)
        self.reloaded(evolve(self.config, services=(*self.config.services, added)), {"new"}, set())
        [(event, document)] = stream.events()[1:]
        self.assertEqual(event, "status")
        self.assertEqual(self.names(document), [ALPHA, QWEN, MARKUP, "new"])
        self.backends.set_state("new", ServiceState.STARTING)
        self.clock.advance(0)
        [(event, service)] = stream.events()[2:]
        self.assertEqual((event, service["name"]), ("service", "new"))
        stream.leave()

    def test_removed_service_sends_the_whole_status(self) -> None:
        stream = self.client.stream("/events")
        services = tuple(s for s in self.config.services if s.name != QWEN)
        self.reloaded(evolve(self.config, services=services), {QWEN}, set())
        [(event, document)] = stream.events()[1:]
        self.assertEqual(event, "status")
        self.assertEqual(self.names(document), [ALPHA, MARKUP])
        stream.leave()

    def test_added_resource_sends_the_whole_status(self) -> None:
        stream = self.client.stream("/events")
        resources = (*self.config.resources, ResourceConfig("NPU", 2))
        self.reloaded(evolve(self.config, resources=resources), set(), {"NPU"})
        [(event, document)] = stream.events()[1:]
        self.assertEqual(event, "status")
        self.assertIn("NPU", document["resources"])
        stream.leave()
