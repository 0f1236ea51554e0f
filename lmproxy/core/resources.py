"""
The resource ledger: who holds how much of each resource, what is free, and
which idle services to stop to make room.  Pure: no reactor, no I/O.

A resource is either *static* (its C{Amount} is the whole supply and lmproxy
does the accounting) or *measured* (a C{CheckCommand} reports what is free
right now; lmproxy subtracts only what starting services have reserved, since
running ones already show up in the measurement).  What a service may take
now is L{Ledger.available}; L{Ledger.status} reports upstream's figures too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from attrs import define, field

from lmproxy.config import ResourceConfig
from lmproxy.interfaces import ResourceStatus


@define
class _Holding:
    amounts: Mapping[str, int]
    starting: bool


@define
class Ledger:
    """What each service holds of each resource."""

    resources: Mapping[str, ResourceConfig]
    measured: dict[str, int | None] = field(factory=dict)
    _holdings: dict[str, _Holding] = field(factory=dict)

    @classmethod
    def from_config(cls, resources: Iterable[ResourceConfig]) -> Ledger:
        return cls({r.name: r for r in resources})

    def is_measured(self, resource: str) -> bool:
        return self.resources[resource].check_command is not None

    def hold(self, service: str, amounts: Mapping[str, int]) -> None:
        """Reserve C{amounts} for C{service}, which is about to start."""
        self._holdings[service] = _Holding(dict(amounts), starting=True)

    def rehold(self, service: str, amounts: Mapping[str, int]) -> None:
        """C{service}'s requirements were reloaded: it holds C{amounts} instead, if it holds."""
        holding = self._holdings.get(service)
        if holding is not None:
            holding.amounts = dict(amounts)

    def reconfigure(self, resources: Iterable[ResourceConfig]) -> set[str]:
        """
        A reloaded config's resources.  Holdings stay (a total that shrank
        below them leaves nothing free, it stops nobody).

        @return: the names whose measurement no longer holds: gone, or with
            another C{CheckCommand}.
        """
        old, self.resources = self.resources, {r.name: r for r in resources}
        stale = {
            name
            for name, r in old.items()
            if name not in self.resources or self.resources[name].check_command != r.check_command
        }
        for name in stale:
            self.measured.pop(name, None)
        return stale

    def mark_running(self, service: str) -> None:
        """C{service} finished starting: its reservation becomes use."""
        holding = self._holdings.get(service)
        if holding is not None:
            holding.starting = False

    def release(self, service: str) -> None:
        """C{service} is gone: it holds nothing any more."""
        self._holdings.pop(service, None)

    def holding(self, service: str) -> Mapping[str, int]:
        holding = self._holdings.get(service)
        return holding.amounts if holding is not None else {}

    def usage_by_service(self, resource: str) -> dict[str, int]:
        return {
            service: h.amounts[resource]
            for service, h in self._holdings.items()
            if resource in h.amounts
        }

    def reserved_by_starting(self, resource: str) -> int:
        return sum(h.amounts.get(resource, 0) for h in self._holdings.values() if h.starting)

    def in_use(self, resource: str) -> int:
        """What starting and running services hold (upstream's C{in_use})."""
        return sum(h.amounts.get(resource, 0) for h in self._holdings.values())

    def free(self, resource: str) -> int | None:
        """
        Upstream's C{free}: the last measurement of a measured resource (None
        while it has none), the C{Amount} less L{in_use} of a static one.
        """
        if self.is_measured(resource):
            return self.measured.get(resource)
        amount = self.resources[resource].amount
        assert amount is not None, "a static resource always has an Amount"
        return amount - self.in_use(resource)

    def available(self, resource: str) -> int | None:
        """
        What a new service could take now: L{free}, less what starting
        services reserved of a measured one (their use does not show in the
        measurement yet); None while a measured resource has no value.
        """
        free = self.free(resource)
        if free is None or not self.is_measured(resource):
            return free
        return free - self.reserved_by_starting(resource)

    def status(
        self, resource: str, waiting: Iterable[tuple[str, Mapping[str, int]]] = ()
    ) -> ResourceStatus:
        """
        C{resource} as C{/status} shows it; C{waiting} are the services waiting
        for resources, with their requirements, which count in its usage too.
        """
        usage = self.usage_by_service(resource)
        for service, requirements in waiting:
            if resource in requirements:
                usage.setdefault(service, requirements[resource])
        return ResourceStatus(
            name=resource,
            total=self.resources[resource].amount,
            measured=self.measured.get(resource) if self.is_measured(resource) else None,
            reserved_by_starting_services=self.reserved_by_starting(resource),
            in_use=self.in_use(resource),
            free=self.free(resource),
            usage_by_service=usage,
            available=self.available(resource),
        )

    def static_shortfall(self, requirements: Mapping[str, int]) -> dict[str, int]:
        """What is missing of the static resources C{requirements} name."""
        return self.shortfall(requirements, [r for r in requirements if not self.is_measured(r)])

    def still_missing(self, missing: Mapping[str, int], stopping: Iterable[str]) -> dict[str, int]:
        """C{missing}, less what the services being stopped (C{stopping}) hold."""
        left = dict(missing)
        for service in stopping:
            for resource, amount in self.holding(service).items():
                if resource in left:
                    left[resource] -= amount
        return {r: m for r, m in left.items() if m > 0}

    def shortfall(
        self, requirements: Mapping[str, int], resources: Iterable[str]
    ) -> dict[str, int]:
        """
        How much of each of C{resources} is missing to satisfy
        C{requirements}; a measured resource without a value is missing whole.
        """
        missing = {}
        for resource in resources:
            need = requirements.get(resource, 0)
            if need <= 0:
                continue
            free = self.available(resource)
            available = 0 if free is None else free
            if need > available:
                missing[resource] = need - available
        return missing


def plan_eviction(
    missing: Mapping[str, int],
    candidates: Sequence[tuple[str, Mapping[str, int]]],
) -> list[str] | None:
    """
    Choose idle services to stop so that together they free at least
    C{missing[r]} of every resource C{r}.

    C{candidates} are (service, amounts it holds), least recently used first.
    Services are taken in that order, only when they free something still
    missing; then any taken service that turns out not to be needed is put back,
    most recently used first.  Returns the victims, least recently used first,
    or None when even all candidates together would not free enough (then
    nothing should be stopped).
    """
    remaining = {r: m for r, m in missing.items() if m > 0}
    taken: list[tuple[str, Mapping[str, int]]] = []
    for name, amounts in candidates:
        if not remaining:
            break
        if any(amounts.get(r, 0) > 0 for r in remaining):
            taken.append((name, amounts))
            for r in list(remaining):
                remaining[r] -= amounts.get(r, 0)
                if remaining[r] <= 0:
                    del remaining[r]
    if remaining:
        return None
    for victim in reversed(list(taken)):
        rest = [t for t in taken if t is not victim]
        if _covers(missing, rest):
            taken = rest
    return [name for name, _ in taken]


def _covers(missing: Mapping[str, int], chosen: Sequence[tuple[str, Mapping[str, int]]]) -> bool:
    return all(sum(amounts.get(r, 0) for _, amounts in chosen) >= m for r, m in missing.items())
