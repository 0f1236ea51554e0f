"""
Prometheus metrics for C{GET /metrics}, made with prometheus_client.

Gauges and counters are read from C{IBackends.snapshot()} at scrape time, so
they always agree with C{/status}; the start duration histogram is fed by
C{IStatusObserver.start_finished}, the one figure a snapshot cannot give.  The
registry belongs to L{Metrics}, never the process-wide default one, so several
apps (and tests) never share or clash over series.

Timestamps are POSIX seconds, as Prometheus wants them: a service's last use,
its last failed start, and the end of the back-off after it (compare with
C{time()} in PromQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from lmproxy.interfaces import (
    IBackends,
    IStatusObserver,
    ServiceState,
    ServiceStatus,
    Snapshot,
    StatusChange,
)
from lmproxy.requeststats import CLIENT_LEFT, RequestStats
from lmproxy.requeststats import Histogram as RequestHistogram

# Model servers take from a second (a small llama.cpp model) to many minutes.
START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class _SnapshotCollector(Collector):
    """Everything a snapshot tells, read at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot], clock: IReactorTime | None) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield GaugeMetricFamily(
            "lmproxy_start_time_seconds", "When lmproxy started (POSIX seconds).", snap.started_at
        )
        yield from self._services(snap)
        yield from self._resources(snap)

    def _services(self, snap: Snapshot) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=("service", *extra))

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=("service",))

        state = gauge("lmproxy_service_state", "1 for the state the service is in.", ("state",))
        waiting = gauge(
            "lmproxy_service_waiting_connections", "Clients waiting for the service to run."
        )
        proxied = gauge("lmproxy_service_proxied_connections", "Clients being proxied.")
        queued = gauge(
            "lmproxy_service_queued_connections",
            "Clients waiting for a turn (MaxConcurrentRequests, MaxConnections).",
        )
        pinned = gauge("lmproxy_service_pinned", "1 for a Pinned service: never evicted.")
        last_used = gauge(
            "lmproxy_service_last_used_timestamp_seconds", "When a client last used it."
        )
        last_failure = gauge(
            "lmproxy_service_last_failure_timestamp_seconds", "When its last start failed."
        )
        backoff_until = gauge(
            "lmproxy_service_backoff_until_timestamp_seconds",
            "When the back-off after its last failed start ends; no sample once it is over.",
        )
        starts = counter("lmproxy_service_starts", "Start attempts (failed ones included).")
        failed = counter(
            "lmproxy_service_failed_starts",
            "Start attempts that failed, counted in lmproxy_service_starts_total too.",
        )
        evictions = counter(
            "lmproxy_service_evictions", "Times it was stopped to free resources for another."
        )
        for s in snap.services:
            for name in ServiceState:
                state.add_metric([s.name, name], 1 if s.status == name else 0)
            waiting.add_metric([s.name], s.waiting_connections)
            proxied.add_metric([s.name], s.proxied_connections)
            queued.add_metric([s.name], s.queued_connections)
            pinned.add_metric([s.name], 1 if s.pinned else 0)
            if s.last_used is not None:
                last_used.add_metric([s.name], s.last_used)
            if s.last_failure is not None:
                last_failure.add_metric([s.name], s.last_failure.at)
            retry_at = self._backoff_until(s)
            if retry_at is not None:
                backoff_until.add_metric([s.name], retry_at)
            starts.add_metric([s.name], s.starts)
            failed.add_metric([s.name], s.failed_starts)
            evictions.add_metric([s.name], s.evictions)
        yield from (state, waiting, proxied, queued, pinned, last_used, last_failure, backoff_until)
        yield from (starts, failed, evictions)

    def _backoff_until(self, service: ServiceStatus) -> float | None:
        """When the back-off of C{service} ends; None when it has none or it is over."""
        failure = service.last_failure
        if failure is None or failure.retry_at is None:
            return None
        if self._clock is not None and failure.retry_at <= self._clock.seconds():
            return None
        return failure.retry_at

    def _resources(self, snap: Snapshot) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=("resource", *extra))

        total = gauge("lmproxy_resource_amount", "Configured Amount.")
        measured = gauge("lmproxy_resource_measured", "Last CheckCommand value.")
        reserved = gauge(
            "lmproxy_resource_reserved_by_starting_services", "Held by services still starting."
        )
        in_use = gauge("lmproxy_resource_in_use", "Held by starting and running services.")
        free = gauge(
            "lmproxy_resource_free", "Measured: the last measurement; static: total less in use."
        )
        available = gauge(
            "lmproxy_resource_available",
            "What a service could take now: free less what starting services reserved.",
        )
        usage = gauge(
            "lmproxy_resource_usage", "Held, or waited for, by one service.", ("service",)
        )
        for r in snap.resources:
            if r.total is not None:
                total.add_metric([r.name], r.total)
            if r.measured is not None:
                measured.add_metric([r.name], r.measured)
            reserved.add_metric([r.name], r.reserved_by_starting_services)
            in_use.add_metric([r.name], r.in_use)
            if r.free is not None:
                free.add_metric([r.name], r.free)
            if r.available is not None:
                available.add_metric([r.name], r.available)
            for service, amount in r.usage_by_service.items():
                usage.add_metric([r.name, service], amount)
        yield from (total, measured, reserved, in_use, free, available, usage)


