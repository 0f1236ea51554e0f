"""
How a service's lifecycle follows a reloaded config (L{LifecycleReloads}).

Settings split in two: those its process was started with
(L{PROCESS_FIELDS}: changing one means a restart) and the others, which
apply to it as it is (its idle timeout, its port's limits, pinned...).  A
restart waits until the service is idle: its clients finish first, and new
ones wait for the new run, so that a busy service is restarted as soon as
its current connections end, never while it answers.  A service removed
from the config takes no new client and stops once idle.  C{force} does
either at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.config import ServiceConfig
from lmproxy.interfaces import REMOVAL, RESTART, ILease, ServiceState

if TYPE_CHECKING:
    from lmproxy.core.lease import Lease
    from lmproxy.core.lifecycle import ServiceLifecycle
    from lmproxy.core.owner import LifecycleOwner
    from lmproxy.core.waiters import Waiters
    from lmproxy.timers import Timer

PROCESS_FIELDS = (
    "command",
    "args",
    "work_dir",
    "env",
    "proxy_target_host",
    "proxy_target_port",
    "log_file_path",
    "consider_stopped_on_process_exit",
)
"""
The settings a running process was started with or is known by: a change
of any of them restarts the service.  Its C{KillCommand} is not one: a
process is stopped with the settings it was started with anyway.
"""

# What the running process holds besides: the resources it was started with.
_KEPT_WHILE_RUNNING = (*PROCESS_FIELDS, "resource_requirements")


def process_changed(old: ServiceConfig, new: ServiceConfig) -> bool:
    """Whether C{new} starts a different process than C{old}."""
    return any(getattr(old, name) != getattr(new, name) for name in PROCESS_FIELDS)


def keep_process(new: ServiceConfig, running: ServiceConfig) -> ServiceConfig:
    """C{new}, but with what the running process was started with (until it is restarted)."""
    return attrs.evolve(new, **{name: getattr(running, name) for name in _KEPT_WHILE_RUNNING})


class LifecycleReloads:
    """
    The part of L{ServiceLifecycle} that a reload drives (see the module docstring).

    @ivar pending_reload: what a reload left to do once it is idle:
        L{RESTART}, L{REMOVAL} or C{None}.
    """

    # What it uses of ServiceLifecycle.
    name: str
    config: ServiceConfig
    state: ServiceState
    last_used: float | None
    log: Logger
    _owner: LifecycleOwner
    _leases: set[Lease]
    _waiters: Waiters
    _idle_timer: Timer
    _clock: IReactorTime
    stop: Callable[[str], Deferred[None]]
    acquire: Callable[[], Deferred[ILease]]
    _idle_expired: Callable[[], None]

    def __init__(self) -> None:
        self.pending_reload: str | None = None
        self._next_config: ServiceConfig | None = None  # applied once stopped
        self._restart = False  # the reload's stop is a restart: start it again

    @property
    def _me(self) -> ServiceLifecycle:
        return cast("ServiceLifecycle", self)  # what its owner knows it as

    def _settle_reload(self) -> bool:
        """It stops: take the settings held back; whether to start it again."""
        if self._next_config is not None:
            self.config, self._next_config = self._next_config, None
        restart, self._restart = self._restart, False
        if self.pending_reload is RESTART:
            self.pending_reload = None
        return restart

    def _reload_stopped(self, restart: bool) -> None:
        """It stopped: a removed one is dropped, a restarted one starts again."""
        if self.pending_reload is REMOVAL:
            self._owner.removed(self._me)
        elif restart and self.state is ServiceState.STOPPED:
            self.preload("restarted with its new settings")

    def preload(self, why: str) -> None:
        """Start it for nobody (StartOnLaunch, a restart); a failure is logged."""
        if self._owner.shutting_down:
            return
        self.log.info("{service}: starting it ({why})", service=self.name, why=why)
        self.acquire().addCallbacks(
            lambda lease: lease.release(), self._preload_failed, errbackArgs=(why,)
        )

    def _preload_failed(self, failure: Failure, why: str) -> None:
        # Like a client's, a failed preload is logged, and lmproxy goes on.
        self.log.warn(
            "{service}: not started ({why}): {reason}",
            service=self.name,
            why=why,
            reason=failure.getErrorMessage(),
        )

    def set_max_wait(self, seconds: float) -> None:
        """A reloaded C{MaxWait...}: for the clients that begin to wait from now on."""
        self._waiters.max_wait = seconds

    def reconfigure(self, new: ServiceConfig, force: bool) -> str:
        """
        Take the settings of a reloaded config (the same name): at once, or,
        when its process runs with settings that changed, once it is idle
        (its clients finish first; new ones wait for the new run), or at
        once with C{force}.

        @return: what happened, named as L{ReloadOutcome}'s fields.
        """
        removal = self.pending_reload is REMOVAL  # back in the config
        if not removal and new == (self._next_config or self.config):
            if force and self.pending_reload is RESTART:
                self._reload_now()
                return "restarted"
            return "unchanged"
        if removal:
            self.pending_reload = None
        runs = self.state is ServiceState.STARTING or self.state is ServiceState.RUNNING
        if not (runs and process_changed(self.config, new)):
            self._next_config = None
            self._apply(new)
            if self.pending_reload is RESTART:  # back to what runs: nothing to restart
                self.pending_reload = None
                if self.state is ServiceState.RUNNING:
                    self._waiters.serve()  # who waited for the new run has this one
            return "updated"
        self._next_config = new
        self._apply(keep_process(new, self.config))
        self.pending_reload = RESTART
        self._owner.changed(self._me)
        if force or not self._leases:
            self._reload_now()
            return "restarted"
        self.log.info(
            "{service}: restarts with its new settings once its {count} connection(s) end",
            service=self.name,
            count=len(self._leases),
        )
        return "restart_pending"

    def remove(self, force: bool) -> str:
        """
        It is gone from the reloaded config: it takes no new client; waiting
        ones are told; it stops once its connections end (at once with C{force}).

        @return: what happened, named as L{ReloadOutcome}'s fields.
        """
        self.pending_reload = REMOVAL
        self._next_config = None
        self._restart = False
        self._owner.changed(self._me)
        self._waiters.fail(f"service {self.name!r} was removed from the config")
        if self.state is ServiceState.WAITING_FOR_RESOURCES:
            self.stop("removed from the config")  # nobody waits now
        if self.state is ServiceState.STOPPED:
            self._owner.removed(self._me)
        elif force or not self._leases:
            self._reload_now()
        else:
            return "removal_pending"
        return "removed"

    def _reload_now(self) -> None:
        """Do what the reload left to do: stop it (and start it again for a restart)."""
        if self.pending_reload is REMOVAL:
            self.stop("removed from the config")
            return
        self._restart = self.state is ServiceState.STARTING or self.state is ServiceState.RUNNING
        self.stop("restart with its new settings")

    def _apply(self, new: ServiceConfig) -> None:
        """Settings that apply to it as it is: the idle timer follows a new timeout."""
        old, self.config = self.config, new
        if self.state is ServiceState.RUNNING and old.idle_timeout != new.idle_timeout:
            self._idle_timer.cancel()
            if new.idle_timeout is not None:
                now = self._clock.seconds()
                since = now if self.last_used is None else self.last_used
                self._idle_timer.arm(max(0.0, since + new.idle_timeout - now), self._idle_expired)
        self._owner.changed(self._me)
