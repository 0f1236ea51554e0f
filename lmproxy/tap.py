"""
The composition root: ``twistd lmproxy`` options and ``makeService``, which
builds one ``MultiService`` holding the supervisor, a listener per service
and the optional OpenAI and management APIs.

The only module that imports the global reactor.  Start-up time matters
(clients connect right after launch), so every listener is opened first and
the HTTP APIs' heavier imports (Klein, prometheus_client) happen on the
reactor's first turn, behind a factory that builds its site on first use.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from lmproxy.config import Config, ConfigError, load_config
from lmproxy.core.process import SETSID
from lmproxy.core.supervisor import Supervisor
from lmproxy.core.watchdog import Watchdog
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.logs import log_observer, set_log_level

# Bursts of new clients (hundreds of concurrent requests) must not overflow the
# accept queue: with Twisted's default of 50 they are dropped and retry after 1 s.
LISTEN_BACKLOG = 1024


class Options(usage.Options):
    """Command line of ``twistd lmproxy`` and of the ``lmproxy`` script."""

    synopsis = "[-c CONFIG]"
    longdesc = (
        "Start model servers on demand, stop idle ones to free resources, and "
        "proxy their ports. Without -c, ./config.json then ./config.jsonc is used."
    )
    optParameters = [["config", "c", None, "Path of the config file (JSON or JSONC)."]]

    def postOptions(self) -> None:
        try:
            self.loaded: Config = load_config(self["config"], os.getcwd())
        except ConfigError as e:
            sys.stderr.write("lmproxy: the config cannot be used:\n")
            for problem in e.problems:
                sys.stderr.write(f"  {problem}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


class LazySite(ServerFactory):
    """
    Serves a ``Site`` that is built on first use, so that opening the port
    does not wait for the imports the site needs.
    """

    noisy = False  # the port's own "starting on" line says it

    def __init__(self, build: Callable[[], Site]) -> None:
        self._build = build
        self._site: Site | None = None

    def site(self) -> Site:
        if self._site is None:
            self._site = self._build()
            self._site.noisy = False
            self._site.doStart()
        return self._site

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return self.site().buildProtocol(addr)

    def stopFactory(self) -> None:
        if self._site is not None:
            self._site.doStop()


class ShutdownSignals(Service):
    """
    How lmproxy ends on SIGINT/SIGTERM: the first one stops the reactor (which
    stops every service, in parallel, before lmproxy exits 0, as
    large-model-proxy does); a second one kills every service's process group
    at once instead of waiting for graceful stops.

    These handlers replace the reactor's own, which would make twistd re-raise
    the signal at exit and log an error for a second signal.
    """

    log = Logger(observer=log_observer)

    def __init__(self, supervisor: Supervisor, reactor: Any) -> None:
        self._supervisor = supervisor
        self._reactor = reactor
        self._shutting_down = False

    def startService(self) -> None:
        super().startService()
        # After the reactor has installed its handlers, which happens once it runs.
        self._reactor.callWhenRunning(self._install)

    def stopService(self) -> None:
        super().stopService()
        self._shutting_down = True

    def _install(self) -> None:
        signal.signal(signal.SIGINT, self._received)
        signal.signal(signal.SIGTERM, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._act, signal.Signals(signum).name)

    def _act(self, name: str) -> None:
        if not self._shutting_down:
            self._shutting_down = True
            self.log.info(
                "{signal}: stopping every service, then exiting (send it again to kill them "
                "at once)",
                signal=name,
            )
            self._reactor.stop()
        else:
            self.log.warn("{signal} again: killing every service now", signal=name)
            self._supervisor.kill_all()


def _listen(parent: MultiService, reactor: Any, port: int, factory: Factory[Any]) -> None:
    endpoint = TCP4ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG)
    listener = StreamServerEndpointService(endpoint, factory)
    # A port that cannot be opened stops lmproxy with a clear error.
    listener._raiseSynchronously = True
    listener.setServiceParent(parent)


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build lmproxy's service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.loaded
    set_log_level(config.log_level)
    top = MultiService()
    # First child, so the last to stop: it must outlive every service process.
    watchdog = Watchdog(reactor, SETSID)
    watchdog.setServiceParent(top)
    supervisor = Supervisor(config, reactor, groups=watchdog)
    supervisor.setServiceParent(top)
    ShutdownSignals(supervisor, reactor).setServiceParent(top)
    for service in config.services:
        if service.listen_port is not None:
            factory = ServiceProxyFactory(
                supervisor, service.name, config.client_buffer_limit, reactor
            )
            _listen(top, reactor, service.listen_port, factory)
    sites: list[LazySite] = []
    if config.openai_listen_port is not None:
        sites.append(LazySite(lambda: _openai_site(supervisor, config, reactor)))
        _listen(top, reactor, config.openai_listen_port, sites[-1])
    if config.management_listen_port is not None:
        sites.append(LazySite(lambda: _management_site(supervisor, config, reactor)))
        _listen(top, reactor, config.management_listen_port, sites[-1])
    for site in sites:
        reactor.callWhenRunning(reactor.callLater, 0, site.site)
    return top


def _openai_site(supervisor: Supervisor, config: Config, reactor: Any) -> Site:
    from lmproxy.listen.httpforward import backend_agent
    from lmproxy.listen.openai import OpenAiApi

    agent = backend_agent(reactor)
    api = OpenAiApi(supervisor, config, agent, reactor, config.openai_max_body_bytes)
    return api.site()


def _management_site(supervisor: Supervisor, config: Config, reactor: Any) -> Site:
    from lmproxy.manage.api import ManagementApi

    api = ManagementApi(supervisor, config, reactor)
    return _UnloggedSite(api.app.resource())


class _UnloggedSite(Site):
    """The management site keeps no access log: dashboards poll it."""

    def log(self, request: Any) -> None:
        pass