class _RequestsCollector(Collector):
    """The OpenAI port's requests (L{RequestStats}), read at scrape time."""

    def __init__(self, stats: RequestStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        services = sorted(self._stats.services.items())
        answered = CounterMetricFamily(
            "lmproxy_openai_requests",
            "OpenAI port requests answered, by service, model and status code"
            f" ({CLIENT_LEFT}: the client left before the answer).",
            labels=("service", "model", "code"),
        )
        cut = CounterMetricFamily(
            "lmproxy_openai_responses_cut",
            "OpenAI port answers that their model server cut short (ended as errors),"
            " by service and model; counted in lmproxy_openai_requests_total too.",
            labels=("service", "model"),
        )
        queued = GaugeMetricFamily(
            "lmproxy_openai_requests_queued",
            "OpenAI port requests waiting for a turn (MaxConcurrentRequests).",
            labels=("service",),
        )
        waiting = GaugeMetricFamily(
            "lmproxy_openai_requests_waiting",
            "OpenAI port requests waiting for their service to run.",
            labels=("service",),
        )
        in_flight = GaugeMetricFamily(
            "lmproxy_openai_requests_in_flight",
            "OpenAI port requests forwarded, their answer not over.",
            labels=("service",),
        )
        wait = HistogramMetricFamily(
            "lmproxy_openai_request_wait_seconds",
            "How long OpenAI port requests waited for their service to run.",
            labels=("service",),
        )
        first_byte = HistogramMetricFamily(
            "lmproxy_openai_time_to_first_byte_seconds",
            "From an OpenAI port request to the first byte of its answer, the wait included.",
            labels=("service",),
        )
        for name, requests in services:
            for (model, code), count in sorted(requests.answered.items()):
                answered.add_metric([name, model, str(code)], count)
            for model, count in sorted(requests.cut.items()):
                cut.add_metric([name, model], count)
            queued.add_metric([name], requests.queued)
            waiting.add_metric([name], requests.waiting)
            in_flight.add_metric([name], requests.in_flight)
            for family, histogram in ((wait, requests.wait), (first_byte, requests.first_byte)):
                family.add_metric([name], _buckets(histogram), histogram.sum)
        yield from (answered, cut, queued, waiting, in_flight, wait, first_byte)


def _buckets(histogram: RequestHistogram) -> list[tuple[str, float]]:
    """The cumulative buckets of C{histogram}, as Prometheus shows them."""
    bounds = [floatToGoString(bound) for bound in histogram.buckets] + ["+Inf"]
    return list(zip(bounds, accumulate(histogram.counts), strict=True))


@implementer(IStatusObserver)
class Metrics:
    """lmproxy's metrics registry; subscribes to C{backends} for start durations."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        backends: IBackends,
        clock: IReactorTime | None = None,
        requests: RequestStats | None = None,
    ) -> None:
        """
        @param backends: what the metrics describe.
        @param requests: the OpenAI port's requests, if it counts them.
        @param clock: the time the supervisor's timestamps are read on: a
            back-off whose end has passed has no sample.  Without it, the end
            of a back-off is shown until the next start resets it (as
            C{/status} shows C{retry_at}).
        """
        self.registry = CollectorRegistry()
        self.registry.register(_SnapshotCollector(backends.snapshot, clock))
        if requests is not None:
            self.registry.register(_RequestsCollector(requests))
        self._start_duration = Histogram(
            "lmproxy_service_start_duration_seconds",
            "How long start attempts took, by result (succeeded or failed).",
            ("service", "result"),
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.unsubscribe = backends.subscribe(self)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)

    def status_changed(self, change: StatusChange) -> None:
        """Nothing to do: gauges are read from the snapshot at scrape time."""

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        result = "succeeded" if succeeded else "failed"
        self._start_duration.labels(service, result).observe(seconds)

    def service_evicted(self, service: str) -> None:
        """Nothing to do: the snapshot counts evictions."""
