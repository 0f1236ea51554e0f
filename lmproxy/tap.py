"""
The composition root: C{twistd lmproxy}'s options and C{makeService}, which
builds one C{MultiService} holding the watchdog, the supervisor, the signal
handlers, a listener per service and the optional OpenAI and management APIs;
and L{run}, which runs that tree in the foreground for the C{lmproxy} command
(L{lmproxy.cli}) without twistd.

The only module that imports the global reactor.  Start-up time matters
(clients connect right after launch), so every port is bound and listening
before anything else is built (the C{lmproxy} command opens them even before
this module is imported), and the HTTP APIs' heavier imports (twisted.web,
Klein, prometheus_client) happen on the reactor's first turn, behind a factory
that builds its site on first use.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage

from lmproxy.config import Config, ConfigError, load_config
from lmproxy.core.portcheck import port_taken
from lmproxy.core.readiness import connect_now
from lmproxy.core.shell import SETSID
from lmproxy.core.subreaper import Subreaper
from lmproxy.core.supervisor import Supervisor
from lmproxy.core.watchdog import Watchdog
from lmproxy.fdlimit import raise_fd_limit
from lmproxy.launch import fail, fail_ports, keep_tls_out
from lmproxy.listen.banners import management_banner, openai_banner, service_banner
from lmproxy.listen.ports import AdoptedPort, LazySite
from lmproxy.listen.sockets import ListeningSocket, PortsUnavailable, port_keys, take_ports
from lmproxy.listen.tcp import ServiceProxyFactory
from lmproxy.logs import log_observer, set_log_level
from lmproxy.quitsignals import QuitSignals
from lmproxy.requeststats import RequestStats
from lmproxy.shutdown import ShutdownSignals
from twisted import version as twisted_version

if TYPE_CHECKING:
    from twisted.web.server import Site


class Options(usage.Options):
    """Command line of C{twistd lmproxy} and of the C{lmproxy} script."""

    synopsis = "[-c CONFIG]"
    longdesc = (
        "Start model servers on demand, stop idle ones to free resources, and "
        "proxy their ports. Without -c, ./config.json then ./config.jsonc is used."
    )
    optParameters = [
        ["config", "c", None, "Path of the config file (JSON or JSONC)."],
        [
            "logfile",
            "l",
            None,
            "Append the log to this file instead of writing it to standard output"
            " (the lmproxy command; under twistd, give twistd its own --logfile).",
        ],
    ]
    command = "twistd"
    """Which program parses these options: C{"lmproxy"} for the lmproxy command."""

    def __init__(self) -> None:
        super().__init__()
        self.quit = QuitSignals()
        """
        The process's SIGINT and SIGTERM handling: installed by L{postOptions}
        under twistd; the C{lmproxy} command gives the one it installed first.
        """
        self.listening: dict[int, ListeningSocket] = {}
        """
        Sockets listening already, by port: the C{lmproxy} command opens
        them before the config is parsed; L{makeService} opens the others.
        """

    def opt_version(self) -> None:
        """Display lmproxy's version (and Twisted's and Python's) and exit."""
        from lmproxy import version

        python = sys.version.split()[0]
        print(f"lmproxy {version()} (Twisted {twisted_version.short()}, Python {python})")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """Load the config; a config that cannot be used ends lmproxy with its problems."""
        if self["logfile"] is not None and self.command != "lmproxy":
            raise usage.UsageError(
                "--logfile belongs to twistd here: twistd -n --logfile=PATH lmproxy -c CONFIG"
            )
        # Under twistd, the first of lmproxy's code that runs: no quit signal
        # is lost (or a KeyboardInterrupt) from here on.
        self.quit.install()
        keep_tls_out()  # before twistd installs the reactor
        try:
            self.loaded: Config = load_config(self["config"], os.getcwd())
        except ConfigError as e:
            fail("the config cannot be used:", e.problems)


