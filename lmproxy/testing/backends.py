"""
Fake backends: an in-memory L{IBackends} whose services start only when the
test says so, for testing the listeners and the management API without a
supervisor.  The contract suite in C{tests/test_backends_contract.py} runs
against it and against the supervisor, so it keeps the real one's promises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from lmproxy.config import Config, ResourceConfig, ServiceConfig
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
    StartFailure,
    StatusChange,
    UnknownService,
)


@implementer(ILease)
@define(eq=False)
class FakeLease:
    """A lease handed out by L{FakeBackends}; records its release."""

    backends: FakeBackends
    service: str
    host: str
    port: int
    may_reconnect: bool = True
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.backends._proxied[self.service] -= 1
            self.backends.changed([self.service])

    def take_connection(self) -> None:
        """A fake backend is never connected to in advance."""
        return None

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        if not self.may_reconnect:
            return fail(ServiceUnavailable(f"could not connect to service {self.service!r}"))
        self.backends.reconnects.append(self.service)
        config = self.backends.service_config(self.service)
        if not config.restart_on_connection_failure:
            return fail(ServiceUnavailable(f"could not connect to service {self.service!r}"))

        def last_chance(lease: ILease) -> ILease:
            assert isinstance(lease, FakeLease)
            lease.may_reconnect = False
            return lease

        return self.backends.acquire(self.service).addCallback(last_chance)


@implementer(IBackends)
@define(eq=False)
class FakeBackends:
    """
    An C{IBackends} whose services start only when the test says so.

    C{acquire} of a running service fires at once; otherwise the Deferred
    waits in C{pending[name]} until the test calls L{finish_start} or
    L{fail_start}.  C{backend_addresses} maps a service to the (host, port)
    its leases carry.  Observers are told of each change at once.
    """

    config: Config
    started_at: float = 1_700_000_000.0
    states: dict[str, ServiceState] = field(factory=dict)
    pending: dict[str, list[Deferred[ILease]]] = field(factory=dict)
    backend_addresses: dict[str, tuple[str, int]] = field(factory=dict)
    observers: list[IStatusObserver] = field(factory=list)
    stop_calls: list[tuple[str, bool]] = field(factory=list)
    reconnects: list[str] = field(factory=list)
    pending_reload: dict[str, str] = field(factory=dict)  # what a reload left to do
    last_failures: dict[str, StartFailure] = field(factory=dict)  # as /status shows them
    _proxied: dict[str, int] = field(factory=dict)
    _queued: dict[str, int] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for service in self.config.services:
            self.states.setdefault(service.name, ServiceState.STOPPED)
            self.pending.setdefault(service.name, [])
            self._proxied.setdefault(service.name, 0)
            self.backend_addresses.setdefault(
                service.name, ("127.0.0.1", service.proxy_target_port)
            )

    def service_config(self, service: str) -> ServiceConfig:
        """The config of C{service}; raises L{UnknownService}."""
        for config in self.config.services:
            if config.name == service:
                return config
        raise UnknownService(service)

    def resource_config(self, resource: str) -> ResourceConfig:
        """The config of C{resource}; raises C{KeyError}."""
        for config in self.config.resources:
            if config.name == resource:
                return config
        raise KeyError(resource)

    def _lease(self, service: str) -> FakeLease:
        host, port = self.backend_addresses[service]
        self._proxied[service] += 1
        self.changed([service])
        return FakeLease(self, service, host, port)

    def acquire(self, service: str) -> Deferred[ILease]:
        try:
            self.service_config(service)
        except UnknownService as e:
            return fail(e)
        if self.states[service] == ServiceState.RUNNING:
            return succeed(self._lease(service))
        waiters = self.pending[service]

        def cancel(d: Deferred[ILease]) -> None:
            waiters.remove(d)
            self.changed([service])

        d: Deferred[ILease] = Deferred(cancel)
        waiters.append(d)
        self.changed([service])
        return d

    def finish_start(self, service: str) -> None:
        """The start of C{service} succeeded: serve everyone waiting."""
        self.states[service] = ServiceState.RUNNING
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.callback(self._lease(service))
        self.changed([service])

    def fail_start(
        self, service: str, message: str = "start failed", error: ServiceUnavailable | None = None
    ) -> None:
        """The start of C{service} failed: fail everyone waiting (with C{error}, if given)."""
        self.states[service] = ServiceState.STOPPED
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.errback(error or ServiceUnavailable(message))
        self.changed([service])

    def start(self, service: str) -> Deferred[None]:
        d = self.acquire(service)

        def done(lease: ILease) -> None:
            lease.release()

        return d.addCallback(done)

    def stop(self, service: str, force: bool) -> Deferred[None]:
        try:
            self.service_config(service)
        except UnknownService as e:
            return fail(e)
        self.stop_calls.append((service, force))
        if self._proxied[service] and not force:
            return fail(ServiceBusy(service))
        self.fail_start(service, f"service {service!r} was stopped")
        return succeed(None)

    def service_status(self, service: str) -> ServiceStatus:
        s = self.service_config(service)
        return ServiceStatus(
            name=s.name,
            listen_port=s.listen_port,
            status=self.states[s.name],
            waiting_connections=len(self.pending[s.name]),
            proxied_connections=self._proxied[s.name],
            last_used=None,
            service_url=s.service_url,
            resource_requirements=dict(s.resource_requirements),
            openai_models=s.openai_api_models,
            pid=None,
            queued_connections=self._queued.get(s.name, 0),
            pending_reload=self.pending_reload.get(s.name),
            last_failure=self.last_failures.get(s.name),
            starts=0,
            failed_starts=0,
            evictions=0,
        )

    def resource_status(self, resource: str) -> ResourceStatus:
        r = self.resource_config(resource)
        usage = {
            s.name: s.resource_requirements[r.name]
            for s in self.config.services
            if r.name in s.resource_requirements and self.states[s.name] == ServiceState.RUNNING
        }
        in_use = sum(usage.values())
        return ResourceStatus(
            name=r.name,
            total=r.amount,
            measured=None,
            reserved_by_starting_services=0,
            in_use=in_use,
            free=None if r.amount is None else r.amount - in_use,
            usage_by_service=usage,
            available=None if r.amount is None else r.amount - in_use,
        )

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.started_at,
            tuple(self.service_status(s.name) for s in self.config.services),
            tuple(self.resource_status(r.name) for r in self.config.resources),
        )

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        self.observers.append(observer)

        def unsubscribe() -> None:
            if observer in self.observers:
                self.observers.remove(observer)

        return unsubscribe

    def queued(self, service: str, delta: int) -> None:
        self.service_config(service)  # UnknownService
        self._queued[service] = self._queued.get(service, 0) + delta
        self.changed([service])

    def changed(self, services: Iterable[str] | None = None) -> None:
        """
        Tell every observer that C{services} (default: all of them) and the
        resources they need changed.
        """
        configs = [s for s in self.config.services if services is None or s.name in set(services)]
        change = StatusChange(
            frozenset(s.name for s in configs),
            frozenset(r for s in configs for r in s.resource_requirements),
        )
        for observer in list(self.observers):
            observer.status_changed(change)

    def set_state(self, service: str, state: ServiceState) -> None:
        """Put C{service} in C{state} and tell the observers."""
        self.states[service] = state
        self.changed([service])


@define(eq=False)
class ScriptedBackends(FakeBackends):
    """
    L{FakeBackends} whose statuses the test can amend: C{service_changes[name]}
    and C{resource_changes[name]} are fields to replace (last_used, counters...).
    """

    service_changes: dict[str, dict[str, Any]] = field(factory=dict)
    resource_changes: dict[str, dict[str, Any]] = field(factory=dict)

    def service_status(self, service: str) -> ServiceStatus:
        return evolve(super().service_status(service), **self.service_changes.get(service, {}))

    def resource_status(self, resource: str) -> ResourceStatus:
        return evolve(super().resource_status(resource), **self.resource_changes.get(resource, {}))
