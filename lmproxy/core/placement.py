"""
Placement: for a service first in line for its resources, start it if they
are free, otherwise stop the idle services whose resources together cover
what is missing: starts that nobody waits for any more first, then running
services, least recently used first; when no such set exists, stop nothing and
let it wait.  A service with a lease (a proxied client) is never stopped to
make room, neither is one that starts for a waiting client, and a pinned
service never is.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from lmproxy.core.lifecycle import ServiceLifecycle
from lmproxy.core.measured import Measurements
from lmproxy.core.resources import Ledger, plan_eviction
from lmproxy.core.states import RUNNING, STOPPING
from lmproxy.core.status import StatusPublisher
from lmproxy.logs import amounts_text, log_observer


class Placement:
    """Where the supervisor's scheduling pass decides about one service."""

    log = Logger(observer=log_observer)

    def __init__(
        self,
        ledger: Ledger,
        measurements: Measurements,
        publisher: StatusPublisher,
        lifecycles: Mapping[str, ServiceLifecycle],
    ) -> None:
        self._ledger = ledger
        self._measurements = measurements
        self._publisher = publisher
        self._lifecycles = lifecycles  # the supervisor's, which a reload changes
        self._reported: set[str] = set()  # "waiting for resources" is logged once per wait

    def waiting(self, lc: ServiceLifecycle) -> None:
        """C{lc} began to wait for resources."""
        self._reported.discard(lc.name)

    def place(self, lc: ServiceLifecycle) -> bool:
        """Start C{lc} if it fits now, else work towards it; True if started."""
        requirements = lc.config.resource_requirements
        missing: dict[str, int] | None = self._ledger.static_shortfall(requirements)
        if not missing:
            # Static resources fit: only now is it worth running a CheckCommand.
            missing = self._measurements.shortfall(requirements)
            if missing is None:
                return False
        if not missing:
            lc.start()
            return True
        self._make_room(lc, missing)
        return False

    def _make_room(self, lc: ServiceLifecycle, missing: dict[str, int]) -> None:
        """Evict the idle services that together free C{missing}, if any set does."""
        lifecycles = self._lifecycles.values()
        stopping = [o.name for o in lifecycles if o.state is STOPPING]
        missing = self._ledger.still_missing(missing, stopping)  # room coming already
        if not missing:
            return
        # A start nobody waits for has served no one yet: it goes first.
        idle = sorted(
            (o for o in lifecycles if o.idle and not o.config.pinned),
            key=lambda o: (o.state is RUNNING, o.last_used or 0.0),
        )
        victims = plan_eviction(missing, [(o.name, self._ledger.holding(o.name)) for o in idle])
        if victims is None:
            if lc.name not in self._reported:
                self._reported.add(lc.name)
                self.log.info(
                    "{service}: waiting for resources: {missing} more needed, held by "
                    "services in use or pinned (see /status)",
                    service=lc.name,
                    missing=amounts_text(missing),
                )
            self._measurements.recheck_later(r for r in missing if self._ledger.is_measured(r))
            return
        for name in victims:
            self.log.info(
                "{victim}: stopping it to free {missing} for {service}",
                victim=name,
                missing=amounts_text(missing),
                service=lc.name,
            )
            self._publisher.service_evicted(name)
            self._lifecycles[name].evict(f"evicted for {lc.name}")
