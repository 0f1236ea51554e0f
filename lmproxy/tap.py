"""
The composition root: C{twistd lmproxy}'s options and C{makeService}, which
builds one C{MultiService} holding the watchdog, the supervisor, the signal
handlers, a listener per service and the optional OpenAI and management APIs.

The only module that imports the global reactor.  Start-up time matters
(clients connect right after launch), so every port is bound and listening
before anything else is built, and the HTTP APIs' heavier imports (twisted.web,
Klein, prometheus_client) happen on the reactor's first turn, behind a factory
that builds its site on first use.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.python import usage

from lmproxy.config import Config, ConfigError, load_config
from lmproxy.core.shell import SETSID
from lmproxy.core.supervisor import Supervisor
from lmproxy.core.watchdog import Watchdog
from lmproxy.listen.ports import AdoptedPort, LazySite, bind_ports
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.logs import set_log_level
from lmproxy.shutdown import ShutdownSignals

if TYPE_CHECKING:
    from twisted.web.server import Site


class Options(usage.Options):
    """Command line of C{twistd lmproxy} and of the C{lmproxy} script."""

    synopsis = "[-c CONFIG]"
    longdesc = (
        "Start model servers on demand, stop idle ones to free resources, and "
        "proxy their ports. Without -c, ./config.json then ./config.jsonc is used."
    )
    optParameters = [["config", "c", None, "Path of the config file (JSON or JSONC)."]]

    def postOptions(self) -> None:
        """Load the config; a config that cannot be used ends lmproxy with its problems."""
        try:
            self.loaded: Config = load_config(self["config"], os.getcwd())
        except ConfigError as e:
            _exit("the config cannot be used:", e.problems)


def _exit(what: str, problems: list[str]) -> NoReturn:
    """End lmproxy before it runs: say what is wrong, one problem a line, no traceback."""
    sys.stderr.write(f"lmproxy: {what}\n")
    for problem in problems:
        sys.stderr.write(f"  {problem}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _bind(config: Config) -> dict[int, socket.socket]:
    """Every port of C{config}, listening; a port that cannot be opened ends lmproxy."""
    wanted = [(s.listen_port, f"ListenPort of service {s.name!r}") for s in config.services]
    wanted.append((config.openai_listen_port, "OpenAiApi.ListenPort"))
    wanted.append((config.management_listen_port, "ManagementApi.ListenPort"))
    owners = {port: key for port, key in wanted if port is not None}
    try:
        return bind_ports(owners)
    except CannotListenError as e:
        why = getattr(e.socketError, "strerror", None) or e.socketError
        _exit("a port cannot be opened:", [f"port {e.port} ({owners[e.port]}): {why}"])


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build lmproxy's service tree from parsed options.

    @param options: the parsed command line, with its loaded config.
    @param reactor: the reactor to run on (default: the global one).
    @raise SystemExit: a port of the config cannot be opened (the message on
        standard error names it and the key that asks for it).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.loaded
    set_log_level(config.log_level)
    # First of all, so that clients can connect while the rest is built.
    listening = _bind(config)
    top = MultiService()

    def listen(port: int, factory: IProtocolFactory) -> None:
        AdoptedPort(reactor, listening[port], factory).setServiceParent(top)

    # The watchdog's child ends the process groups the supervisor registers with
    # it once its pipe closes, that is when lmproxy's process exits, however it
    # exits: stopping the tree does not involve it (MultiService stops its
    # children in reverse order without waiting for one before the next, so
    # the order here guarantees nothing at stop).  After a clean stop twistd has
    # waited for the supervisor's stopService, which fires once every process
    # group is gone, so the child finds nothing left to end.
    watchdog = Watchdog(reactor, SETSID)
    watchdog.setServiceParent(top)
    supervisor = Supervisor(config, reactor, groups=watchdog)
    supervisor.setServiceParent(top)
    ShutdownSignals(supervisor, reactor).setServiceParent(top)
    for service in config.services:
        if service.listen_port is not None:
            factory = ServiceProxyFactory(supervisor, service, config.client_buffer_limit, reactor)
            listen(service.listen_port, factory)
    sites: list[LazySite] = []
    if config.openai_listen_port is not None:
        sites.append(LazySite(lambda: _openai_site(supervisor, config, reactor)))
        listen(config.openai_listen_port, sites[-1])
    if config.management_listen_port is not None:
        sites.append(LazySite(lambda: _management_site(supervisor, config, reactor)))
        listen(config.management_listen_port, sites[-1])
    for site in sites:
        # Built on the reactor's first turn: after every port listens, before
        # the first client (usually) needs it.
        reactor.callWhenRunning(reactor.callLater, 0, site.site)
    return top


def _openai_site(supervisor: Supervisor, config: Config, reactor: Any) -> Site:
    from lmproxy.listen.httpforward import backend_agent
    from lmproxy.listen.openai import OpenAiApi

    agent = backend_agent(reactor)
    api = OpenAiApi(supervisor, config, agent, reactor, config.openai_max_body_bytes)
    return api.site()


def _management_site(supervisor: Supervisor, config: Config, reactor: Any) -> Site:
    from lmproxy.listen.sites import UnloggedSite
    from lmproxy.manage.api import ManagementApi

    api = ManagementApi(supervisor, config, reactor)
    return UnloggedSite(api.app.resource())
