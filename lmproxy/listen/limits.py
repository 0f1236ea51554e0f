"""
How many requests of one service the OpenAI port forwards at once
(C{MaxConcurrentRequests}), and how many may wait for a turn
(C{MaxQueuedRequests}); the same turns limit the client connections of a
service's own TCP port (C{MaxConnections}, in L{lmproxy.listen.tcp}: there,
a turn lasts as long as the proxied connection, and any number may wait).

A request takes a L{Turn} before it asks for its service's backend, and
gives it back once its answer is over.  A request that finds every turn
taken waits, first come first served; one that finds the queue full too is
refused (the port answers 429).  A waiting request whose client leaves
leaves the queue at once.  A turn counts from before the service runs, so
requests that wait for a start count too: a model server that serves one
request at a time is never sent two.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from lmproxy.config import Config
from lmproxy.interfaces import IBackends

_T = TypeVar("_T")


class QueueFull(Exception):
    """Every turn is taken, and as many requests as may wait are waiting."""


class Turn:
    """One request's turn; L{done} gives it back (idempotent)."""

    def __init__(self, limit: RequestLimit) -> None:
        self._limit: RequestLimit | None = limit

    def done(self) -> None:
        """The request's answer is over: the next waiting request goes."""
        limit, self._limit = self._limit, None
        if limit is not None:
            limit._give_back()


class RequestLimit:
    """
    The turns of one service's requests.

    @ivar concurrent: requests forwarded at once, at most.
    @ivar queued: requests that may wait for a turn (C{None}: any number).
    @ivar wait: how long one may wait for its turn (C{None}: as long as it
        takes; then its Deferred fails with L{QueueFull}), on C{clock}.
    """

    def __init__(
        self,
        concurrent: int,
        queued: int | None,
        clock: IReactorTime | None = None,
        wait: float | None = None,
        notify: Callable[[int], object] | None = None,
    ) -> None:
        """
        @param notify: told C{+1} when a request begins to wait for a turn,
            C{-1} when it stops (its turn came, it left, it waited too long):
            C{IBackends.queued} of its service.
        """
        self.concurrent = concurrent
        self.queued = queued
        self.wait = wait
        self._clock = clock
        self._notify = notify
        self.taken = 0
        self._waiting: deque[Deferred[Turn]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn now."""
        return len(self._waiting)

    def take(self) -> Deferred[Turn]:
        """
        A turn, at once when one is free, else when one comes back.  Cancel
        the Deferred to leave the queue.

        @raise QueueFull: no turn is free and the queue is full.
        """
        if self.taken < self.concurrent:
            self.taken += 1
            return succeed(Turn(self))
        if self.queued is not None and len(self._waiting) >= self.queued:
            raise QueueFull(
                f"{self.taken} requests are being answered (MaxConcurrentRequests) and"
                f" {len(self._waiting)} are waiting (MaxQueuedRequests)"
            )
        waiting: Deferred[Turn] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        if self._notify is not None:
            self._notify(1)
            waiting.addBoth(self._stopped_waiting)
        if self._clock is not None and self.wait is not None:
            waiting.addTimeout(self.wait, self._clock, onTimeoutCancel=self._too_long)
        return waiting

    def _stopped_waiting(self, result: _T) -> _T:
        assert self._notify is not None
        self._notify(-1)
        return result

    def _too_long(self, result: object, timeout: float) -> Failure:
        """A wait timed out (it left the queue): say so as a L{QueueFull}."""
        return Failure(QueueFull(f"it waited {timeout:g} s for a turn (MaxConcurrentRequests)"))

    def resize(self, concurrent: int, queued: int | None, wait: float | None = None) -> None:
        """
        New bounds (a reload): turns freed by a larger C{concurrent} go to the
        waiting requests in order at once; with a smaller one, the requests
        over it finish and their turns are not passed on until under it.
        Requests waiting already stay in the queue even over a smaller C{queued}.
        """
        self.concurrent, self.queued, self.wait = concurrent, queued, wait
        while self._waiting and self.taken < self.concurrent:
            self.taken += 1
            self._waiting.popleft().callback(Turn(self))

    def _give_back(self) -> None:
        if self.taken > self.concurrent:  # resized smaller: this turn ends
            self.taken -= 1
            return
        if self._waiting:
            self._waiting.popleft().callback(Turn(self))  # the turn passes on
        else:
            self.taken -= 1


def request_limits(
    config: Config, clock: IReactorTime, backends: IBackends
) -> dict[str, RequestLimit]:
    """
    The limit of each service of C{config} that has C{MaxConcurrentRequests};
    a request waits for its turn for the config's max wait at most, and
    C{backends} is told of each wait.
    """
    return {
        service.name: RequestLimit(
            service.max_concurrent_requests,
            service.max_queued_requests,
            clock,
            config.max_wait,
            partial(backends.queued, service.name),
        )
        for service in config.services
        if service.max_concurrent_requests is not None
    }
