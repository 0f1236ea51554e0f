"""
Tests for L{lmproxy.listen.modelcontrol}: C{POST /v1/models/{id}/load} and
C{/unload}, and C{GET /v1/models/{id}/events}, on the port's own site over
C{StringTransport}s (L{tests.test_openai.Wire}), with fake backends and a
fake clock.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from attrs import evolve
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, Secret, ServiceConfig
from lmproxy.interfaces import ServiceState, ServiceUnavailable
from lmproxy.listen.modelcontrol import HEARTBEAT
from tests.test_openai import CONFIG, STARTED_AT, RecordingBackends, Wire

# An id that ends as an action does, besides CONFIG's models.
ODD = ServiceConfig(
    name="odd",
    command="odd-server",
    proxy_target_port=9004,
    openai_api=True,
    openai_api_models=("org/model/events", "org/model"),
)
ODD_CONFIG = evolve(CONFIG, services=(*CONFIG.services, ODD))


def request(method: bytes, path: str, extra: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: lmproxy\r\n%sContent-Length: 0\r\n\r\n" % (
        method,
        path.encode("ascii"),
        extra,
    )


def entry(model: str, status: str) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": STARTED_AT,
        "owned_by": "lmproxy",
        "status": {"value": status},
    }


def events(raw: bytes) -> list[Any]:
    """The JSON data of the events in a chunked body (however much of it came)."""
    found = []
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        for event in raw[:length].split(b"\n\n"):
            if event.startswith(b"data: "):
                found.append(json.loads(event[len(b"data: ") :]))
        raw = raw[length + 2 :]
    return found


class ControlTestCase(SynchronousTestCase):
    config: Config = ODD_CONFIG

    def setUp(self) -> None:
        self.backends = RecordingBackends(self.config)
        self.wire = Wire(self.backends, config=self.config)

    def send(self, method: bytes, path: str, extra: bytes = b"") -> None:
        self.wire.channel.dataReceived(request(method, path, extra))

    def answer(self) -> tuple[int, dict[bytes, list[bytes]], Any]:
        status, headers, body = self.wire.response()
        return int(status.split()[1]), headers, json.loads(body)


class LoadTests(ControlTestCase):
    def test_load_waits_until_running(self) -> None:
        self.send(b"POST", "/v1/models/llama-3/load")
        self.assertEqual(self.wire.client.value(), b"")
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.backends.finish_start("chat")
        self.assertEqual(self.answer()[::2], (200, entry("llama-3", "running")))
        self.assertEqual(self.backends.counts("chat"), (0, 0))  # it holds no lease

    def test_load_at_once(self) -> None:
        self.send(b"POST", "/v1/models/llama-3/load?wait=0")
        self.assertEqual(self.answer()[::2], (202, entry("llama-3", "stopped")))
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.backends.fail_start("chat", "it broke")  # nobody waits: dropped quietly
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_load_running(self) -> None:
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.send(b"POST", "/v1/models/llama-3/load")
        self.assertEqual(self.answer()[::2], (200, entry("llama-3", "running")))

    def test_load_fails(self) -> None:
        """OpenAI's 503, as for a request, with when and whether to retry."""
        self.send(b"POST", "/v1/models/llama-3/load")
        error = ServiceUnavailable("it broke", retry_after=2.5, retryable=False)
        self.backends.fail_start("chat", error=error)
        code, headers, body = self.answer()
        self.assertEqual((code, body["error"]["code"]), (503, "service_unavailable"))
        self.assertEqual(body["error"]["message"], "it broke")
        self.assertEqual(headers[b"retry-after"], [b"3"])
        self.assertEqual(headers[b"x-should-retry"], [b"false"])

    def test_client_leaves(self) -> None:
        """The start goes on, and still counts a waiter until it is over."""
        self.send(b"POST", "/v1/models/llama-3/load")
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.backends.finish_start("chat")
        self.assertEqual(self.backends.states["chat"], ServiceState.RUNNING)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_bad_flag(self) -> None:
        self.send(b"POST", "/v1/models/llama-3/load?wait=maybe")
        code, _, body = self.answer()
        self.assertEqual((code, body["error"]["param"]), (400, "wait"))
        self.assertEqual(self.backends.acquired, [])

    def test_unknown(self) -> None:
        self.send(b"POST", "/v1/models/nope/load")
        code, _, body = self.answer()
        self.assertEqual((code, body["error"]["code"]), (404, "model_not_found"))
        self.assertEqual(self.backends.acquired, [])

    def test_get_is_not_load(self) -> None:
        """GET .../load is the retrieval of an id that ends in /load: none here."""
        self.send(b"GET", "/v1/models/llama-3/load")
        self.assertEqual(self.answer()[0], 404)
        self.assertEqual(self.backends.acquired, [])


