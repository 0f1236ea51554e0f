"""
Status publishing: tell observers (the live dashboard, metrics) what changed.

A change is named, not described: observers hear which services and resources
changed, all the changes of one reactor turn in one call, and ask the
supervisor for the new values of the ones they care about.  A change of a
connection count therefore costs a set insertion, and a snapshot of
everything is built only when someone asks for one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import methodcaller

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lmproxy.interfaces import IStatusObserver, StatusChange
from lmproxy.logs import log_observer
from lmproxy.timers import Timer


class StatusPublisher:
    """
    The observers of one supervisor, and what changed since they were last told.

    An observer that raises is logged; the others are still told.
    """

    log = Logger(observer=log_observer)

    def __init__(self, clock: IReactorTime) -> None:
        self._observers: list[IStatusObserver] = []
        self._services: set[str] = set()
        self._resources: set[str] = set()
        self._flush = Timer(clock)

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        """Tell C{observer} about changes; call the result to unsubscribe."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def service_changed(self, service: str, resources: Iterable[str] = ()) -> None:
        """C{service} changed, and with it what it holds or waits for of C{resources}."""
        if self._observers:
            self._services.add(service)
            self._resources.update(resources)
            self._soon()

    def resource_changed(self, resource: str) -> None:
        """C{resource} changed (a new measurement)."""
        if self._observers:
            self._resources.add(resource)
            self._soon()

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        """A start attempt ended: told at once."""
        self._tell(methodcaller("start_finished", service, seconds, succeeded))

    def service_evicted(self, service: str) -> None:
        """C{service} is being stopped to free resources: told at once."""
        self._tell(methodcaller("service_evicted", service))

    def _soon(self) -> None:
        if not self._flush.pending:
            self._flush.arm(0, self._publish)

    def _publish(self) -> None:
        change = StatusChange(frozenset(self._services), frozenset(self._resources))
        self._services.clear()
        self._resources.clear()
        self._tell(methodcaller("status_changed", change))

    def _tell(self, notice: methodcaller) -> None:
        for observer in list(self._observers):
            try:
                notice(observer)
            except Exception:
                self.log.failure("status observer {observer} failed", observer=observer)
