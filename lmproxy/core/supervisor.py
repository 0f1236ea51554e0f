"""
The supervisor owns the life of every model service: who waits for it, the
resources it holds, its start, readiness, idle stop, eviction and shutdown.

Per service: ``stopped -> waiting_for_resources -> starting -> running ->
stopping -> stopped``.  Listeners ask for a backend with ``acquire`` and get an
``ILease``; while leases are held the service is never evicted.

Scheduling is one synchronous pass over the services waiting for resources,
in the order they started waiting (``_schedule``); it runs after every event
that can change the answer: a waiter arrives or leaves, a service stops, a
lease is released, a CheckCommand reports.  A waiting service only claims the
resources it needs: a later service that needs none of them is not held up,
but one that needs any of them waits its turn.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from operator import methodcaller
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    gatherResults,
    race,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from lmproxy.config import Config, ServiceConfig
from lmproxy.core.process import (
    GroupRegistry,
    GroupSignaller,
    ServiceProcess,
    StartError,
    run_shell,
)
from lmproxy.core.readiness import ReadinessReactor, Wakeup, wait_until_ready
from lmproxy.core.resources import Ledger, plan_eviction
from lmproxy.interfaces import (
    IBackends,
    ILease,
    IStatusObserver,
    ResourceStatus,
    ServiceBusy,
    ServiceState,
    ServiceStatus,
    ServiceUnavailable,
    Snapshot,
    StatusChange,
    UnknownService,
)
from lmproxy.logs import log_observer

CHECK_COMMAND_TIMEOUT_SECONDS = 60.0


class _Waiter:
    """A client waiting for its service to run."""

    def __init__(self, deferred: Deferred[None]) -> None:
        self.deferred = deferred
        self.timer: IDelayedCall | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _Service:
    """The mutable state of one service."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = ServiceState.STOPPED
        self.waiters: list[_Waiter] = []
        self.leases: set[_Lease] = set()
        self.process: ServiceProcess | None = None
        self.host: str | None = None
        self.generation = 0  # successful starts; a lease knows which run it used
        self.last_used: float | None = None
        self.idle_timer: IDelayedCall | None = None
        self.abort_start: Deferred[str] | None = None
        self.start_began = 0.0
        self.stop_waiters: list[Deferred[None]] = []
        self.wait_reported = False  # "waiting for resources" is logged once per wait
        self.starts = 0
        self.failed_starts = 0
        self.evictions = 0

    def cancel_idle_timer(self) -> None:
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None