def _listen(config: Config, early: dict[int, ListeningSocket]) -> dict[int, ListeningSocket]:
    """Every port of C{config}, listening; a port that cannot be opened ends lmproxy."""
    try:
        return take_ports(port_keys(config), early)
    except PortsUnavailable as e:
        fail_ports(e.problems)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build lmproxy's service tree from parsed options.

    @param options: the parsed command line, with its loaded config (and
        maybe sockets listening already).
    @param reactor: the reactor to run on (default: the global one).
    @raise SystemExit: a port of the config cannot be opened (the message on
        standard error names it and the key that asks for it).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.loaded
    set_log_level(config.log_level)
    before, after = raise_fd_limit()
    if after != before:
        _log.info("Open file limit raised from {before} to {after}", before=before, after=after)
    for warning in config.warnings:  # what loads, as upstream loads it, but cannot work
        _log.warn("config: {problem}", problem=warning)
    # First of all, so that clients can connect while the rest is built.
    listening = _listen(config, options.listening)
    top = MultiService()

    def listen(port: int, factory: IProtocolFactory, banner: str) -> None:
        AdoptedPort(reactor, listening[port], factory, banner).setServiceParent(top)

    # First: the processes a service leaves behind are re-parented to lmproxy
    # (and reaped by it) from its very first spawn on.
    Subreaper(reactor).setServiceParent(top)

    # The watchdog's child ends the process groups the supervisor registers with
    # it once its pipe closes, that is when lmproxy's process exits, however it
    # exits: stopping the tree does not involve it (MultiService stops its
    # children in reverse order without waiting for one before the next, so
    # the order here guarantees nothing at stop).  After a clean stop twistd has
    # waited for the supervisor's stopService, which fires once every process
    # group is gone, so the child finds nothing left to end.
    watchdog = Watchdog(reactor, SETSID)
    watchdog.setServiceParent(top)
    supervisor = Supervisor(
        config,
        reactor,
        groups=watchdog,
        port_check=port_taken,
        connect=connect_now,
    )
    supervisor.setServiceParent(top)
    signals = ShutdownSignals(supervisor, reactor, options.quit)
    signals.setServiceParent(top)
    for service in config.services:
        if service.listen_port is not None:
            factory = ServiceProxyFactory(
                supervisor, service, config.client_buffer_limit, reactor, max_wait=config.max_wait
            )
            listen(service.listen_port, factory, service_banner(service, service.listen_port))
    sites: list[LazySite] = []
    # Counted by the OpenAI port, shown on the management API's /metrics.
    requests = RequestStats(service.name for service in config.services if service.openai_api)
    if config.openai_listen_port is not None:
        sites.append(LazySite(lambda: _openai_site(supervisor, config, reactor, requests)))
        listen(
            config.openai_listen_port, sites[-1], openai_banner(config, config.openai_listen_port)
        )
    if config.management_listen_port is not None:
        sites.append(LazySite(lambda: _management_site(supervisor, config, reactor, requests)))
        port = config.management_listen_port
        listen(port, sites[-1], management_banner(config, port))
    for site in sites:
        # Built on the reactor's first turn: after every port listens, before
        # the first client (usually) needs it.
        reactor.callWhenRunning(reactor.callLater, 0, _prebuild, site, signals)
    # From here on, twistd may write its pid file and the tree may start (and
    # spawn the watchdog child) before the reactor runs: a quit signal waits
    # for the reactor, which stops what was started, instead of exiting.
    options.quit.hold()
    return top


_log = Logger(observer=log_observer)


def run(options: Options) -> int:
    """
    Run lmproxy in the foreground as C{twistd -n lmproxy} does, without
    twistd's own start-up (its plugin scan, its imports): the C{lmproxy}
    command.  Every quit signal goes to L{ShutdownSignals}, and lmproxy
    exits 0 once the reactor has stopped, whatever stopped it (twistd would
    re-raise a signal that the reactor's own handler caught).

    @param options: the options, with the config loaded, its sockets
        listening, and C{options.quit} installed.
    @return: the exit status, once the reactor stopped and every service with it.
    """
    from twisted.internet import reactor

    from lmproxy import version

    top = makeService(options, reactor)
    # As twistd --nodaemon logs: to standard output (or --logfile), in its format.
    path = options["logfile"]
    try:
        out = sys.stdout if path is None else open(path, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        fail(f"the log file {path} cannot be opened: {e.strerror or e}", [])
    globalLogBeginner.beginLoggingTo([textFileLogObserver(out)])
    _log.info(
        "lmproxy {version} starting up (Python {python}, {reactor})",
        version=version(),
        python=sys.version.split()[0],
        reactor=type(reactor).__name__,
    )
    # As twistd's startApplication does.
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


def _prebuild(site: LazySite, signals: ShutdownSignals) -> None:
    # Not for a lmproxy that a quit signal in its start-up is stopping already
    # (acted on earlier in this same turn): the imports would only delay the exit.
    if not signals.stopping:
        site.site()


def _openai_site(
    supervisor: Supervisor, config: Config, reactor: Any, requests: RequestStats
) -> Site:
    from lmproxy.listen.httpforward import backend_agent
    from lmproxy.listen.openai import OpenAiApi

    agent = backend_agent(reactor)
    api = OpenAiApi(supervisor, config, agent, reactor, config.openai_max_body_bytes, requests)
    return api.site()


def _management_site(
    supervisor: Supervisor, config: Config, reactor: Any, requests: RequestStats
) -> Site:
    from lmproxy.listen.guard import management_resource
    from lmproxy.listen.sites import ManagementSite
    from lmproxy.manage.api import ManagementApi

    api = ManagementApi(supervisor, config, reactor, requests=requests)
    return ManagementSite(management_resource(api.app.resource(), config), reactor)
