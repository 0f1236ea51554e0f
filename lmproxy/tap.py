"""
The composition root: C{twistd lmproxy}'s options and C{makeService}, which
builds one C{MultiService} holding the watchdog, the supervisor, the signal
handlers, the ports (a listener per service and the optional OpenAI and
management APIs: L{lmproxy.surfaces}) and what reloads the config
(L{lmproxy.reload}: SIGHUP, C{POST /reload}, C{--watch-config}); and L{run},
which runs that tree in the foreground for the C{lmproxy} command
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
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage
from twisted.python.failure import Failure

from lmproxy.config import Config, ConfigError, load_config
from lmproxy.core.portcheck import port_taken
from lmproxy.core.readiness import connect_now
from lmproxy.core.shell import SETSID
from lmproxy.core.subreaper import Subreaper
from lmproxy.core.supervisor import Supervisor
from lmproxy.core.watchdog import Watchdog
from lmproxy.fdlimit import raise_fd_limit
from lmproxy.interfaces import ReloadBusy, ReloadRefused
from lmproxy.launch import config_file, fail, fail_ports, keep_tls_out
from lmproxy.listen.ports import LazySite
from lmproxy.listen.porttable import PortTable
from lmproxy.listen.sockets import ListeningSocket, PortsUnavailable, port_keys, take_ports
from lmproxy.logs import log_observer, set_log_level
from lmproxy.quitsignals import QuitSignals
from lmproxy.reload.reloader import Reloader
from lmproxy.reload.watch import ConfigWatcher
from lmproxy.shutdown import ShutdownSignals
from lmproxy.surfaces import Surfaces
from twisted import version as twisted_version


class Options(usage.Options):
    """Command line of C{twistd lmproxy} and of the C{lmproxy} script."""

    synopsis = "[-c CONFIG] [--watch-config]"
    longdesc = (
        "Start model servers on demand, stop idle ones to free resources, and "
        "proxy their ports. Without -c, ./config.json then ./config.jsonc is used."
    )
    optFlags = [
        ["watch-config", None, "Reload the config whenever its file changes."],
    ]
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
    surfaces = Surfaces(supervisor, config, reactor)
    ports = PortTable(reactor)
    for port, (factory, banner) in surfaces.factories().items():
        ports.add(port, listening[port], factory, banner)
    ports.setServiceParent(top)
    reloader = Reloader(options["config"], os.getcwd(), config, supervisor, ports, surfaces)
    surfaces.reload = lambda force: reloader.reload(force, "POST /reload")
    signals = ShutdownSignals(
        supervisor, reactor, options.quit, reload=lambda: _reload(reloader, "SIGHUP")
    )
    signals.setServiceParent(top)
    if options["watch-config"]:
        path = config_file(options["config"], os.getcwd())
        assert path is not None, "the config was loaded from it"
        watch = ConfigWatcher(path, lambda: _reload(reloader, "--watch-config"), reactor)
        watch.setServiceParent(top)
    apis = [
        (config.openai_listen_port, surfaces.openai),
        (config.management_listen_port, surfaces.management),
    ]
    for site in [site for port, site in apis if port is not None]:
        # Built on the reactor's first turn: after every port listens, before
        # the first client (usually) needs it.  (A port that a reload adds
        # builds its site for its first client.)
        reactor.callWhenRunning(reactor.callLater, 0, _prebuild, site, signals)
    # From here on, twistd may write its pid file and the tree may start (and
    # spawn the watchdog child) before the reactor runs: a quit signal waits
    # for the reactor, which stops what was started, instead of exiting.
    options.quit.hold()
    return top


def _reload(reloader: Reloader[Any], why: str) -> None:
    # Refusals and outcomes are logged by the reloader: nothing else to do.
    reloader.reload(False, why).addErrback(_reload_failed)


def _reload_failed(failure: Failure) -> None:
    if failure.check(ReloadRefused):
        return  # logged with its problems
    if failure.check(ReloadBusy):
        _log.warn("a reload is being applied already: this one was skipped")
        return
    _log.failure("reload failed", failure)


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
