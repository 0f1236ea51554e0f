"""
L{Surfaces}: what serves each of lmproxy's ports for a config, the same
objects from one reload to the next.

A service's TCP port is served by its L{ServiceProxyFactory}, kept while the
service stays in the config (a reload gives it the new settings, so that its
queued clients keep their places); the OpenAI and management ports by a
L{LazySite} each, whose API is built on first use and then follows every
reload in place, so that keep-alive connections follow too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory

from lmproxy.config import Config
from lmproxy.interfaces import ReloadOutcome
from lmproxy.listen.banners import management_banner, openai_banner, service_banner
from lmproxy.listen.ports import LazySite
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.requeststats import RequestStats

if TYPE_CHECKING:
    from twisted.web.server import Site

    from lmproxy.core.supervisor import Supervisor
    from lmproxy.listen.guard import ManagementGate
    from lmproxy.listen.openai import OpenAiApi
    from lmproxy.manage.api import ManagementApi

Reload = Callable[[bool], Deferred[ReloadOutcome]]
"""C{POST /reload}'s action: reload, forced or not."""


class Surfaces:
    """The factories of every port of the running config (see the module docstring)."""

    def __init__(self, supervisor: Supervisor, config: Config, reactor: Any) -> None:
        """
        @param supervisor: what every port asks for backends.
        @param config: the config lmproxy starts with.
        @param reactor: the reactor everything runs on.
        """
        self._supervisor = supervisor
        self._config = config
        self._reactor = reactor
        self.reload: Reload | None = None
        """What C{POST /reload} calls; set once the reloader exists."""
        self._services: dict[str, ServiceProxyFactory] = {}
        # Counted by the OpenAI port, shown on the management API's /metrics.
        self._requests = RequestStats(s.name for s in config.services if s.openai_api)
        self._openai_api: OpenAiApi | None = None
        self._management_api: ManagementApi | None = None
        self._management_gate: ManagementGate | None = None
        self.openai = LazySite(self._openai_site)
        self.management = LazySite(self._management_site)

    def factories(self) -> dict[int, tuple[IProtocolFactory, str]]:
        """What serves each port of the current config, with its banner, in config order."""
        config = self._config
        factories: dict[int, tuple[IProtocolFactory, str]] = {}
        services: dict[str, ServiceProxyFactory] = {}
        for service in config.services:
            if service.listen_port is None:
                continue
            factory = self._services.get(service.name)
            if factory is None:
                factory = ServiceProxyFactory(
                    self._supervisor,
                    service,
                    config.client_buffer_limit,
                    self._reactor,
                    max_wait=config.max_wait,
                )
            else:
                factory.reconfigure(service, config.client_buffer_limit, config.max_wait)
            services[service.name] = factory
            banner = service_banner(service, service.listen_port)
            factories[service.listen_port] = (factory, banner)
        self._services = services
        if config.openai_listen_port is not None:
            port = config.openai_listen_port
            factories[port] = (self.openai, openai_banner(config, port))
        if config.management_listen_port is not None:
            port = config.management_listen_port
            factories[port] = (self.management, management_banner(config, port))
        return factories

    def reconfigure(self, config: Config) -> dict[int, tuple[IProtocolFactory, str]]:
        """Follow a reloaded config; what serves each of its ports."""
        self._config = config
        if self._openai_api is not None:
            self._openai_api.reconfigure(config)
        if self._management_api is not None and self._management_gate is not None:
            self._management_api.reconfigure(config)
            self._management_gate.reconfigure(config)
        return self.factories()

    def _openai_site(self) -> Site:
        from lmproxy.listen.httpforward import backend_agent
        from lmproxy.listen.openai import OpenAiApi

        config = self._config
        agent = backend_agent(self._reactor)
        api = OpenAiApi(
            self._supervisor,
            config,
            agent,
            self._reactor,
            self._requests,
        )
        self._openai_api = api
        return api.site()

    def _management_site(self) -> Site:
        from lmproxy.listen.guard import management_resource
        from lmproxy.listen.sites import ManagementSite
        from lmproxy.manage.api import ManagementApi

        api = ManagementApi(
            self._supervisor,
            self._config,
            self._reactor,
            requests=self._requests,
            reload=self._reload,
        )
        gate = management_resource(api.app.resource(), self._config)
        self._management_api, self._management_gate = api, gate
        return ManagementSite(gate, self._reactor)

    def _reload(self, force: bool) -> Deferred[ReloadOutcome]:
        assert self.reload is not None, "the reloader is set before the reactor runs"
        return self.reload(force)
