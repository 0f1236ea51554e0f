"""
The clients waiting for one service to run, in arrival order.  While the
service waits for resources, each waiter has a deadline (the config's
C{MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds}); a start,
once begun, has its own timeout instead.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lmproxy.interfaces import ServiceUnavailable
from lmproxy.logs import log_observer
from lmproxy.timers import Timer

RETRY_AFTER_RESOURCES = 5.0
"""
When a client that gave up waiting for resources may ask again (its
C{Retry-After}): nothing tells when another service will be idle, so a
short wait, and then a whole new wait for resources.
"""


@define(eq=False)
class _Waiter:
    deferred: Deferred[None]
    deadline: Timer


class Waiters:
    """
    The waiting clients of the service C{name}.

    @param on_left: called after a waiter left, by cancelling its Deferred
        (the client went away) or at its deadline.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self, name: str, clock: IReactorTime, max_wait: float, on_left: Callable[[], None]
    ) -> None:
        self._name = name
        self._clock = clock
        self.max_wait = max_wait  # a reload may change it for later waits
        self._on_left = on_left
        self._waiters: list[_Waiter] = []

    def __len__(self) -> int:
        return len(self._waiters)

    def add(self, with_deadline: bool) -> Deferred[None]:
        """A new waiter: fires when the service runs, fails when it cannot."""

        def client_left(d: Deferred[None]) -> None:
            self._drop(waiter)

        waiter = _Waiter(Deferred(client_left), Timer(self._clock))
        self._waiters.append(waiter)
        if with_deadline:
            waiter.deadline.arm(self.max_wait, self._gave_up, waiter)
        return waiter.deferred

    def end_deadlines(self) -> None:
        """The service is starting: its waiters wait for the start, however long."""
        for waiter in self._waiters:
            waiter.deadline.cancel()

    def renew_deadlines(self) -> None:
        """It must wait for resources again (a restart): each waiter has its wait again."""
        for waiter in self._waiters:
            if not waiter.deadline.pending:
                waiter.deadline.arm(self.max_wait, self._gave_up, waiter)

    def serve(self) -> None:
        """The service runs: fire every waiter, in arrival order."""
        for waiter in self._take():
            waiter.deferred.callback(None)

    def fail(self, error: str | ServiceUnavailable) -> None:
        """The service will not run for them: fail every waiter with C{error}."""
        if isinstance(error, str):
            error = ServiceUnavailable(error)
        for waiter in self._take():
            waiter.deferred.errback(error)

    def _take(self) -> list[_Waiter]:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.deadline.cancel()
        return waiters

    def _drop(self, waiter: _Waiter) -> None:
        waiter.deadline.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        self._on_left()

    def _gave_up(self, waiter: _Waiter) -> None:
        self.log.warn(
            "{service}: a client gave up after waiting {seconds} s for resources",
            service=self._name,
            seconds=self.max_wait,
        )
        self._drop(waiter)
        waiter.deferred.errback(
            ServiceUnavailable(
                f"gave up waiting {self.max_wait:g} s for resources"
                f" to start service {self._name!r}",
                retry_after=RETRY_AFTER_RESOURCES,
            )
        )
