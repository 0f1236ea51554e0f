"""
Fakes for lmproxy's tests: an in-memory ``IBackends`` that the test drives by
hand.  No production module imports this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from lmproxy.config import Config
from lmproxy.interfaces import (
    RUNNING,
    STOPPED,
    IBackends,
    ILease,
    IStatusObserver,
    ResourceStatus,
    ServiceBusy,
    ServiceStatus,
    ServiceUnavailable,
    Snapshot,
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
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.backends._proxied[self.service] -= 1
            self.backends.changed()

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        return fail(ServiceUnavailable(f"could not connect to service {self.service!r}"))


@implementer(IBackends)
@define(eq=False)
class FakeBackends:
    """
    An ``IBackends`` whose services start only when the test says so.

    ``acquire`` of a running service fires at once; otherwise the Deferred
    waits in ``pending[name]`` until the test calls L{finish_start} or
    L{fail_start}.  ``backend_addresses`` maps a service to the (host, port)
    its leases carry.
    """

    config: Config
    started_at: float = 1_700_000_000.0
    states: dict[str, str] = field(factory=dict)
    pending: dict[str, list[Deferred[ILease]]] = field(factory=dict)
    backend_addresses: dict[str, tuple[str, int]] = field(factory=dict)
    observers: list[IStatusObserver] = field(factory=list)
    stop_calls: list[tuple[str, bool]] = field(factory=list)
    _proxied: dict[str, int] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for service in self.config.services:
            self.states.setdefault(service.name, STOPPED)
            self.pending.setdefault(service.name, [])
            self._proxied.setdefault(service.name, 0)
            self.backend_addresses.setdefault(
                service.name, ("127.0.0.1", service.proxy_target_port)
            )

    def _check(self, service: str) -> None:
        if service not in self.states:
            raise UnknownService(service)

    def _lease(self, service: str) -> FakeLease:
        host, port = self.backend_addresses[service]
        self._proxied[service] += 1
        self.changed()
        return FakeLease(self, service, host, port)

    def acquire(self, service: str) -> Deferred[ILease]:
        try:
            self._check(service)
        except UnknownService as e:
            return fail(e)
        if self.states[service] == RUNNING:
            return succeed(self._lease(service))
        waiters = self.pending[service]

        def cancel(d: Deferred[ILease]) -> None:
            waiters.remove(d)
            self.changed()

        d: Deferred[ILease] = Deferred(cancel)
        waiters.append(d)
        self.changed()
        return d

    def finish_start(self, service: str) -> None:
        """The start of ``service`` succeeded: serve everyone waiting."""
        self.states[service] = RUNNING
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.callback(self._lease(service))
        self.changed()

    def fail_start(self, service: str, message: str = "start failed") -> None:
        """The start of ``service`` failed: fail everyone waiting."""
        self.states[service] = STOPPED
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.errback(ServiceUnavailable(message))
        self.changed()

    def start(self, service: str) -> Deferred[None]:
        d = self.acquire(service)

        def done(lease: ILease) -> None:
            lease.release()

        return d.addCallback(done)

    def stop(self, service: str, force: bool) -> Deferred[None]:
        try:
            self._check(service)
        except UnknownService as e:
            return fail(e)
        self.stop_calls.append((service, force))
        if self._proxied[service] and not force:
            return fail(ServiceBusy(service))
        self.states[service] = STOPPED
        self.changed()
        return succeed(None)

    def snapshot(self) -> Snapshot:
        services = tuple(
            ServiceStatus(
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
                starts=0,
                failed_starts=0,
                evictions=0,
            )
            for s in self.config.services
        )
        resources = []
        for r in self.config.resources:
            usage = {
                s.name: s.resource_requirements[r.name]
                for s in self.config.services
                if r.name in s.resource_requirements and self.states[s.name] == RUNNING
            }
            in_use = sum(usage.values())
            resources.append(
                ResourceStatus(
                    name=r.name,
                    total=r.amount,
                    measured=None,
                    reserved_by_starting_services=0,
                    in_use=in_use,
                    free=None if r.amount is None else r.amount - in_use,
                    usage_by_service=usage,
                )
            )
        return Snapshot(self.started_at, services, tuple(resources))

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def changed(self) -> None:
        """Tell every observer the current snapshot."""
        snapshot = self.snapshot()
        for observer in list(self.observers):
            observer.status_changed(snapshot)

    def set_state(self, service: str, state: str) -> None:
        """Put ``service`` in ``state`` and tell the observers."""
        self.states[service] = state
        self.changed()


def status_with(snapshot: Snapshot, name: str, **changes: Any) -> Snapshot:
    """``snapshot`` with the service ``name`` changed (a helper for view tests)."""
    services = tuple(evolve(s, **changes) if s.name == name else s for s in snapshot.services)
    return evolve(snapshot, services=services)
