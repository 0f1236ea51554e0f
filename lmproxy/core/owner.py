"""
What a service's lifecycle (L{lmproxy.core.lifecycle}) tells its owner, the
scheduler of every service (L{lmproxy.core.supervisor}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lmproxy.interfaces import ServiceState

if TYPE_CHECKING:
    from lmproxy.core.lifecycle import ServiceLifecycle


class LifecycleOwner(Protocol):
    """What a lifecycle tells its owner, the scheduler of every service."""

    @property
    def shutting_down(self) -> bool:
        """True once lmproxy is stopping: no new clients, no new starts."""

    def transitioned(
        self, lifecycle: ServiceLifecycle, old: ServiceState, new: ServiceState
    ) -> None:
        """C{lifecycle} just moved from C{old} to C{new}."""

    def idle(self, lifecycle: ServiceLifecycle) -> None:
        """C{lifecycle} became L{ServiceLifecycle.idle}: it could be evicted now."""

    def changed(self, lifecycle: ServiceLifecycle) -> None:
        """Something C{lifecycle.status()} shows changed (a count, last used)."""

    def start_finished(self, lifecycle: ServiceLifecycle, seconds: float, ok: bool) -> None:
        """A start attempt of C{lifecycle} ended after C{seconds}."""

    def removed(self, lifecycle: ServiceLifecycle) -> None:
        """C{lifecycle}'s service, gone from the config, is stopped: forget it."""
