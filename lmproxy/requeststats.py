"""
What the OpenAI port's requests did, per service: how many wait for their
service to run, how many are forwarded now, how long they waited and how
long until their first byte, how each was answered, and which answers their
backend cut short.

The OpenAI port counts (L{lmproxy.listen.leanforward},
L{lmproxy.listen.openai}); C{GET /metrics} shows it
(L{lmproxy.manage.metrics}).  Counting costs a few additions per request:
no lock, no label lookup, nothing built until a scrape reads it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
"""Seconds waited for a running backend: none when it runs, a start's when it does not."""

FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds from a request to the first byte of its answer, its wait included."""


class Histogram:
    """
    Observations counted by bucket, as Prometheus shows them.

    @ivar buckets: the buckets' upper bounds, increasing (C{+Inf} is implied).
    @ivar counts: the observations in each bucket (not cumulative), the last
        one over every bound.
    @ivar sum: the sum of the observations.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count C{value}."""
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value


class ServiceRequests:
    """
    The OpenAI requests of one service.

    @ivar queued: requests waiting for a turn (C{MaxConcurrentRequests}).
    @ivar waiting: requests waiting for the service to run.
    @ivar in_flight: requests forwarded to it, their answer not over.
    @ivar wait: how long requests waited for it to run.
    @ivar first_byte: how long until the first byte of their answers.
    @ivar answered: answers by C{(model, status code)}.
    @ivar cut: answers that their backend cut short, by model (counted in
        L{answered} too, by the code that was sent).
    """

    def __init__(self) -> None:
        self.queued = 0
        self.waiting = 0
        self.in_flight = 0
        self.wait = Histogram(WAIT_BUCKETS)
        self.first_byte = Histogram(FIRST_BYTE_BUCKETS)
        self.answered: dict[tuple[str, int], int] = {}
        self.cut: dict[str, int] = {}

    def answer(self, model: str, code: int) -> None:
        """A request for C{model} was answered with C{code}."""
        key = (model, code)
        self.answered[key] = self.answered.get(key, 0) + 1


class RequestStats:
    """The OpenAI requests of every service of the port."""

    def __init__(self, services: Iterable[str]) -> None:
        """
        @param services: the names of the services on the OpenAI port.
        """
        self.services = {name: ServiceRequests() for name in services}

    def of(self, service: str) -> ServiceRequests:
        """The requests of C{service} (one that was not named at first too)."""
        requests = self.services.get(service)
        if requests is None:
            requests = self.services[service] = ServiceRequests()
        return requests


class RequestTally:
    """
    One request in its service's counts: queued for a turn until L{turn}
    (with C{MaxConcurrentRequests}), waiting until L{leased}, then in flight
    until L{done}.  Each step counts once, whatever calls it again.
    """

    def __init__(
        self, requests: ServiceRequests, model: str, began: float, queued: bool = False
    ) -> None:
        """
        @param requests: its service's requests.
        @param model: the model it names.
        @param began: when it came.
        @param queued: whether it waits for a turn first.
        """
        self._requests = requests
        self._model = model
        self._began = began
        self._place = "queued" if queued else "waiting"  # then "in_flight", then "done"
        self._first_byte = False
        if queued:
            requests.queued += 1
        else:
            requests.waiting += 1

    def turn(self) -> None:
        """It has its turn: now it waits for its service to run."""
        if self._place == "queued":
            self._place = "waiting"
            self._requests.queued -= 1
            self._requests.waiting += 1

    def leased(self, now: float) -> None:
        """Its service runs and lent it a backend."""
        self.turn()
        if self._place == "waiting":
            self._place = "in_flight"
            self._requests.waiting -= 1
            self._requests.in_flight += 1
            self._requests.wait.observe(now - self._began)

    def first_byte(self, now: float) -> None:
        """The first byte of its answer goes out."""
        if not self._first_byte:
            self._first_byte = True
            self._requests.first_byte.observe(now - self._began)

    def done(self, code: int) -> None:
        """It was answered with C{code} (L{CLIENT_LEFT}: its client left first)."""
        if self._place == "done":
            return
        if self._place == "queued":
            self._requests.queued -= 1
        elif self._place == "waiting":
            self._requests.waiting -= 1
        else:
            self._requests.in_flight -= 1
        self._place = "done"
        self._requests.answer(self._model, code)

    def cut(self, code: int) -> None:
        """
        Its backend cut its answer short, which went out with C{code}: it is
        over (L{done}), and counted as cut unless it was over already.
        """
        if self._place != "done":
            requests = self._requests
            requests.cut[self._model] = requests.cut.get(self._model, 0) + 1
        self.done(code)


CLIENT_LEFT = 499
"""The code of a request whose client left before its answer (nginx's)."""
