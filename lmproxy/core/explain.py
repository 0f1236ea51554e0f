"""
Why a service waits for resources, as C{/status} shows it (L{WaitingFor}):
which resources it lacks, who holds them, and which of those will not be
stopped for it (pinned, in use) or are being stopped already.

Computed when asked, from the ledger and the lifecycles as they are: it is
never stale, and costs nothing while nobody looks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmproxy.core.lifecycle import ServiceLifecycle
from lmproxy.core.resources import Ledger
from lmproxy.core.states import STOPPING, WAITING
from lmproxy.interfaces import Shortage, WaitingFor


def waiting_for(
    lc: ServiceLifecycle,
    since: float,
    queue: Sequence[ServiceLifecycle],
    ledger: Ledger,
    lifecycles: Mapping[str, ServiceLifecycle],
) -> WaitingFor:
    """
    @param lc: a service waiting for resources.
    @param since: when it began to wait.
    @param queue: every service waiting for resources, in arrival order.
    @param ledger: who holds what.
    @param lifecycles: every service, by name.
    """
    needs = lc.config.resource_requirements
    behind = []
    for other in queue:
        if other is lc:
            break
        if other.state is WAITING and set(other.config.resource_requirements) & set(needs):
            behind.append(other.name)
    shortages = []
    for resource, needed in needs.items():
        available = ledger.available(resource)
        if needed <= 0 or (available is not None and needed <= available):
            continue
        held_by = [name for name in ledger.usage_by_service(resource) if name != lc.name]
        holders = [lifecycles[name] for name in held_by]
        shortages.append(
            Shortage(
                resource=resource,
                needed=needed,
                available=available,
                held_by=tuple(held_by),
                pinned=tuple(o.name for o in holders if o.config.pinned),
                in_use=tuple(o.name for o in holders if o.state is not STOPPING and not o.idle),
                stopping=tuple(o.name for o in holders if o.state is STOPPING),
            )
        )
    return WaitingFor(since=since, shortages=tuple(shortages), behind=tuple(behind))