class UnloadTests(ControlTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.backends.set_state("chat", ServiceState.RUNNING)

    def test_unload(self) -> None:
        self.send(b"POST", "/v1/models/llama-3/unload")
        self.assertEqual(self.answer()[::2], (200, entry("llama-3", "stopped")))
        self.assertEqual(self.backends.stop_calls, [("chat", False)])

    def test_busy(self) -> None:
        lease = self.successResultOf(self.backends.acquire("chat"))
        self.send(b"POST", "/v1/models/llama-3/unload")
        code, _, body = self.answer()
        self.assertEqual((code, body["error"]["code"]), (409, "model_busy"))
        self.assertEqual(self.backends.states["chat"], ServiceState.RUNNING)
        self.send(b"POST", "/v1/models/llama-3/unload?force=1")
        self.assertEqual(self.answer()[::2], (200, entry("llama-3", "stopped")))
        self.assertEqual(self.backends.stop_calls, [("chat", False), ("chat", True)])
        lease.release()

    def test_unknown(self) -> None:
        self.send(b"POST", "/v1/models/nope/unload")
        self.assertEqual(self.answer()[0], 404)
        self.assertEqual(self.backends.stop_calls, [])


class EventsTests(ControlTestCase):
    def test_state_at_once_then_each_change(self) -> None:
        self.send(b"GET", "/v1/models/llama-3/events")
        head = self.wire.client.value().partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"\r\nContent-Type: text/event-stream; charset=utf-8", head)
        self.send_changes(ServiceState.STARTING, ServiceState.STARTING, ServiceState.RUNNING)
        self.assertEqual(
            self.seen,
            [
                entry("llama-3", "stopped"),
                entry("llama-3", "starting"),
                entry("llama-3", "running"),
            ],
        )
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.backends.observers, [])
        self.assertEqual(self.wire.reactor.getDelayedCalls(), [])

    def send_changes(self, *states: ServiceState) -> None:
        """Put chat in each of C{states} in turn, a reactor turn each; collect the events."""
        self.seen = events(self.wire.client.value().partition(b"\r\n\r\n")[2])
        self.wire.client.clear()
        for state in states:
            self.backends.set_state("chat", state)
            self.backends.changed(["embed"])  # another service: nothing to say
            self.wire.reactor.advance(0)
            self.seen += events(self.wire.client.value())
            self.wire.client.clear()

    def test_keepalive(self) -> None:
        self.send(b"GET", "/v1/models/llama-3/events")
        self.wire.client.clear()
        self.wire.reactor.advance(HEARTBEAT)
        self.assertIn(b": keepalive\n\n", self.wire.client.value())
        self.wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_paused_client(self) -> None:
        """Nothing is written while it does not read; then the state as it is."""
        self.send(b"GET", "/v1/models/llama-3/events")
        self.wire.client.clear()
        self.wire.channel.pauseProducing()
        for state in (ServiceState.STARTING, ServiceState.RUNNING):
            self.backends.set_state("chat", state)
            self.wire.reactor.advance(0)
        self.assertEqual(self.wire.client.value(), b"")
        self.wire.channel.resumeProducing()
        self.wire.reactor.advance(0)
        self.assertEqual(events(self.wire.client.value()), [entry("llama-3", "running")])
        self.wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_model_removed_by_a_reload(self) -> None:
        self.send(b"GET", "/v1/models/llama-3/events")
        self.wire.client.clear()
        config = evolve(CONFIG, services=CONFIG.services[1:])
        self.wire.api.reconfigure(config)
        self.backends.changed()
        self.wire.reactor.advance(0)
        self.assertTrue(self.wire.client.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(self.backends.observers, [])

    def test_unknown(self) -> None:
        self.send(b"GET", "/v1/models/nope/events")
        code, _, body = self.answer()
        self.assertEqual((code, body["error"]["code"]), (404, "model_not_found"))
        self.assertEqual(self.backends.observers, [])


class IdTests(ControlTestCase):
    """Ids with slashes: the known id wins, the longest first."""

    def test_id_with_slashes(self) -> None:
        self.send(b"GET", "/v1/models/org/model/events")
        self.assertEqual(self.answer()[::2], (200, {**entry("org/model/events", "stopped")}))

    def test_events_of_an_id_with_slashes(self) -> None:
        self.send(b"GET", "/v1/models/org/model/events/events")
        data = self.wire.client.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(events(data), [entry("org/model/events", "stopped")])
        self.wire.channel.connectionLost(Failure(ConnectionLost()))

    def test_load_of_an_id_with_slashes(self) -> None:
        self.send(b"POST", "/v1/models/org/model/load?wait=0")
        self.assertEqual(self.answer()[::2], (202, entry("org/model", "stopped")))

    def test_percent_encoded(self) -> None:
        self.send(b"POST", "/v1/models/" + quote("org/model+v1 beta", safe="") + "/load?wait=0")
        self.assertEqual(self.answer()[::2], (202, entry("org/model+v1 beta", "stopped")))


class KeyTests(SynchronousTestCase):
    """The port's API keys guard model control as every other route."""

    def test_key_needed(self) -> None:
        config = evolve(CONFIG, openai_api_keys=(Secret("sk-1"),))
        backends = RecordingBackends(config)
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(request(b"POST", "/v1/models/llama-3/load?wait=0"))
        self.assertEqual(wire.response()[0], b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(backends.acquired, [])
        wire = Wire(backends, config=config)
        wire.channel.dataReceived(
            request(b"POST", "/v1/models/llama-3/load?wait=0", b"Authorization: Bearer sk-1\r\n")
        )
        status, _, body = wire.response()
        self.assertEqual(status, b"HTTP/1.1 202 Accepted")
        self.assertEqual(json.loads(body)["id"], "llama-3")
        self.assertEqual(backends.acquired, ["chat"])