@implementer(ILease)
class _Lease:
    """A client's use of one run of a service (see L{ILease})."""

    def __init__(self, supervisor: Supervisor, service: _Service) -> None:
        assert service.host is not None
        self._supervisor = supervisor
        self._service = service
        self.service = service.name
        self.host = service.host
        self.port = service.config.proxy_target_port
        self.generation = service.generation
        self.may_reconnect = True
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._supervisor._lease_released(self._service, self)

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        if not self.may_reconnect:
            return fail(ServiceUnavailable(f"cannot connect to service {self.service!r}"))

        def last_chance(lease: ILease) -> ILease:
            assert isinstance(lease, _Lease)
            lease.may_reconnect = False
            return lease

        return self._supervisor._reconnect(self._service, self.generation).addCallback(last_chance)


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
    ) -> None:
        self._config = config
        self._reactor = reactor
        self._signal_group = signal_group
        self._groups = groups
        self._services = {s.name: _Service(s) for s in config.services}
        self._ledger = Ledger.from_config(config.resources)
        self._queue: list[_Service] = []
        self._started_at = reactor.seconds()
        self._shutting_down = False
        self._scheduling = False
        self._schedule_again = False
        self._observers: list[IStatusObserver] = []
        self._notify_call: IDelayedCall | None = None
        # Measured (CheckCommand) resources: a value is "fresh" from its check
        # until something that changes it happens (a stop, a start, a timer).
        # A check that began before such a change does not give a fresh value.
        self._fresh: set[str] = set()
        self._changes: Counter[str] = Counter()
        self._checks: dict[str, Deferred[None]] = {}
        self._recheck_timers: dict[str, IDelayedCall] = {}
        # Groups of processes that exited on their own, still being ended.
        self._leftovers: dict[ServiceProcess, Deferred[None]] = {}

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # After the listeners are up: a slow CheckCommand must not delay them.
        self._reactor.callLater(0, self._check_all)

    def stopService(self) -> Deferred[None]:
        """Stop every service in parallel; fires when every process group is gone."""
        super().stopService()
        self._shutting_down = True
        for timer in self._recheck_timers.values():
            timer.cancel()
        self._recheck_timers.clear()
        for check in list(self._checks.values()):
            check.cancel()
        stops = [
            self._stop(service, "lmproxy is shutting down") for service in self._services.values()
        ]
        stops.extend(self._leftovers.values())
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def kill_all(self) -> None:
        """SIGKILL every service's process group now (a second quit signal)."""
        for service in self._services.values():
            if service.process is not None:
                self.log.warn("{service}: killing at once", service=service.name)
                service.process.kill()
        for process in self._leftovers:
            process.kill()

    # -- IBackends --------------------------------------------------------

    def acquire(self, service: str) -> Deferred[ILease]:
        try:
            svc = self._service(service)
        except UnknownService as e:
            return fail(e)
        if self._shutting_down:
            return fail(ServiceUnavailable("lmproxy is shutting down"))
        self._touch(svc)
        if svc.state == ServiceState.RUNNING:
            return succeed(self._new_lease(svc))
        return self._wait_for_running(svc).addCallback(lambda _: self._lease_or_wait(svc))

    def start(self, service: str) -> Deferred[None]:
        def release(lease: ILease) -> None:
            lease.release()

        return self.acquire(service).addCallback(release)

    def stop(self, service: str, force: bool) -> Deferred[None]:
        try:
            svc = self._service(service)
        except UnknownService as e:
            return fail(e)
        if svc.leases and not force:
            return fail(
                ServiceBusy(f"service {service!r} has {len(svc.leases)} proxied connection(s)")
            )
        return self._stop(svc, "stopped on request")

    def snapshot(self) -> Snapshot:
        return Snapshot(
            started_at=self._started_at,
            services=tuple(self._service_status(s) for s in self._services.values()),
            resources=tuple(self._resource_status(r.name) for r in self._config.resources),
        )

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    # -- waiting ----------------------------------------------------------

    def _service(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError:
            raise UnknownService(name) from None

    def _wait_for_running(self, svc: _Service) -> Deferred[None]:
        def client_left(d: Deferred[None]) -> None:
            self._drop_waiter(svc, waiter)

        waiter = _Waiter(Deferred(client_left))
        svc.waiters.append(waiter)
        if svc.state != ServiceState.STARTING:
            waiter.timer = self._reactor.callLater(
                self._config.max_wait, self._waiter_timed_out, svc, waiter
            )
        if svc.state == ServiceState.STOPPED:
            self._enqueue(svc)
        self._changed()
        return waiter.deferred

    def _drop_waiter(self, svc: _Service, waiter: _Waiter) -> None:
        waiter.cancel_timer()
        if waiter in svc.waiters:
            svc.waiters.remove(waiter)
        if not svc.waiters and svc.state == ServiceState.WAITING_FOR_RESOURCES:
            self._queue.remove(svc)
            svc.state = ServiceState.STOPPED
            self._schedule()
        self._changed()

    def _waiter_timed_out(self, svc: _Service, waiter: _Waiter) -> None:
        waiter.timer = None
        self.log.warn(
            "{service}: a client gave up after waiting {seconds} s for resources",
            service=svc.name,
            seconds=self._config.max_wait,
        )
        self._drop_waiter(svc, waiter)
        waiter.deferred.errback(
            ServiceUnavailable(
                f"gave up waiting {self._config.max_wait:g} s for resources to start "
                f"service {svc.name!r}"
            )
        )

    def _fail_waiters(self, svc: _Service, message: str) -> None:
        waiters, svc.waiters = svc.waiters, []
        for waiter in waiters:
            waiter.cancel_timer()
        for waiter in waiters:
            waiter.deferred.errback(ServiceUnavailable(message))

    def _enqueue(self, svc: _Service) -> None:
        svc.state = ServiceState.WAITING_FOR_RESOURCES
        svc.wait_reported = False
        self._queue.append(svc)
        # It must start: what its CheckCommands reported earlier is stale.
        self._invalidate_measured(svc)
        self._schedule()

    # -- scheduling -------------------------------------------------------

    def _schedule(self) -> None:
        """Start what can start, evict what must go, in arrival order."""
        if self._shutting_down:
            return  # what the shutdown's stops free is for nobody
        if self._scheduling:
            self._schedule_again = True
            return
        self._scheduling = True
        try:
            self._schedule_again = True
            while self._schedule_again:
                self._schedule_again = False
                claimed: set[str] = set()
                for svc in list(self._queue):
                    needs = set(svc.config.resource_requirements)
                    if svc.state != ServiceState.WAITING_FOR_RESOURCES or needs & claimed:
                        continue
                    if not self._place(svc):
                        claimed |= needs
        finally:
            self._scheduling = False

    def _place(self, svc: _Service) -> bool:
        """Start ``svc`` if it fits now; else work towards it. True if started."""
        requirements = svc.config.resource_requirements
        static = [r for r in requirements if not self._ledger.is_measured(r)]
        measured = [r for r in requirements if self._ledger.is_measured(r)]
        missing = self._ledger.shortfall(requirements, static)
        if not missing and measured:
            # Static resources fit: only now is it worth running a CheckCommand.
            if not self._measured_fresh(measured):
                return False
            missing = self._ledger.shortfall(requirements, measured)
            unknown = [r for r in missing if self._ledger.measured.get(r) is None]
            if unknown:
                # A CheckCommand that gave no value must not make lmproxy evict
                # services for nothing: try it again later instead.
                self._recheck_later(unknown)
                return False
        if not missing:
            self._start(svc)
            return True
        for other in self._services.values():
            if other.state == ServiceState.STOPPING:
                for resource, amount in self._ledger.holding(other.name).items():
                    if resource in missing:
                        missing[resource] -= amount
        missing = {r: m for r, m in missing.items() if m > 0}
        if not missing:
            return False  # what is being stopped already makes room
        idle = sorted(
            (
                s
                for s in self._services.values()
                if s.state == ServiceState.RUNNING and not s.leases
            ),
            key=lambda s: s.last_used or 0.0,
        )
        victims = plan_eviction(missing, [(s.name, self._ledger.holding(s.name)) for s in idle])
        if victims is None:
            if not svc.wait_reported:
                svc.wait_reported = True
                self.log.info(
                    "{service}: waiting for resources: {missing} more needed, held by "
                    "services in use",
                    service=svc.name,
                    missing=missing,
                )
            self._recheck_later([r for r in missing if self._ledger.is_measured(r)])
            return False
        for name in victims:
            victim = self._services[name]
            victim.evictions += 1
            self.log.info(
                "{victim}: stopping it to free {missing} for {service}",
                victim=name,
                missing=missing,
                service=svc.name,
            )
            self._tell(methodcaller("service_evicted", name))
            self._stop(victim, f"evicted for {svc.name}")
        return False

    # -- measured resources -----------------------------------------------

    def _measured_fresh(self, resources: Iterable[str]) -> bool:
        """True when every one has a fresh value; else start the checks needed."""
        fresh = True
        for resource in resources:
            if resource not in self._fresh:
                fresh = False
                if resource not in self._checks:
                    self._run_check(resource)
        return fresh

    def _check_all(self) -> None:
        for resource in self._config.resources:
            if resource.check_command is not None and resource.name not in self._checks:
                self._run_check(resource.name)

    def _run_check(self, resource: str) -> None:
        check = Deferred.fromCoroutine(self._check(resource))
        if not check.called:
            self._checks[resource] = check

    async def _check(self, resource: str) -> None:
        command = self._ledger.resources[resource].check_command
        assert command is not None
        changes = self._changes[resource]
        try:
            result = await run_shell(
                self._reactor,
                command,
                CHECK_COMMAND_TIMEOUT_SECONDS,
                signal_group=self._signal_group,
            )
        except CancelledError:
            return
        finally:
            self._checks.pop(resource, None)
        value = _parse_measurement(result.output) if result.exit_code == 0 else None
        if value is None:
            self.log.warn(
                "CheckCommand of resource {resource} did not print an integer "
                "(status {status}): {output}",
                resource=resource,
                status=result.exit_code,
                output=result.output.strip()[:200],
            )
        self._ledger.measured[resource] = value
        if self._changes[resource] == changes:
            self._fresh.add(resource)  # else _schedule runs the check again
        self._changed()
        self._schedule()

    def _recheck_later(self, resources: Iterable[str]) -> None:
        for resource in resources:
            if resource in self._recheck_timers or self._shutting_down:
                continue
            interval = self._ledger.resources[resource].check_interval
            self._recheck_timers[resource] = self._reactor.callLater(
                interval, self._recheck, resource
            )

    def _recheck(self, resource: str) -> None:
        del self._recheck_timers[resource]
        self._fresh.discard(resource)
        self._schedule()

    def _invalidate_measured(self, svc: _Service) -> None:
        for resource in svc.config.resource_requirements:
            self._fresh.discard(resource)
            self._changes[resource] += 1

    # -- starting ---------------------------------------------------------

    def _start(self, svc: _Service) -> None:
        self._queue.remove(svc)
        svc.state = ServiceState.STARTING
        svc.start_began = self._reactor.seconds()
        for waiter in svc.waiters:
            waiter.cancel_timer()
        self._ledger.hold(svc.name, svc.config.resource_requirements)
        self._invalidate_measured(svc)
        svc.abort_start = Deferred()
        self._changed()
        Deferred.fromCoroutine(self._run_start(svc)).addErrback(
            lambda f: self.log.failure("{service}: start crashed", f, service=svc.name)
        )

    async def _run_start(self, svc: _Service) -> None:
        config = svc.config
        wakeup = Wakeup(self._reactor)
        process = ServiceProcess(
            self._reactor,
            config,
            self._config.output_service_logs,
            self._signal_group,
            on_output=wakeup.poke,
            registry=self._groups,
        )
        svc.process = process
        assert svc.abort_start is not None
        try:
            process.spawn()
            deadline = svc.start_began + config.startup_timeout
            ready = Deferred.fromCoroutine(
                wait_until_ready(self._reactor, config, deadline, wakeup, self._signal_group)
            )
            # A readiness error must end the race at once, not lose it silently:
            # race() only ends early on a success, so make the error one.
            ready.addErrback(lambda f: f.value)
            contenders: list[Deferred[Any]] = [
                ready,
                svc.abort_start,
                deferLater(self._reactor, config.startup_timeout),
            ]
            if config.consider_stopped_on_process_exit:
                contenders.append(process.when_exited())
            index, result = await race(contenders)
        except StartError as e:
            reason = str(e)
        else:
            if index == 0 and isinstance(result, str):
                self._started(svc, result)
                process.when_exited().addCallback(lambda _: self._process_exited(svc, process))
                return
            reason = {
                0: f"readiness check failed: {result}",
                1: str(result),
                2: f"not ready within {config.startup_timeout:g} s",
                3: f"process {process.exit_description} while starting",
            }[index]
        await self._start_failed(svc, reason)

    def _started(self, svc: _Service, host: str) -> None:
        svc.state = ServiceState.RUNNING
        svc.host = host
        svc.generation += 1
        svc.starts += 1
        svc.abort_start = None
        self._ledger.mark_running(svc.name)
        seconds = self._reactor.seconds() - svc.start_began
        self.log.info("{service}: ready after {seconds:.3f} s", service=svc.name, seconds=seconds)
        self._tell(methodcaller("start_finished", svc.name, seconds, True))
        self._touch(svc)
        waiters, svc.waiters = svc.waiters, []
        self._changed()
        for waiter in waiters:
            waiter.deferred.callback(None)
        if not svc.leases and self._queue:
            self._schedule()  # nobody uses it (its clients left): it may be evicted now

    async def _start_failed(self, svc: _Service, reason: str) -> None:
        svc.failed_starts += 1
        svc.abort_start = None
        seconds = self._reactor.seconds() - svc.start_began
        self.log.error("{service}: start failed: {reason}", service=svc.name, reason=reason)
        self._tell(methodcaller("start_finished", svc.name, seconds, False))
        svc.state = ServiceState.STOPPING
        self._fail_waiters(svc, f"service {svc.name!r} failed to start: {reason}")
        self._changed()
        await self._finish_stop(svc)

    def _process_exited(self, svc: _Service, process: ServiceProcess) -> None:
        if svc.process is not process or svc.state != ServiceState.RUNNING:
            return  # a stop in progress expects this exit
        if not svc.config.consider_stopped_on_process_exit:
            self.log.info(
                "{service}: process {how}; the service stays running "
                "(ConsiderStoppedOnProcessExit is false)",
                service=svc.name,
                how=process.exit_description,
            )
            return
        self.log.warn(
            "{service}: process {how} on its own; service stopped",
            service=svc.name,
            how=process.exit_description,
        )
        self._become_stopped(svc)
        # Its children may live on in its group: end them, off the critical path
        # (but shutdown waits for them, and kill_all kills them).
        cleanup = Deferred.fromCoroutine(process.stop(use_kill_command=False))
        if not cleanup.called:
            self._leftovers[process] = cleanup

            def forget(_: object) -> None:
                del self._leftovers[process]

            cleanup.addErrback(
                lambda f: self.log.failure("{service}: stopping failed", f, service=svc.name)
            )
            cleanup.addBoth(forget)

    # -- stopping ---------------------------------------------------------

    def _stop(self, svc: _Service, reason: str) -> Deferred[None]:
        """Stop ``svc`` (whatever its state); fires once it is stopped."""
        if svc.state == ServiceState.STOPPED:
            return succeed(None)
        if svc.state == ServiceState.WAITING_FOR_RESOURCES:
            self._queue.remove(svc)
            svc.state = ServiceState.STOPPED
            self._fail_waiters(svc, f"service {svc.name!r} was not started: {reason}")
            self._changed()
            self._schedule()
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        svc.stop_waiters.append(stopped)
        if svc.state == ServiceState.STARTING:
            assert svc.abort_start is not None
            svc.abort_start.callback(reason)
        elif svc.state == ServiceState.RUNNING:
            self.log.info("{service}: stopping ({reason})", service=svc.name, reason=reason)
            svc.state = ServiceState.STOPPING
            svc.cancel_idle_timer()
            self._changed()
            Deferred.fromCoroutine(self._finish_stop(svc))
        return stopped

    async def _finish_stop(self, svc: _Service) -> None:
        process = svc.process
        if process is not None:
            try:
                await process.stop()
            except Exception:
                self.log.failure("{service}: stopping failed", service=svc.name)
        self._become_stopped(svc)

    def _become_stopped(self, svc: _Service) -> None:
        svc.state = ServiceState.STOPPED
        svc.process = None
        svc.host = None
        svc.cancel_idle_timer()
        self._ledger.release(svc.name)
        self._invalidate_measured(svc)
        stop_waiters, svc.stop_waiters = svc.stop_waiters, []
        for d in stop_waiters:
            d.callback(None)
        if svc.waiters:
            if self._shutting_down:
                self._fail_waiters(svc, "lmproxy is shutting down")
            else:
                self._enqueue(svc)
        self._changed()
        self._schedule()

    # -- leases and idle time ---------------------------------------------

    def _new_lease(self, svc: _Service) -> ILease:
        lease = _Lease(self, svc)
        svc.leases.add(lease)
        self._touch(svc)
        self._changed()
        return lease

    def _lease_or_wait(self, svc: _Service) -> ILease | Deferred[ILease]:
        # An earlier waiter's callback may have stopped it again already.
        if svc.state == ServiceState.RUNNING:
            return self._new_lease(svc)
        return self.acquire(svc.name)

    def _lease_released(self, svc: _Service, lease: _Lease) -> None:
        svc.leases.discard(lease)
        self._touch(svc)
        self._changed()
        if not svc.leases and self._queue:
            self._schedule()  # it may be evicted now

    def _reconnect(self, svc: _Service, generation: int) -> Deferred[ILease]:
        # Only a run that still counts as running failed this client.  A run
        # that is over (its process exited on its own, or another client's
        # reconnect restarted it) is no one's failure: like a new client, this
        # one gets the current run, started for it if need be.
        if svc.state == ServiceState.RUNNING and svc.generation == generation:
            if not svc.config.restart_on_connection_failure:
                return fail(
                    ServiceUnavailable(
                        f"cannot connect to service {svc.name!r} at "
                        f"{svc.config.proxy_target_host}:{svc.config.proxy_target_port}"
                    )
                )
            self._stop(svc, "restart after a failed connection")
        return self.acquire(svc.name)

    def _touch(self, svc: _Service) -> None:
        svc.last_used = self._reactor.seconds()
        if svc.state == ServiceState.RUNNING:
            self._arm_idle_timer(svc)

    def _arm_idle_timer(self, svc: _Service) -> None:
        svc.cancel_idle_timer()
        svc.idle_timer = self._reactor.callLater(svc.config.idle_timeout, self._idle_expired, svc)

    def _idle_expired(self, svc: _Service) -> None:
        svc.idle_timer = None
        if svc.state != ServiceState.RUNNING:
            return
        if svc.leases:
            self._arm_idle_timer(svc)  # busy: look again later, last_used unchanged
            return
        self._stop(svc, f"idle for {svc.config.idle_timeout:g} s")

    # -- status -----------------------------------------------------------

    def _changed(self) -> None:
        if self._observers and self._notify_call is None:
            # Coalesce a burst of changes into one notification per reactor turn.
            self._notify_call = self._reactor.callLater(0, self._notify)

    def _notify(self) -> None:
        self._notify_call = None
        change = StatusChange(frozenset(self._services), frozenset(self._ledger.resources))
        self._tell(methodcaller("status_changed", change))

    def service_status(self, service: str) -> ServiceStatus:
        return self._service_status(self._service(service))

    def resource_status(self, resource: str) -> ResourceStatus:
        self._ledger.resources[resource]
        return self._resource_status(resource)

    def _tell(self, notice: methodcaller) -> None:
        """Call ``notice`` on every observer; one that raises is logged, the rest are still told."""
        for observer in list(self._observers):
            try:
                notice(observer)
            except Exception:
                self.log.failure("status observer {observer} failed", observer=observer)

    def _service_status(self, svc: _Service) -> ServiceStatus:
        config = svc.config
        return ServiceStatus(
            name=svc.name,
            listen_port=config.listen_port,
            status=svc.state,
            waiting_connections=len(svc.waiters),
            proxied_connections=len(svc.leases),
            last_used=svc.last_used,
            service_url=config.service_url,
            resource_requirements=dict(config.resource_requirements),
            openai_models=config.openai_api_models,
            pid=svc.process.pid if svc.process is not None else None,
            starts=svc.starts,
            failed_starts=svc.failed_starts,
            evictions=svc.evictions,
        )

    def _resource_status(self, resource: str) -> ResourceStatus:
        ledger = self._ledger
        usage = ledger.usage_by_service(resource)
        for svc in self._queue:
            amount = svc.config.resource_requirements.get(resource)
            if amount is not None:
                usage.setdefault(svc.name, amount)
        measured = ledger.is_measured(resource)
        return ResourceStatus(
            name=resource,
            total=None if measured else ledger.resources[resource].amount,
            measured=ledger.measured.get(resource) if measured else None,
            reserved_by_starting_services=ledger.reserved_by_starting(resource),
            in_use=ledger.in_use(resource),
            free=ledger.free(resource),
            usage_by_service=usage,
        )


def _parse_measurement(output: str) -> int | None:
    try:
        return int(output.strip())
    except ValueError:
        return None
