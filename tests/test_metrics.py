"""
Tests for L{lmproxy.manage.metrics} and ``GET /metrics``: the text is parsed back
with prometheus_client's own parser.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet.task import Clock

from lmproxy.interfaces import ServiceState, StartFailure
from lmproxy.manage.api import ManagementApi
from lmproxy.manage.metrics import Metrics
from lmproxy.testing import ScriptedBackends
from tests.test_management import ALPHA, MARKUP, QWEN, ApiCase, make_config


class MetricsTests(ApiCase):
    """GET /metrics."""

    def scrape(self) -> dict[str, list[Sample]]:
        response, body = self.client.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        [content_type] = response.headers.getRawHeaders("content-type")
        self.assertTrue(content_type.startswith("text/plain; version="), content_type)
        return {
            family.name: family.samples
            for family in text_string_to_metric_families(body.decode("utf-8"))
        }

    def value(self, name: str, **labels: str) -> float:
        matches = [s.value for s in self.scrape()[name] if s.labels == labels]
        self.assertEqual(len(matches), 1, (name, labels))
        return matches[0]

    def test_service_state(self) -> None:
        self.backends.finish_start(ALPHA)
        samples = self.scrape()["lmproxy_service_state"]
        on = {(s.labels["service"], s.labels["state"]) for s in samples if s.value == 1}
        self.assertEqual(
            on, {(ALPHA, ServiceState.RUNNING), (QWEN, "stopped"), (MARKUP, "stopped")}
        )
        self.assertEqual(len(samples), 3 * 5)

    def test_connections(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.acquire(ALPHA)
        self.backends.acquire(QWEN)
        self.assertEqual(self.value("lmproxy_service_proxied_connections", service=ALPHA), 1)
        self.assertEqual(self.value("lmproxy_service_waiting_connections", service=QWEN), 1)
        self.assertEqual(self.value("lmproxy_service_waiting_connections", service=ALPHA), 0)

    def test_queued_and_pinned(self) -> None:
        self.backends.queued(QWEN, 1)
        self.backends.service_changes[ALPHA] = {"pinned": True}
        self.assertEqual(self.value("lmproxy_service_queued_connections", service=QWEN), 1)
        self.assertEqual(self.value("lmproxy_service_queued_connections", service=ALPHA), 0)
        self.assertEqual(self.value("lmproxy_service_pinned", service=ALPHA), 1)
        self.assertEqual(self.value("lmproxy_service_pinned", service=QWEN), 0)

    def test_counters_come_from_the_snapshot(self) -> None:
        self.backends.service_changes[ALPHA] = {"starts": 4, "failed_starts": 1, "evictions": 2}
        families = self.scrape()
        self.assertEqual(
            {
                s.name: s.value
                for s in families["lmproxy_service_starts"]
                if s.labels["service"] == ALPHA
            },
            {"lmproxy_service_starts_total": 4},
        )
        self.assertEqual(self.value("lmproxy_service_failed_starts", service=ALPHA), 1)
        self.assertEqual(self.value("lmproxy_service_evictions", service=ALPHA), 2)
        self.assertEqual(self.value("lmproxy_service_evictions", service=QWEN), 0)

    def test_last_used_and_start_time(self) -> None:
        self.backends.service_changes[ALPHA] = {"last_used": 1_800_000_000.5}
        self.assertEqual(
            self.value("lmproxy_service_last_used_timestamp_seconds", service=ALPHA),
            1_800_000_000.5,
        )
        samples = self.scrape()["lmproxy_service_last_used_timestamp_seconds"]
        self.assertEqual([s.labels["service"] for s in samples], [ALPHA])
        self.assertEqual(self.value("lmproxy_start_time_seconds"), self.backends.started_at)

    def test_last_failure_and_backoff(self) -> None:
        """The last failed start and the end of its back-off, as /status has them."""
        failure = StartFailure(1_800_000_000.25, "exited", ("CUDA error",), True, 1_800_000_002.25)
        self.backends.service_changes[ALPHA] = {"last_failure": failure}
        self.assertEqual(
            self.value("lmproxy_service_last_failure_timestamp_seconds", service=ALPHA),
            1_800_000_000.25,
        )
        self.assertEqual(
            self.value("lmproxy_service_backoff_until_timestamp_seconds", service=ALPHA),
            1_800_000_002.25,
        )
        families = self.scrape()
        for name in [
            "lmproxy_service_last_failure_timestamp_seconds",
            "lmproxy_service_backoff_until_timestamp_seconds",
        ]:
            self.assertEqual([s.labels["service"] for s in families[name]], [ALPHA], name)

    def test_backoff_over(self) -> None:
        """Reset (C{retry_at} None): the last failure stays, the back-off has no sample."""
        failure = StartFailure(1_800_000_000.0, "exited", (), False, None)
        self.backends.service_changes[ALPHA] = {"last_failure": failure}
        families = self.scrape()
        self.assertEqual(families["lmproxy_service_backoff_until_timestamp_seconds"], [])
        self.assertEqual(
            self.value("lmproxy_service_last_failure_timestamp_seconds", service=ALPHA),
            1_800_000_000.0,
        )

    def test_backoff_past_with_a_clock(self) -> None:
        """Given the clock, a back-off whose end has passed has no sample."""
        clock = Clock()
        clock.advance(1_800_000_010.0)
        failure = StartFailure(1_800_000_000.0, "exited", (), True, 1_800_000_020.0)
        self.backends.service_changes[ALPHA] = {"last_failure": failure}
        metrics = Metrics(self.backends, clock)
        name = "lmproxy_service_backoff_until_timestamp_seconds"
        self.assertEqual(metrics.registry.get_sample_value(name, {"service": ALPHA}), 1_800_000_020)
        clock.advance(10)
        self.assertIsNone(metrics.registry.get_sample_value(name, {"service": ALPHA}))
        self.assertEqual(
            metrics.registry.get_sample_value(
                "lmproxy_service_last_failure_timestamp_seconds", {"service": ALPHA}
            ),
            1_800_000_000,
        )

    def test_help_texts(self) -> None:
        """Starts count every attempt; failures are among them."""
        _, body = self.client.request("GET", "/metrics")
        text = body.decode("utf-8")
        self.assertIn(
            "# HELP lmproxy_service_starts_total Start attempts (failed ones included).", text
        )
        self.assertIn("counted in lmproxy_service_starts_total too", text)

    def test_start_duration_histogram(self) -> None:
        for observer in self.backends.observers:
            observer.start_finished(ALPHA, 3.0, True)
            observer.start_finished(ALPHA, 45.0, True)
            observer.start_finished(ALPHA, 0.2, False)
        samples = self.scrape()["lmproxy_service_start_duration_seconds"]

        def sample(suffix: str, result: str, **labels: str) -> float:
            [value] = [
                s.value
                for s in samples
                if s.name == "lmproxy_service_start_duration_seconds" + suffix
                and s.labels == {"service": ALPHA, "result": result, **labels}
            ]
            return value

        self.assertEqual(sample("_count", "succeeded"), 2)
        self.assertEqual(sample("_sum", "succeeded"), 48)
        self.assertEqual(sample("_bucket", "succeeded", le="5.0"), 1)
        self.assertEqual(sample("_bucket", "succeeded", le="60.0"), 2)
        self.assertEqual(sample("_count", "failed"), 1)

    def test_resources(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.resource_changes["RAM"] = {"measured": 30, "free": 26}
        self.assertEqual(self.value("lmproxy_resource_in_use", resource="VRAM"), 10)
        self.assertEqual(self.value("lmproxy_resource_free", resource="VRAM"), 14)
        self.assertEqual(self.value("lmproxy_resource_amount", resource="VRAM"), 24)
        self.assertEqual(self.value("lmproxy_resource_free", resource="RAM"), 26)
        self.assertEqual(self.value("lmproxy_resource_available", resource="VRAM"), 14)
        self.assertEqual(self.value("lmproxy_resource_measured", resource="RAM"), 30)
        self.assertEqual(self.value("lmproxy_resource_usage", resource="VRAM", service=ALPHA), 10)
        families = self.scrape()
        self.assertEqual(
            [s.labels["resource"] for s in families["lmproxy_resource_amount"]], ["VRAM"]
        )
        self.assertEqual(
            self.value("lmproxy_resource_reserved_by_starting_services", resource="VRAM"), 0
        )

    def test_label_values_are_escaped(self) -> None:
        # Names with quotes, backslashes and markup survive the round trip.
        families = self.scrape()
        names = {s.labels["service"] for s in families["lmproxy_service_state"]}
        self.assertEqual(names, {ALPHA, QWEN, MARKUP})

    def test_own_registry(self) -> None:
        """Two apps in one process (tests, mostly) never clash; nothing is global."""
        config = make_config()
        backends = ScriptedBackends(config)
        ManagementApi(backends, config, Clock())
        Metrics(backends)
        self.assertIsNone(REGISTRY.get_sample_value("lmproxy_start_time_seconds"))

    def test_unsubscribe(self) -> None:
        metrics = Metrics(self.backends)
        self.assertIn(metrics, self.backends.observers)
        metrics.unsubscribe()
        self.assertNotIn(metrics, self.backends.observers)
