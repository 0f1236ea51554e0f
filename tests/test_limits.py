"""
Tests for L{lmproxy.listen.limits}: C{MaxConcurrentRequests} and
C{MaxQueuedRequests} on the OpenAI port, alone and through both of the
port's paths (over L{tests.test_openai.Wire}), and their config keys.
"""

from __future__ import annotations

import json

from attrs import evolve
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ConfigError, parse_config
from lmproxy.interfaces import ServiceState
from lmproxy.listen.limits import QueueFull, RequestLimit, Turn
from tests.test_front import CHAT, OK, post
from tests.test_openai import CONFIG, RecordingBackends, Wire


class RequestLimitTests(SynchronousTestCase):
    def test_turns_in_order(self) -> None:
        limit = RequestLimit(2, None)
        first, second = (self.successResultOf(limit.take()) for _ in range(2))
        third, fourth = limit.take(), limit.take()
        self.assertNoResult(third)
        self.assertEqual(limit.waiting, 2)
        first.done()
        first.done()  # once only
        turn = self.successResultOf(third)
        self.assertNoResult(fourth)
        second.done()
        self.assertIsInstance(self.successResultOf(fourth), Turn)
        turn.done()
        self.assertEqual((limit.taken, limit.waiting), (1, 0))

    def test_resized_larger_serves_the_queue_at_once(self) -> None:
        """A reload's larger limit gives the freed turns to the waiting, in order."""
        limit = RequestLimit(1, None)
        held = self.successResultOf(limit.take())
        first, second, third = limit.take(), limit.take(), limit.take()
        limit.resize(3, None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertNoResult(third)
        self.assertEqual((limit.taken, limit.waiting), (3, 1))
        held.done()
        self.successResultOf(third)
        self.assertEqual((limit.taken, limit.waiting), (3, 0))

    def test_resized_smaller_lets_the_running_finish(self) -> None:
        """Over a smaller limit, turns that end are not passed on until under it."""
        limit = RequestLimit(3, None)
        turns = [self.successResultOf(limit.take()) for _ in range(3)]
        waiting = limit.take()
        limit.resize(1, 0)
        turns[0].done()
        turns[1].done()
        self.assertNoResult(waiting)  # 1 of 1 still taken
        self.assertEqual(limit.taken, 1)
        turns[2].done()
        self.successResultOf(waiting).done()
        self.assertEqual((limit.taken, limit.waiting), (0, 0))
        self.successResultOf(limit.take())
        self.assertRaises(QueueFull, limit.take)  # the new queue bound: none

    def test_queue_full(self) -> None:
        limit = RequestLimit(1, 1)
        limit.take()
        limit.take()
        self.assertRaises(QueueFull, limit.take)

    def test_no_queue(self) -> None:
        limit = RequestLimit(1, 0)
        limit.take()
        self.assertRaises(QueueFull, limit.take)

    def test_a_wait_has_a_bound(self) -> None:
        """A request that waits longer than the bound leaves the queue with QueueFull."""
        clock = Clock()
        limit = RequestLimit(1, None, clock, 10.0)
        turn = self.successResultOf(limit.take())
        late, served = limit.take(), limit.take()
        clock.advance(9)
        turn.done()  # the first waiter is served in time
        self.successResultOf(late)
        clock.advance(1)
        failure = self.failureResultOf(served, QueueFull)
        self.assertIn("waited 10 s for a turn", str(failure.value))
        self.assertEqual(limit.waiting, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_leaving_the_queue(self) -> None:
        limit = RequestLimit(1, None)
        turn = self.successResultOf(limit.take())
        leaving, staying = limit.take(), limit.take()
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertEqual(limit.waiting, 1)
        turn.done()
        self.successResultOf(staying)


def limited(concurrent: int, queued: int | None) -> Config:
    """CONFIG with a limit on the chat service."""
    chat, *others = CONFIG.services
    chat = evolve(chat, max_concurrent_requests=concurrent, max_queued_requests=queued)
    return evolve(CONFIG, services=(chat, *others))


class PortTests(SynchronousTestCase):
    """The limit on the OpenAI port, on its hot path and on twisted.web's."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.config = limited(1, 1)
        self.wires = [Wire(self.backends, config=self.config) for _ in range(3)]
        # One OpenAiApi (one limit) for every connection, as in production.
        self.api = self.wires[0].api
        site = self.api.site()
        for wire in self.wires[1:]:
            wire.client = StringTransport()
            wire.channel = site.buildProtocol(None)
            wire.channel.makeConnection(wire.client)
            wire.reactor = self.wires[0].reactor

    def test_one_at_a_time_then_429(self) -> None:
        first, second, third = self.wires
        first.channel.dataReceived(post())
        second.channel.dataReceived(post())
        self.assertEqual(self.backends.acquired, ["chat"])  # the second waits its turn
        self.assertEqual(self.api.stats.of("chat").queued, 1)
        # /status counts it too (IBackends.queued).
        self.assertEqual(self.backends.service_status("chat").queued_connections, 1)
        third.channel.dataReceived(post())
        status, headers, body = third.response()
        self.assertEqual(status, b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(headers[b"retry-after"], [b"1"])
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(self.api.stats.of("chat").answered, {("llama-3", 429): 1})
        first.backend()[0].dataReceived(OK)
        self.assertEqual(first.response()[2], b"ok")
        self.assertEqual(self.backends.acquired, ["chat", "chat"])
        self.assertEqual(self.api.stats.of("chat").queued, 0)
        self.assertEqual(self.backends.service_status("chat").queued_connections, 0)

    def test_client_leaving_the_queue(self) -> None:
        first, second, third = self.wires
        first.channel.dataReceived(post())
        second.channel.dataReceived(post())
        second.channel.connectionLost(Failure(ConnectionLost()))
        third.channel.dataReceived(post())  # the queue has room again
        first.backend()[0].dataReceived(OK)
        self.assertEqual(self.backends.acquired, ["chat", "chat"])
        self.assertEqual(third.client.value(), b"")  # forwarded, not refused

    def test_twisted_web_path_shares_the_turns(self) -> None:
        """A chunked request (twisted.web's route) waits for the hot path's turn."""
        first, second, _ = self.wires
        first.channel.dataReceived(post())
        second.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
        )
        self.assertEqual(self.backends.acquired, ["chat"])
        first.backend()[0].dataReceived(OK)
        self.assertEqual(self.backends.acquired, ["chat", "chat"])

    def test_waiting_too_long_for_a_turn(self) -> None:
        """The hot path's queued request gets its 429 after the config's max wait."""
        first, second, _ = self.wires
        first.channel.dataReceived(post())
        second.channel.dataReceived(post())
        first.reactor.advance(self.config.max_wait)
        status, _headers, body = second.response()
        self.assertEqual(status, b"HTTP/1.1 429 Too Many Requests")
        self.assertIn("waited", json.loads(body)["error"]["message"])
        self.assertEqual(self.backends.acquired, ["chat"])
        self.assertEqual(self.api.stats.of("chat").queued, 0)

    def test_turn_held_while_the_service_starts(self) -> None:
        """A request waiting for a start holds its turn: nothing else is sent meanwhile."""
        self.backends.set_state("chat", ServiceState.STOPPED)
        first, second, _ = self.wires
        first.channel.dataReceived(post())
        second.channel.dataReceived(post())
        self.assertEqual(self.backends.acquired, ["chat"])
        self.backends.finish_start("chat")
        self.assertEqual(self.backends.acquired, ["chat"])


class ConfigTests(SynchronousTestCase):
    def service(self, **keys: object) -> dict[str, object]:
        return {
            "Name": "s",
            "Command": "x",
            "ProxyTargetPort": 9000,
            "OpenAiApi": True,
            **keys,
        }

    def load(self, service: dict[str, object]) -> Config:
        text = json.dumps({"OpenAiApi": {"ListenPort": 8080}, "Services": [service]})
        return parse_config(text, "config.json", "/tmp")

    def problems(self, service: dict[str, object]) -> str:
        return str(self.assertRaises(ConfigError, self.load, service))

    def test_loaded(self) -> None:
        (service,) = self.load(self.service(MaxConcurrentRequests=2, MaxQueuedRequests=0)).services
        self.assertEqual((service.max_concurrent_requests, service.max_queued_requests), (2, 0))

    def test_bad_values(self) -> None:
        self.assertIn(
            'Services[0] ("s").MaxConcurrentRequests: expected a positive integer, got 0',
            self.problems(self.service(MaxConcurrentRequests=0)),
        )
        self.assertIn(
            "MaxQueuedRequests: expected a non-negative integer",
            self.problems(self.service(MaxConcurrentRequests=1, MaxQueuedRequests=-1)),
        )

    def test_queue_without_limit(self) -> None:
        self.assertIn(
            "MaxQueuedRequests: given, but there is no MaxConcurrentRequests",
            self.problems(self.service(MaxQueuedRequests=3)),
        )

    def test_only_on_the_openai_port(self) -> None:
        service = self.service(MaxConcurrentRequests=1, OpenAiApi=False, ListenPort=7000)
        self.assertIn(
            "MaxConcurrentRequests: given, but OpenAiApi is not true", self.problems(service)
        )
