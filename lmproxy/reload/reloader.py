"""
L{Reloader}: read the config file again and apply it as a whole, or not at
all.

A reload is refused, and nothing changes, when the new config does not
validate or a port it asks for cannot be opened: the problems are logged
and returned (C{POST /reload} answers them).  Otherwise the ports are
opened first, then the supervisor follows (L{Supervisor.reconfigure}), then
every port serves what the new config puts on it and the APIs follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.config import Config, ConfigError, load_config
from lmproxy.interfaces import ReloadBusy, ReloadOutcome, ReloadRefused
from lmproxy.listen.sockets import PortsUnavailable, port_keys
from lmproxy.logs import log_observer, set_log_level

Factories = Mapping[int, tuple[IProtocolFactory, str]]
"""What serves each port of a config, with its banner."""


class Reconfigurable(Protocol):
    """The supervisor, as a reload drives it."""

    def reconfigure(self, config: Config, force: bool) -> ReloadOutcome:
        """Follow C{config} (see L{lmproxy.core.supervisor.Supervisor.reconfigure})."""


class PortPlan(Protocol):
    """Ports opened for a new config, not serving yet."""

    def cancel(self) -> None:
        """Close what the plan opened."""


_Plan = TypeVar("_Plan", bound=PortPlan)


class Ports(Protocol[_Plan]):
    """lmproxy's listening ports (L{lmproxy.listen.porttable.PortTable})."""

    def prepare(self, keys: Mapping[int, tuple[str, str]]) -> _Plan:
        """Open what C{keys} adds; raise L{PortsUnavailable}."""

    def apply(self, plan: _Plan, factories: Factories) -> Deferred[None]:
        """Serve C{factories} on the plan's ports; close the others."""


class Surfaces(Protocol):
    """What serves lmproxy's ports (L{lmproxy.surfaces.Surfaces})."""

    def reconfigure(self, config: Config) -> Factories:
        """Follow C{config}; what serves each of its ports."""


class Reloader(Generic[_Plan]):
    """
    Reloads one config file into a running lmproxy (see the module docstring).

    @ivar config: the config that runs.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        path: str | None,
        cwd: str,
        config: Config,
        supervisor: Reconfigurable,
        ports: Ports[_Plan],
        surfaces: Surfaces,
        load: Callable[[str | None, str], Config] = load_config,
    ) -> None:
        """
        @param path: the config file, as lmproxy was given it (C{None}: the
            default names in C{cwd}).
        @param load: reads and validates a config file (L{load_config}).
        """
        self._path = path
        self._cwd = cwd
        self.config = config
        self._supervisor = supervisor
        self._ports = ports
        self._surfaces = surfaces
        self._load = load
        self._applying = False

    def reload(self, force: bool = False, why: str = "reload") -> Deferred[ReloadOutcome]:
        """
        Read the config file again and apply it.

        @param force: restart changed services and stop removed ones at
            once, even while clients use them.
        @param why: what asked for it, for the log (C{"SIGHUP"}, C{"POST /reload"}...).
        @return: fires with what was done once every port follows; fails
            with L{ReloadRefused} (nothing changed) or L{ReloadBusy}.
        """
        if self._applying:
            return fail(ReloadBusy("a reload is being applied already"))
        try:
            config = self._load(self._path, self._cwd)
        except ConfigError as e:
            return self._refused(why, e.problems)
        try:
            plan = self._ports.prepare(port_keys(config))
        except PortsUnavailable as e:
            return self._refused(why, e.problems)
        self._applying = True
        try:
            return self._apply(config, plan, force, why)
        except BaseException:
            self._applying = False
            plan.cancel()
            raise

    def _apply(self, config: Config, plan: _Plan, force: bool, why: str) -> Deferred[ReloadOutcome]:
        self.config = config
        set_log_level(config.log_level)
        for warning in config.warnings:
            self.log.warn("config: {problem}", problem=warning)
        outcome = self._supervisor.reconfigure(config, force)
        applied = self._ports.apply(plan, self._surfaces.reconfigure(config))

        def done(_: None) -> ReloadOutcome:
            self._applying = False
            self.log.info("{why}: config reloaded: {summary}", why=why, summary=outcome.summary())
            return outcome

        def failed(failure: Failure) -> Failure:
            self._applying = False
            return failure

        return applied.addCallbacks(done, failed)

    def _refused(self, why: str, problems: list[str]) -> Deferred[ReloadOutcome]:
        self.log.error(
            "{why}: the config was not reloaded (the running one stays):\n{problems}",
            why=why,
            problems="\n".join(f"  {p}" for p in problems),
        )
        return fail(ReloadRefused(problems))
