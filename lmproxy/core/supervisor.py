"""
The supervisor: a scheduler over one L{ServiceLifecycle} per service and the
resource L{Ledger}.  It is the L{IBackends} the listeners ask for backends.

Scheduling is one synchronous pass over the services waiting for resources,
in the order they began to wait (L{Supervisor._schedule}).  It runs after
every event that can change the answer: a service begins or stops waiting, a
service stops, a running one has no lease left, a measurement comes in.  A
waiting service claims only the resources it needs: a later one that needs
none of them is not held up, but one that needs any of them waits its turn.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.logger import Logger
from zope.interface import implementer

from lmproxy.config import Config, ServiceConfig
from lmproxy.core.explain import waiting_for
from lmproxy.core.groups import GroupRegistry, GroupSignaller
from lmproxy.core.lifecycle import ServiceLifecycle
from lmproxy.core.measured import Measurements
from lmproxy.core.placement import Placement
from lmproxy.core.portcheck import PortCheck
from lmproxy.core.readiness import ConnectNow, ReadinessReactor
from lmproxy.core.resources import Ledger
from lmproxy.core.starttimes import StartTimes, state_file
from lmproxy.core.startup import Launcher
from lmproxy.core.states import RUNNING, STARTING, STOPPED, STOPPING, WAITING
from lmproxy.core.status import StatusPublisher
from lmproxy.interfaces import (
    IBackends,
    ILease,
    IStatusObserver,
    ReloadOutcome,
    ResourceStatus,
    ServiceBusy,
    ServiceState,
    ServiceStatus,
    Snapshot,
    UnknownService,
)
from lmproxy.logs import log_observer

# After these, what a service's CheckCommands measured is stale: it must start
# (what was free a while ago may not be now), it began to start, its start
# ended (a value from before or during it does not show its use; a failed one
# ends in STOPPED below), or it stopped.
_STALE_AFTER = frozenset(
    {
        (STOPPED, WAITING),
        (WAITING, STARTING),
        (STARTING, RUNNING),
        (RUNNING, STOPPED),
        (STOPPING, STOPPED),
    }
)


@implementer(IBackends)
class Supervisor(Service):
    """Starts, stops and hands out model services (see the module docstring)."""

    log = Logger(observer=log_observer)

    def __init__(
        self,
        config: Config,
        reactor: ReadinessReactor,
        signal_group: GroupSignaller = os.killpg,
        groups: GroupRegistry | None = None,
        port_check: PortCheck | None = None,
        connect: ConnectNow | None = None,
    ) -> None:
        """
        @param port_check: run before each spawn: why the service's target
            port is taken already (L{lmproxy.core.portcheck}); none if C{None}.
        @param connect: probes a started service's loopback port at every
            turn of the reactor at first (see
            L{lmproxy.core.startup.Launcher.connect}).
        """
        self._config = config
        self._reactor = reactor
        self._ledger = Ledger.from_config(config.resources)
        self._publisher = StatusPublisher(reactor)
        self._measurements = Measurements(
            reactor, self._ledger, signal_group, self._measured, groups
        )
        self._launcher = Launcher(
            reactor, signal_group, config.output_service_logs, groups, port_check, connect
        )
        self._lifecycles = {s.name: self._lifecycle(s) for s in config.services}
        self._queue: list[ServiceLifecycle] = []  # waiting for resources, in arrival order
        self._waiting_since: dict[str, float] = {}  # of the services in _queue
        self._starting_since: dict[str, float] = {}  # of the services starting
        self._queued = dict.fromkeys(self._lifecycles, 0)  # clients waiting for a turn
        self._removed: set[str] = set()  # names a reload removed
        self._start_times = StartTimes(state_file(config.services))
        self._placement = Placement(
            self._ledger, self._measurements, self._publisher, self._lifecycles
        )
        self._started_at = reactor.seconds()
        self._stopping = False
        self._scheduling = False
        self._schedule_again = False

    def _lifecycle(self, service: ServiceConfig) -> ServiceLifecycle:
        return ServiceLifecycle(service, self, self._launcher, self._config.max_wait)

    # -- IService -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # After the listeners are up: a slow CheckCommand must not delay them.
        self._reactor.callLater(0, self._launched)

    def _launched(self) -> None:
        self._measurements.check_all()
        for lc in list(self._lifecycles.values()):  # in config order
            if lc.config.start_on_launch:
                lc.preload("StartOnLaunch")

    def stopService(self) -> Deferred[None]:
        """Stop every service in parallel; fires when every process group is gone."""
        super().stopService()
        self._stopping = True
        self._measurements.stop()
        lifecycles = self._lifecycles.values()
        stops = [lc.stop("lmproxy is shutting down") for lc in lifecycles]
        stops.extend(cleanup for lc in lifecycles for cleanup in lc.cleanups())
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def kill_all(self) -> None:
        """SIGKILL every service's process group now (a second quit signal)."""
        for lifecycle in self._lifecycles.values():
            lifecycle.kill()

    def reconfigure(self, config: Config, force: bool) -> ReloadOutcome:
        """
        Follow a reloaded config (see L{lmproxy.core.lifecyclereload}):
        services that stay take their new settings, new ones are added,
        removed ones stop once idle; resources follow.  Then whatever can
        start starts.

        @param force: restart and stop at once, even services in use.
        """
        old_config, self._config = self._config, config
        logs = config.output_service_logs
        self._launcher = attrs.evolve(self._launcher, output_service_logs=logs)
        stale = self._ledger.reconfigure(config.resources)
        self._measurements.reconfigure(stale)
        for name in stale:
            self._publisher.resource_changed(name)
        outcome: dict[str, list[str]] = defaultdict(list)
        wanted = {service.name: service for service in config.services}
        for gone in [lc for name, lc in self._lifecycles.items() if name not in wanted]:
            outcome[gone.remove(force)].append(gone.name)
        kept = dict(self._lifecycles)
        self._lifecycles.clear()  # in place: Placement shares it; in the new config's order
        for service in config.services:
            if service.name not in kept:
                lc = self._lifecycle(service)
                self._queued[service.name] = 0
                self._removed.discard(service.name)
                outcome["added"].append(service.name)
            else:
                lc = kept.pop(service.name)
                outcome[lc.reconfigure(service, force)].append(service.name)
            self._lifecycles[service.name] = lc
            lc.launcher = self._launcher
            lc.set_max_wait(config.max_wait)
            self._ledger.rehold(service.name, lc.config.resource_requirements)
            self._publisher.service_changed(service.name, lc.config.resource_requirements)
        self._lifecycles.update(kept)  # removed, until they stop
        for lc in list(self._lifecycles.values()):
            starts = lc.config.start_on_launch and lc.state is STOPPED
            if starts and lc.name in wanted and not self._was_preloaded(lc, old_config):
                lc.preload("StartOnLaunch, reloaded")
        self._explanations_changed()
        self._schedule()
        return ReloadOutcome(**{field: tuple(names) for field, names in outcome.items()})

    def _was_preloaded(self, lc: ServiceLifecycle, old: Config) -> bool:
        """Whether C{lc} had StartOnLaunch before the reload (its start then was its own)."""
        return any(s.name == lc.name and s.start_on_launch for s in old.services)

    def removed(self, lc: ServiceLifecycle) -> None:
        if self._lifecycles.get(lc.name) is lc:
            del self._lifecycles[lc.name]
            self._queued.pop(lc.name, None)
            self._removed.add(lc.name)
            self._waiting_since.pop(lc.name, None)
            self._starting_since.pop(lc.name, None)
            self.log.info("{service}: removed (it left the config)", service=lc.name)
            self._publisher.service_changed(lc.name)

    # -- IBackends ----------------------------------------------------------

    def acquire(self, service: str) -> Deferred[ILease]:
        lifecycle = self._lifecycles.get(service)
        return fail(UnknownService(service)) if lifecycle is None else lifecycle.acquire()

    def start(self, service: str) -> Deferred[None]:
        lifecycle = self._lifecycles.get(service)
        if lifecycle is not None:
            lifecycle.reset_backoff()  # asked for explicitly: try now
        return self.acquire(service).addCallback(lambda lease: lease.release())

    def stop(self, service: str, force: bool) -> Deferred[None]:
        lifecycle = self._lifecycles.get(service)
        if lifecycle is None:
            return fail(UnknownService(service))
        if lifecycle.leases and not force:
            message = f"service {service!r} has {lifecycle.leases} proxied connection(s)"
            return fail(ServiceBusy(message))
        return lifecycle.stop("stopped on request")

    def queued(self, service: str, delta: int) -> None:
        if service not in self._queued:
            if service in self._removed:
                return  # the clients of a removed service's port, leaving its queue
            raise UnknownService(service)
        # Never below 0: clients of a service removed and added back may leave
        # the old queue after the new count began.
        self._queued[service] = max(0, self._queued[service] + delta)
        self._publisher.service_changed(service)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            started_at=self._started_at,
            services=tuple(self._status(lc) for lc in self._lifecycles.values()),
            resources=tuple(self.resource_status(r.name) for r in self._config.resources),
        )

    def service_status(self, service: str) -> ServiceStatus:
        lifecycle = self._lifecycles.get(service)
        if lifecycle is None:
            raise UnknownService(service)
        return self._status(lifecycle)

    def _status(self, lc: ServiceLifecycle) -> ServiceStatus:
        status = attrs.evolve(
            lc.status(),
            starting_since=self._starting_since.get(lc.name),
            queued_connections=self._queued[lc.name],
            start_estimate=self._start_times.estimate(lc.name),
        )
        since = self._waiting_since.get(lc.name)
        if lc.state is not WAITING or since is None:
            return status
        why = waiting_for(lc, since, self._queue, self._ledger, self._lifecycles)
        return attrs.evolve(status, waiting_for=why)

    def resource_status(self, resource: str) -> ResourceStatus:
        waiting = [(lc.name, lc.config.resource_requirements) for lc in self._queue]
        return self._ledger.status(resource, waiting)

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        return self._publisher.subscribe(observer)

    # -- what lifecycles tell (LifecycleOwner) ------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._stopping

    def transitioned(self, lc: ServiceLifecycle, old: ServiceState, new: ServiceState) -> None:
        """Keep the queue, the ledger and the measurements in step with C{lc}."""
        needs = lc.config.resource_requirements
        if new is WAITING:
            self._queue.append(lc)
            self._waiting_since[lc.name] = self._reactor.seconds()
            self._placement.waiting(lc)
        elif old is WAITING:
            self._queue.remove(lc)
            self._waiting_since.pop(lc.name, None)
        if new is STARTING:
            self._starting_since[lc.name] = self._reactor.seconds()
        elif old is STARTING:
            self._starting_since.pop(lc.name, None)
        if new is STARTING:
            self._ledger.hold(lc.name, needs)
        elif new is RUNNING:
            self._ledger.mark_running(lc.name)
        elif new is STOPPED:
            self._ledger.release(lc.name)
        if (old, new) in _STALE_AFTER:
            self._measurements.invalidate(needs)
        self._publisher.service_changed(lc.name, needs)
        self._explanations_changed()
        if new is WAITING or new is STOPPED:
            self._schedule()

    def idle(self, lc: ServiceLifecycle) -> None:
        if self._queue:
            self._schedule()  # nobody uses it: it may be evicted now

    def changed(self, lc: ServiceLifecycle) -> None:
        self._publisher.service_changed(lc.name)
        self._explanations_changed()

    def _explanations_changed(self) -> None:
        """What a waiting service's C{waiting_for} says may have changed: tell the observers."""
        for waiting in self._queue:
            self._publisher.service_changed(waiting.name)

    def start_finished(self, lc: ServiceLifecycle, seconds: float, ok: bool) -> None:
        if ok:
            self._start_times.record(lc.name, seconds)
        self._publisher.start_finished(lc.name, seconds, ok)

    def _measured(self, resource: str) -> None:
        self._publisher.resource_changed(resource)
        self._explanations_changed()
        self._schedule()

    # -- scheduling ---------------------------------------------------------

    def _schedule(self) -> None:
        """Start what can start, evict what must go, in arrival order."""
        if self._stopping:
            return  # what the shutdown's stops free is for nobody
        if self._scheduling:  # a start or a stop of this pass came back here
            self._schedule_again = True
            return
        self._scheduling = True
        try:
            self._schedule_again = True
            while self._schedule_again:
                self._schedule_again = False
                claimed: set[str] = set()
                for lc in list(self._queue):
                    needs = set(lc.config.resource_requirements)
                    if lc.state is not WAITING or needs & claimed:
                        continue
                    if not self._placement.place(lc):
                        claimed |= needs
        finally:
            self._scheduling = False
