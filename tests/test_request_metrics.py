"""
Tests for L{lmproxy.requeststats} and the OpenAI port's request metrics on
C{/metrics}: counted by both of the port's paths (the hot path and the
twisted.web routes, over L{tests.test_openai.Wire}), shown by
L{lmproxy.manage.metrics.Metrics}, and checked by C{promtool} where it is
installed.
"""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.interfaces import ServiceState
from lmproxy.manage.metrics import Metrics
from lmproxy.requeststats import CLIENT_LEFT, RequestStats, RequestTally
from tests.test_front import CHAT, OK, post
from tests.test_openai import RecordingBackends, Wire


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode("utf-8"))
        for sample in family.samples
    }


class TallyTests(SynchronousTestCase):
    def test_each_step_counts_once(self) -> None:
        stats = RequestStats(["chat"])
        requests = stats.of("chat")
        tally = RequestTally(requests, "llama-3", 10.0)
        self.assertEqual((requests.waiting, requests.in_flight), (1, 0))
        tally.leased(13.0)
        tally.leased(14.0)
        self.assertEqual((requests.waiting, requests.in_flight), (0, 1))
        self.assertEqual((sum(requests.wait.counts), requests.wait.sum), (1, 3.0))
        tally.first_byte(13.5)
        tally.first_byte(20.0)
        self.assertEqual(requests.first_byte.sum, 3.5)
        tally.done(200)
        tally.done(CLIENT_LEFT)
        self.assertEqual((requests.waiting, requests.in_flight), (0, 0))
        self.assertEqual(requests.answered, {("llama-3", 200): 1})

    def test_done_while_waiting(self) -> None:
        requests = RequestStats(["chat"]).of("chat")
        RequestTally(requests, "llama-3", 0.0).done(CLIENT_LEFT)
        self.assertEqual((requests.waiting, requests.answered), (0, {("llama-3", 499): 1}))


class PortTests(SynchronousTestCase):
    """Both paths of the OpenAI port count their requests; /metrics shows them."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.wire = Wire(self.backends)
        self.stats = self.wire.api.stats
        self.metrics = Metrics(self.backends, requests=self.stats)

    def value(self, name: str, **labels: str) -> float:
        return scrape(self.metrics)[(name, tuple(sorted(labels.items())))]

    def test_series_from_the_start(self) -> None:
        """Every service on the port has its series before any request."""
        samples = scrape(self.metrics)
        for service in ("chat", "embed"):
            labels = (("service", service),)
            self.assertEqual(samples[("lmproxy_openai_requests_waiting", labels)], 0)
            self.assertEqual(samples[("lmproxy_openai_request_wait_seconds_count", labels)], 0)
            self.assertEqual(
                samples[("lmproxy_openai_time_to_first_byte_seconds_count", labels)], 0
            )
        self.assertNotIn(("lmproxy_openai_requests_waiting", (("service", "tcp-only"),)), samples)

    def test_hot_path(self) -> None:
        """A request that waits for a start, then is forwarded and answered."""
        self.wire.channel.dataReceived(post())
        self.assertEqual(self.value("lmproxy_openai_requests_waiting", service="chat"), 1)
        self.wire.reactor.advance(3)
        self.backends.finish_start("chat")
        self.assertEqual(self.value("lmproxy_openai_requests_waiting", service="chat"), 0)
        self.assertEqual(self.value("lmproxy_openai_requests_in_flight", service="chat"), 1)
        self.wire.reactor.advance(0.5)
        self.wire.backend()[0].dataReceived(OK)
        self.assertEqual(self.value("lmproxy_openai_requests_in_flight", service="chat"), 0)
        self.assertEqual(
            self.value(
                "lmproxy_openai_requests_total", service="chat", model="llama-3", code="200"
            ),
            1,
        )
        # 3 s waited: in the bucket up to 5 s, not in the one up to 2 s.
        wait = "lmproxy_openai_request_wait_seconds_bucket"
        self.assertEqual(self.value(wait, service="chat", le="2.0"), 0)
        self.assertEqual(self.value(wait, service="chat", le="5.0"), 1)
        self.assertEqual(self.value(wait, service="chat", le="+Inf"), 1)
        self.assertEqual(
            self.value("lmproxy_openai_time_to_first_byte_seconds_sum", service="chat"), 3.5
        )

    def test_client_left(self) -> None:
        self.wire.channel.dataReceived(post())
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.value("lmproxy_openai_requests_waiting", service="chat"), 0)
        self.assertEqual(
            self.value(
                "lmproxy_openai_requests_total", service="chat", model="llama-3", code="499"
            ),
            1,
        )

    def test_twisted_web_path(self) -> None:
        """A chunked request goes through twisted.web's route, and is counted the same."""
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
        )
        self.assertEqual(self.value("lmproxy_openai_requests_in_flight", service="chat"), 1)
        self.wire.backend()[0].dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(
            self.value(
                "lmproxy_openai_requests_total", service="chat", model="llama-3", code="503"
            ),
            1,
        )
        self.assertEqual(self.value("lmproxy_openai_request_wait_seconds_count", service="chat"), 1)

    def test_promtool(self) -> None:
        """C{promtool check metrics} finds nothing wrong with any name (where it is installed)."""
        promtool = shutil.which("promtool")
        if promtool is None:
            raise self.skipTest("promtool is not installed (Debian: apt-get install prometheus)")
        self.wire.channel.dataReceived(post())
        self.backends.finish_start("chat")
        # An answer cut short: lmproxy_openai_responses_cut_total has a sample too.
        backend = self.wire.backend()[0]
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend.connectionLost(Failure(ConnectionLost()))
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=self.metrics.render(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((checked.returncode, checked.stdout, checked.stderr), (0, b"", b""))
