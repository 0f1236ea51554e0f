"""
Integration tests of the management API: a real ``twistd -n lmproxy`` with
demo model servers as services, real clients on their ports, and the API read
over real sockets: ``/status``, a streaming ``/events`` client, ``/metrics``
(parsed with prometheus_client), the actions and the logs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.harness import (
    Lmproxy,
    demo_service,
    eventually,
    free_ports,
    http,
    pid_alive,
    raw_connect,
    wait_for,
)

JSON = dict[str, Any]
HEALTH_REQUEST = b"GET /health HTTP/1.1\r\nHost: demo\r\n\r\n"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


class EventReader(Protocol):
    """Reads a ``text/event-stream`` body as it arrives: ``(event, JSON data)`` pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.done: Deferred[None] = Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            event, lines = "message", []
            for line in block.decode("utf-8").split("\n"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    lines.append(value)
            if lines:  # comments (keepalives) and ``retry:`` carry no data
                self.events.append((event, json.loads("\n".join(lines))))

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(None)

    async def close(self) -> None:
        if not self.done.called:
            assert self.transport is not None
            self.transport.stopProducing()
        await self.done

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    def service_updates(self, service: str) -> Iterator[tuple[int, JSON]]:
        """(index, service object) of every state of ``service`` sent, the first one included."""
        for index, (name, data) in enumerate(self.events):
            if name == "status":
                yield index, _service(data, service)
            elif name == "service" and data["name"] == service:
                yield index, data

    def statuses(self, service: str) -> list[str]:
        """The states ``service`` went through, as the stream told them."""
        seen: list[str] = []
        for _, data in self.service_updates(service):
            if not seen or seen[-1] != data["status"]:
                seen.append(data["status"])
        return seen

    def latest(self, service: str) -> JSON:
        """``service`` as the stream last told it."""
        return list(self.service_updates(service))[-1][1]

    def first(self, service: str, status: str) -> tuple[int, JSON]:
        """The first update that shows ``service`` in ``status``."""
        return next((i, s) for i, s in self.service_updates(service) if s["status"] == status)


async def open_events(url: str, test: TestCase) -> EventReader:
    response = await treq.get(url, persistent=False, unbuffered=True)
    test.assertEqual(response.code, 200)
    test.assertEqual(
        response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"]
    )
    reader = EventReader()
    response.deliverBody(reader)
    test.addCleanup(reader.close)
    return reader


async def get_json(url: str) -> JSON:
    code, headers, body = await http("GET", url)
    assert code == 200, (code, body)
    assert headers["content-type"].startswith("application/json"), headers
    document: JSON = json.loads(body)
    return document


async def post_json(url: str) -> tuple[int, JSON]:
    code, _, body = await http("POST", url)
    return code, json.loads(body)


def _service(document: JSON, name: str) -> JSON:
    return next(s for s in document["services"] if s["name"] == name)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def two_services_that_do_not_fit(*flags_of_a: str) -> tuple[JSON, dict[str, int]]:
    """``a`` and ``b`` need 6 RAM each of 10, and the management API; and their ports."""
    la, ta, lb, tb, api = free_ports(5)
    config = {
        "ResourcesAvailable": {"RAM": 10},
        "ManagementApi": {"ListenPort": str(api)},
        "DefaultServiceUrl": "http://localhost:{{.PORT}}/",
        "Services": [
            demo_service("a", la, ta, *flags_of_a, ResourceRequirements={"RAM": 6}),
            demo_service("b", lb, tb, ResourceRequirements={"RAM": 6}),
        ],
    }
    return config, {"a": la, "b": lb, "api": api}


class ManagementIntegrationTests(TestCase):
    """What the management API tells about a real lmproxy, and what it makes it do."""

    timeout = 60

    async def test_start_and_eviction_on_status_events_and_metrics(self) -> None:
        """
        A client of ``a`` starts it; a client of ``b`` then evicts it.  Each
        step is seen the same on ``/status``, on ``/events`` and in ``/metrics``.
        """
        # a loads for a moment, so that /status can see it starting.
        config, ports = two_services_that_do_not_fit("--startup-delay", "0.5")
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        api = f"http://127.0.0.1:{ports['api']}"
        events = await open_events(f"{api}/events", self)
        await wait_for(lambda: bool(events.events), 10, "the first event")
        self.assertEqual(events.events[0][0], "status")

        # Nothing runs yet.
        status = await get_json(f"{api}/status")
        self.assertEqual(status, events.events[0][1])
        self.assertEqual([s["name"] for s in status["services"]], ["a", "b"])
        a = _service(status, "a")
        self.assertEqual(
            {k: a[k] for k in ("status", "waiting_connections", "proxied_connections")},
            {"status": "stopped", "waiting_connections": 0, "proxied_connections": 0},
        )
        self.assertEqual(a["listen_port"], str(ports["a"]))
        self.assertEqual(a["service_url"], f"http://localhost:{ports['a']}/")
        self.assertEqual(a["resource_requirements"], {"RAM": 6})
        self.assertIsNone(a["last_used"])
        self.assertIsNone(a["pid"])
        self.assertEqual((a["is_running"], a["active_connections"]), (False, 0))
        self.assertEqual(status["all_services"], status["services"])
        self.assertEqual(status["running_services"], [])
        self.assertEqual(
            status["resources"],
            {
                "RAM": {
                    "name": "RAM",
                    "total": 10,
                    "measured": None,
                    "reserved_by_starting_services": 0,
                    "in_use": 0,
                    "free": 10,
                    "available": 10,
                    "usage_by_service": {},
                }
            },
        )

        # A client connects to a and stays: a starts, then proxies it.
        before = time.time()
        client_a = await raw_connect(ports["a"])
        client_a.send(HEALTH_REQUEST)
        starting: list[JSON] = []

        async def a_is_starting() -> bool:
            starting[:] = [await get_json(f"{api}/status")]
            return _service(starting[0], "a")["status"] == "starting"

        await eventually(a_is_starting, 10, "/status to show a starting")
        a = _service(starting[0], "a")
        self.assertEqual((a["waiting_connections"], a["proxied_connections"]), (1, 0))
        self.assertEqual((a["is_running"], a["active_connections"]), (False, 1))
        self.assertIsNotNone(a["last_used"])
        ram = starting[0]["resources"]["RAM"]
        self.assertEqual(
            (ram["reserved_by_starting_services"], ram["in_use"], ram["free"]), (6, 6, 4)
        )
        self.assertEqual(ram["usage_by_service"], {"a": 6})
        self.assertEqual(starting[0]["running_services"], [])

        await wait_for(lambda: b" 200 OK" in client_a.received, 10, "a to answer")
        status = await get_json(f"{api}/status")
        after = time.time()
        a = _service(status, "a")
        self.assertEqual(a["status"], "running")
        self.assertEqual((a["waiting_connections"], a["proxied_connections"]), (0, 1))
        self.assertEqual((a["is_running"], a["active_connections"]), (True, 1))
        self.assertTrue(pid_alive(a["pid"]))
        self.assertEqual((a["starts"], a["failed_starts"], a["evictions"]), (1, 0, 0))
        self.assertRegex(a["last_used"], RFC3339_UTC)
        last_used = datetime.fromisoformat(a["last_used"])
        self.assertEqual(last_used.utcoffset(), timedelta(0))
        self.assertTrue(before - 0.01 <= last_used.timestamp() <= after + 0.01, a["last_used"])
        ram = status["resources"]["RAM"]
        self.assertEqual(
            (ram["reserved_by_starting_services"], ram["in_use"], ram["free"]), (0, 6, 4)
        )
        self.assertEqual(ram["usage_by_service"], {"a": 6})
        self.assertEqual(status["running_services"], [a])
        self.assertEqual(status["all_services"], status["services"])
        self.assertEqual(_service(status, "b")["status"], "stopped")

        # The stream told the same story.
        await wait_for(lambda: events.statuses("a")[-1] == "running", 10, "a running on /events")
        self.assertEqual(events.statuses("a"), ["stopped", "starting", "running"])
        _, a_starting = events.first("a", "starting")
        self.assertEqual(a_starting["waiting_connections"], 1)
        _, a_running = events.first("a", "running")
        self.assertEqual(a_running["proxied_connections"], 1)
        self.assertEqual(a_running["pid"], a["pid"])
        await wait_for(lambda: bool(events.named("start_finished")), 10, "start_finished")
        notice = events.named("start_finished")[0]
        self.assertEqual((notice["service"], notice["succeeded"]), ("a", True))
        self.assertGreaterEqual(notice["seconds"], 0.5)
        ram_updates = [
            (r["reserved_by_starting_services"], r["in_use"], r["free"])
            for r in events.named("resource")
        ]
        self.assertEqual(ram_updates, [(6, 6, 4), (0, 6, 4)])

        # a's client leaves; a client of b comes: a is evicted to make room.
        client_a.close()
        await client_a.closed
        await wait_for(lambda: events.latest("a")["proxied_connections"] == 0, 10, "a to be idle")
        code, headers, body = await http("GET", f"http://127.0.0.1:{ports['b']}/health")
        self.assertEqual((code, body), (200, b'{"status":"ok"}'))
        self.assertFalse(pid_alive(a["pid"]), "a must have stopped before b could start")

        status = await get_json(f"{api}/status")
        a, b = _service(status, "a"), _service(status, "b")
        self.assertEqual((a["status"], a["evictions"], a["pid"]), ("stopped", 1, None))
        self.assertEqual((b["status"], b["starts"], b["evictions"]), ("running", 1, 0))
        self.assertEqual(int(headers["x-demo-pid"]), b["pid"])
        self.assertEqual(status["running_services"], [b])
        self.assertEqual(status["resources"]["RAM"]["usage_by_service"], {"b": 6})

        # b's client has gone too when the stream says so.
        await wait_for(
            lambda: (
                events.statuses("b")[-1] == "running"
                and events.latest("b")["proxied_connections"] == 0
            ),
            10,
            "b running and idle on /events",
        )
        self.assertEqual(events.named("evicted"), [{"service": "a"}])
        self.assertEqual(
            events.statuses("a"), ["stopped", "starting", "running", "stopping", "stopped"]
        )
        self.assertEqual(
            events.statuses("b"), ["stopped", "waiting_for_resources", "starting", "running"]
        )
        a_stopped = [i for i, s in events.service_updates("a") if s["status"] == "stopped"][-1]
        b_starting, _ = events.first("b", "starting")
        self.assertLess(a_stopped, b_starting, "b started before a was gone")
        self.assertEqual(events.latest("a")["evictions"], 1)

        code, headers, body = await http("GET", f"{api}/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"), headers)
        metrics = samples(body.decode("utf-8"))
        expected = {
            sample_key("lmproxy_service_evictions_total", service="a"): 1,
            sample_key("lmproxy_service_evictions_total", service="b"): 0,
            sample_key("lmproxy_service_starts_total", service="a"): 1,
            sample_key("lmproxy_service_starts_total", service="b"): 1,
            sample_key("lmproxy_service_failed_starts_total", service="a"): 0,
            sample_key("lmproxy_service_state", service="a", state="stopped"): 1,
            sample_key("lmproxy_service_state", service="a", state="running"): 0,
            sample_key("lmproxy_service_state", service="b", state="running"): 1,
            sample_key("lmproxy_service_state", service="b", state="stopped"): 0,
            sample_key("lmproxy_service_proxied_connections", service="b"): 0,
            sample_key(
                "lmproxy_service_start_duration_seconds_count", service="a", result="succeeded"
            ): 1,
            sample_key("lmproxy_resource_in_use", resource="RAM"): 6,
            sample_key("lmproxy_resource_free", resource="RAM"): 4,
            sample_key("lmproxy_resource_usage", resource="RAM", service="b"): 6,
        }
        self.assertEqual({key: metrics.get(key) for key in expected}, expected)
        self.assertEqual(await lmproxy.stop(), 0)

    async def abandon_a_start(
        self, config: JSON, ports: dict[str, int]
    ) -> tuple[Lmproxy, EventReader]:
        """Run lmproxy on C{config}; a client of ``a`` starts it and leaves mid-start."""
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        events = await open_events(f"http://127.0.0.1:{ports['api']}/events", self)
        gone = await raw_connect(ports["a"])
        await wait_for(lambda: "starting" in events.statuses("a"), 10, "a to start")
        gone.close()
        await gone.closed
        return lmproxy, events

    async def test_a_start_nobody_waits_for_makes_room_at_once(self) -> None:
        """
        ``a``'s only client leaves while it starts (it would take a minute),
        and a client of ``b`` waits for the RAM that ``a`` holds: ``a`` counts
        as idle, so it is stopped at once, mid-start, for ``b``.
        """
        config, ports = two_services_that_do_not_fit("--startup-delay", "60")
        lmproxy, events = await self.abandon_a_start(config, ports)
        code, _, body = await http("GET", f"http://127.0.0.1:{ports['b']}/health")
        self.assertEqual((code, body), (200, b'{"status":"ok"}'))
        self.assertEqual(events.named("evicted"), [{"service": "a"}])
        self.assertEqual(
            [(n["service"], n["succeeded"]) for n in events.named("start_finished")],
            [("b", True)],
            "a's start was stopped, not failed",
        )
        self.assertEqual(events.statuses("a"), ["stopped", "starting", "stopping", "stopped"])
        self.assertEqual(events.latest("a")["failed_starts"], 0)
        # b waits for a to stop; /events sends what changed within one turn
        # of the reactor once, so a stop that is quick enough hides that wait.
        self.assertIn(
            events.statuses("b"),
            [
                ["stopped", "waiting_for_resources", "starting", "running"],
                ["stopped", "starting", "running"],
            ],
        )
        # But b never starts before a is stopped: the RAM holds one of them.
        a_stopped = max(i for i, a in events.service_updates("a") if a["status"] == "stopped")
        b_starts = min(i for i, b in events.service_updates("b") if b["status"] == "starting")
        self.assertLess(a_stopped, b_starts)
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_a_start_nobody_waits_for_goes_on_then_idles_out(self) -> None:
        """
        With nobody else asking for its resources, a start that every client
        left goes on (a client that retries finds the model loaded), and the
        service is stopped after its idle time as usual.
        """
        config, ports = two_services_that_do_not_fit("--startup-delay", "0.5")
        config["Services"][0]["ShutDownAfterInactivitySeconds"] = 1
        lmproxy, events = await self.abandon_a_start(config, ports)
        await wait_for(lambda: "running" in events.statuses("a"), 10, "a to be ready")
        self.assertEqual(
            [(n["service"], n["succeeded"]) for n in events.named("start_finished")],
            [("a", True)],
        )
        await wait_for(lambda: events.statuses("a")[-1] == "stopped", 10, "a to idle out")
        self.assertEqual(
            events.statuses("a"), ["stopped", "starting", "running", "stopping", "stopped"]
        )
        self.assertEqual(events.named("evicted"), [])
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_measured_again_when_a_start_ends(self) -> None:
        """
        VRAM is measured by a CheckCommand: 11 free, 1 while ``a`` (needs 10)
        listens.  ``b`` (needs 10) waits while ``a`` starts; ``a`` serves one
        request and is idle.  What was measured before or during ``a``'s start
        does not admit ``b`` beside it: VRAM is measured again, ``a`` is
        evicted, and only then does ``b`` start.
        """
        la, ta, lb, tb, api = free_ports(5)
        listening = f"socket.socket().connect_ex(('127.0.0.1', {ta})) == 0"
        probe = f"import socket; print(1 if {listening} else 11)"
        config = {
            "ResourcesAvailable": {
                "VRAM": {
                    "CheckCommand": f'{sys.executable} -c "{probe}"',
                    "CheckWhenNotEnoughIntervalMilliseconds": 50,
                }
            },
            "ManagementApi": {"ListenPort": str(api)},
            "Services": [
                demo_service(
                    "a", la, ta, "--startup-delay", "0.5", ResourceRequirements={"VRAM": 10}
                ),
                demo_service("b", lb, tb, ResourceRequirements={"VRAM": 10}),
            ],
        }
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        events = await open_events(f"http://127.0.0.1:{api}/events", self)
        request_a = Deferred.fromCoroutine(http("GET", f"http://127.0.0.1:{la}/health"))
        await wait_for(lambda: "starting" in events.statuses("a"), 10, "a to start")
        request_b = Deferred.fromCoroutine(http("GET", f"http://127.0.0.1:{lb}/health"))
        await wait_for(
            lambda: "waiting_for_resources" in events.statuses("b"), 10, "b to wait for a"
        )
        self.assertEqual((await request_a)[0], 200)
        code, _, _ = await request_b
        self.assertEqual(code, 200)
        self.assertEqual(
            events.statuses("a"),
            [
                "stopped",
                "waiting_for_resources",
                "starting",
                "running",
                "stopping",
                "stopped",
            ],
        )
        # b may start once a is stopping: a measurement taken while a stops
        # can only under-state what is free (a frees VRAM, never takes more).
        a_running, _ = events.first("a", "running")
        a_stopping = next(
            i for i, s in events.service_updates("a") if s["status"] == "stopping" and i > a_running
        )
        b_starting, _ = events.first("b", "starting")
        self.assertLess(a_stopping, b_starting, "b started beside a, on a stale measurement")
        self.assertEqual(events.named("evicted"), [{"service": "a"}])
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_actions_and_logs(self) -> None:
        """Stop (refused while busy, forced), start and logs, on real services."""
        config, ports = two_services_that_do_not_fit()
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        api = f"http://127.0.0.1:{ports['api']}"

        held = await raw_connect(ports["b"])
        held.send(HEALTH_REQUEST)
        await wait_for(lambda: b" 200 OK" in held.received, 10, "b to answer")

        code, body = await post_json(f"{api}/services/b/stop")
        self.assertEqual(code, 409)
        self.assertIn("proxied connections", body["error"])
        self.assertEqual(body["service"]["status"], "running")
        self.assertEqual(body["service"]["proxied_connections"], 1)
        pid_b = body["service"]["pid"]
        self.assertTrue(pid_alive(pid_b))
        self.assertFalse(held.closed.called)

        code, body = await post_json(f"{api}/services/b/stop?force=1")
        self.assertEqual(code, 200)
        self.assertEqual(
            (body["status"], body["proxied_connections"], body["pid"]), ("stopped", 0, None)
        )
        await wait_for(lambda: held.closed.called, 10, "b's client to be cut off")
        self.assertFalse(pid_alive(pid_b))

        code, body = await post_json(f"{api}/services/a/start")
        self.assertEqual(code, 200)
        self.assertEqual((body["status"], body["is_running"], body["starts"]), ("running", True, 1))
        self.assertTrue(pid_alive(body["pid"]))
        # Running for real: its port answers at once, from that process.
        for n in range(8):  # and the demo server logs one line per request
            _, headers, _ = await http("GET", f"http://127.0.0.1:{ports['a']}/health?n={n}")
            self.assertEqual(int(headers["x-demo-pid"]), body["pid"])

        code, body = await post_json(f"{api}/services/a/start")
        self.assertEqual((code, body["status"]), (200, "running"))
        code, body = await post_json(f"{api}/services/nope/stop")
        self.assertEqual(code, 404)
        code, _, _ = await http("GET", f"{api}/services/a/stop")
        self.assertEqual(code, 405)

        # lmproxy copies a's output to its log as it comes: wait for the last line.
        last = '"GET /health?n=7 HTTP/1.1" 200'
        await wait_for(lambda: last in lmproxy.log_text("a"), 10, "a's log")
        log = lmproxy.log_text("a").splitlines()
        self.assertIn('demo model server "a" listening', log[0])
        code, headers, text = await http("GET", f"{api}/services/a/logs?tail=5")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(text.decode("utf-8").splitlines(), log[-5:])
        self.assertEqual(len(log[-5:]), 5)
        self.assertIn('"GET /health?n=3 HTTP/1.1" 200', log[-5])
        self.assertIn(last, log[-1])
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_status_answers_at_once_during_a_start_and_a_check(self) -> None:
        """
        C{/status} never waits for a start or a CheckCommand in progress: it
        answers while both are held back until the test lets them go.
        """
        listen, target, api_port = free_ports(3)
        release = os.path.abspath(self.mktemp())
        wait = f"while [ ! -e {release} ]; do sleep 0.05; done"
        lmproxy = Lmproxy(
            self,
            {
                "ResourcesAvailable": {
                    "VRAM": {"CheckCommand": f"{wait}; echo 24000"},
                },
                "ManagementApi": {"ListenPort": str(api_port)},
                "Services": [
                    demo_service("slow", listen, target, HealthcheckCommand=f"test -e {release}")
                ],
            },
        )
        await lmproxy.start()
        api = f"http://127.0.0.1:{api_port}"
        client = await raw_connect(listen)
        client.send(HEALTH_REQUEST)

        async def slow_is_starting() -> bool:
            return _service(await get_json(f"{api}/status"), "slow")["status"] == "starting"

        await eventually(slow_is_starting, 10, "slow to be starting")
        durations = []
        for _ in range(10):
            began = reactor.seconds()
            status = await get_json(f"{api}/status")
            durations.append(reactor.seconds() - began)
            self.assertEqual(_service(status, "slow")["status"], "starting")
            self.assertIsNone(status["resources"]["VRAM"]["measured"], "the check is running")
        print(
            f"\n/status during a start and a CheckCommand: max {max(durations) * 1000:.1f} ms,"
            f" median {sorted(durations)[len(durations) // 2] * 1000:.1f} ms"
        )
        self.assertFalse(client.closed.called)
        with open(release, "w"):
            pass
        await wait_for(lambda: b" 200 OK" in client.received, 10, "slow to answer")
        status = await get_json(f"{api}/status")
        self.assertEqual(_service(status, "slow")["status"], "running")
        self.assertEqual(status["resources"]["VRAM"]["measured"], 24000)
        client.close()
        self.assertEqual(await lmproxy.stop(), 0)
