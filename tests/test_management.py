"""
Tests for L{lmproxy.manage.api} and L{lmproxy.manage.statusjson}: every route of the
management API, through StubTreq with L{FakeBackends} and a L{Clock}.

The helpers here (L{make_config}, L{Client}) are shared
with the other management test modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import treq
from attrs import define
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse

from lmproxy.apishared import shielded
from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.interfaces import (
    ServiceBusy,
    ServiceState,
    ServiceUnavailable,
    StartFailure,
)
from lmproxy.listen.guard import management_resource
from lmproxy.manage.api import ManagementApi
from lmproxy.manage.statusjson import rfc3339
from lmproxy.manage.streams import sse
from lmproxy.testing import ScriptedBackends
from tests.harness import HTML_SINKS

ALPHA = "alpha"
QWEN = "Qwen/Qwen 7B é"
QWEN_PATH = "Qwen%2FQwen%207B%20%C3%A9"
MARKUP = "<b>x</b>"
BASE = "http://localhost:7071"  # a Host that the management API answers


def make_config(log_dir: str = "/nonexistent") -> Config:
    """Three services (one with a slash and non-ASCII, one named like markup), two resources."""
    return Config(
        services=(
            ServiceConfig(
                name=ALPHA,
                command="alpha-server",
                proxy_target_port=18001,
                listen_port=8001,
                service_url="http://localhost:8001/",
                log_file_path=f"{log_dir}/alpha.log",
                resource_requirements={"VRAM": 10, "RAM": 4},
            ),
            ServiceConfig(
                name=QWEN,
                command="vllm",
                proxy_target_port=18002,
                openai_api=True,
                openai_api_models=(QWEN, "qwen"),
                log_file_path=f"{log_dir}/qwen.log",
                resource_requirements={"VRAM": 12},
            ),
            ServiceConfig(
                name=MARKUP,
                command="x",
                proxy_target_port=18003,
                listen_port=8003,
                log_file_path=f"{log_dir}/x.log",
            ),
        ),
        resources=(
            ResourceConfig("VRAM", 24),
            ResourceConfig("RAM", None, check_command="echo 30"),
        ),
        management_listen_port=7071,
    )


def parse_sse(data: bytes) -> list[tuple[str, str]]:
    """(event, data) of each complete message; a comment gives ("comment", text)."""
    messages = []
    for block in data.decode("utf-8").split("\n\n")[:-1]:
        event, lines = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                messages.append(("comment", line[1:].strip()))
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                lines.append(line[len("data: ") :])
        if lines:
            messages.append((event, "\n".join(lines)))
    return messages


class BodyCollector(Protocol):
    """Collects a streamed response body; L{leave} is the client going away."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = True

    def leave(self) -> None:
        producer: Any = self.transport  # a TransportProxyProducer
        producer.stopProducing()


@define
class Stream:
    """An open streaming response."""

    client: Client
    response: IResponse
    body: BodyCollector

    def messages(self) -> list[tuple[str, str]]:
        self.client.stub.flush()
        return parse_sse(self.body.data)

    def events(self) -> list[tuple[str, Any]]:
        """The messages that carry JSON, decoded; comments left out."""
        return [(e, json.loads(d)) for e, d in self.messages() if e != "comment"]

    def leave(self) -> None:
        self.body.leave()
        self.client.stub.flush()


class Client:
    """Synchronous requests against a L{ManagementApi} through StubTreq."""

    def __init__(self, case: SynchronousTestCase, api: ManagementApi, config: Config) -> None:
        self.case = case
        # As lmproxy serves it: behind its gate.  StubTreq sets its request
        # methods up at run time: typed as Any.
        self.stub: Any = StubTreq(management_resource(api.app.resource(), config))

    def send(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> Deferred[IResponse]:
        d: Deferred[IResponse] = self.stub.request(method, BASE + path, headers=headers)
        self.stub.flush()
        return d

    def finish(self, d: Deferred[IResponse]) -> tuple[IResponse, bytes]:
        self.stub.flush()
        response = self.case.successResultOf(d)
        return response, self.case.successResultOf(treq.content(response))

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[IResponse, bytes]:
        return self.finish(self.send(method, path, headers))

    def json(self, method: str, path: str, code: int = 200) -> Any:
        response, body = self.request(method, path)
        self.case.assertEqual(response.code, code, body)
        self.case.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"]
        )
        return json.loads(body)

    def stream(self, path: str, headers: Mapping[str, str] | None = None) -> Stream:
        response = self.case.successResultOf(self.send("GET", path, headers))
        body = BodyCollector()
        response.deliverBody(body)
        self.stub.flush()
        return Stream(self, response, body)


class ApiCase(SynchronousTestCase):
    """A ManagementApi over L{ScriptedBackends} and a L{Clock}."""

    def setUp(self) -> None:
        self.log_dir = self.mktemp()
        self.config = make_config(self.log_dir)
        self.backends = ScriptedBackends(self.config)
        self.clock = Clock()
        self.api = ManagementApi(self.backends, self.config, self.clock)
        self.client = Client(self, self.api, self.config)

    def service(self, document: dict[str, Any], name: str) -> dict[str, Any]:
        [found] = [s for s in document["services"] if s["name"] == name]
        return found


class StatusTests(ApiCase):
    """GET /status."""

    def test_services_in_config_order_with_every_field(self) -> None:
        status = self.client.json("GET", "/status")
        self.assertEqual([s["name"] for s in status["services"]], [ALPHA, QWEN, MARKUP])
        self.assertEqual(
            self.service(status, ALPHA),
            {
                "name": ALPHA,
                "listen_port": "8001",
                "status": "stopped",
                "waiting_connections": 0,
                "proxied_connections": 0,
                "queued_connections": 0,
                "last_used": None,
                "service_url": "http://localhost:8001/",
                "resource_requirements": {"VRAM": 10, "RAM": 4},
                "openai_models": [],
                "pid": None,
                "starts": 0,
                "failed_starts": 0,
                "evictions": 0,
                "last_failure": None,
                "pinned": False,
                "pending_reload": None,
                "waiting_for": None,
                "starting_since": None,
                "start_estimate_seconds": None,
                "is_running": False,
                "active_connections": 0,
            },
        )

    def test_last_failure(self) -> None:
        """The last failed start: when (RFC 3339), why, the server's last lines, the back-off."""
        self.backends.service_changes[QWEN] = {
            "failed_starts": 1,
            "last_failure": StartFailure(
                1764633600.5,
                "process exited with status 1 while starting",
                ("CUDA error: out of memory",),
                retryable=False,
                retry_at=1764633601.5,
            ),
        }
        status = self.client.json("GET", "/status")
        self.assertEqual(
            self.service(status, QWEN)["last_failure"],
            {
                "at": "2025-12-02T00:00:00.500+00:00",
                "reason": "process exited with status 1 while starting",
                "output_tail": ["CUDA error: out of memory"],
                "retryable": False,
                "retry_at": "2025-12-02T00:00:01.500+00:00",
            },
        )

    def test_listen_port_is_empty_string_without_one(self) -> None:
        status = self.client.json("GET", "/status")
        self.assertEqual(self.service(status, QWEN)["listen_port"], "")
        self.assertIsNone(self.service(status, QWEN)["service_url"])
        self.assertEqual(self.service(status, QWEN)["openai_models"], [QWEN, "qwen"])

    def test_connections_and_legacy_fields(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.acquire(ALPHA)
        self.backends.acquire(ALPHA)
        self.backends.acquire(QWEN)  # waits: QWEN is stopped
        status = self.client.json("GET", "/status")
        alpha, qwen = self.service(status, ALPHA), self.service(status, QWEN)
        self.assertEqual(
            (alpha["status"], alpha["proxied_connections"], alpha["waiting_connections"]),
            (ServiceState.RUNNING, 2, 0),
        )
        self.assertEqual((alpha["is_running"], alpha["active_connections"]), (True, 2))
        self.assertEqual((qwen["waiting_connections"], qwen["active_connections"]), (1, 1))
        self.assertFalse(qwen["is_running"])
        self.assertEqual(status["all_services"], status["services"])
        self.assertEqual(status["running_services"], [alpha])

    def test_last_used_is_rfc3339_with_utc_offset(self) -> None:
        self.backends.service_changes[ALPHA] = {"last_used": 1795727046.123}
        status = self.client.json("GET", "/status")
        self.assertEqual(self.service(status, ALPHA)["last_used"], "2026-11-26T21:04:06.123+00:00")
        self.assertIsNone(self.service(status, QWEN)["last_used"])

    def test_rfc3339(self) -> None:
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00.000+00:00")
        self.assertEqual(rfc3339(1795727046.5), "2026-11-26T21:04:06.500+00:00")
        self.assertIsNone(rfc3339(None))

    def test_started_at(self) -> None:
        status = self.client.json("GET", "/status")
        self.assertEqual(status["started_at"], rfc3339(self.backends.started_at))

    def test_resources(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.resource_changes["VRAM"] = {"reserved_by_starting_services": 12}
        self.backends.resource_changes["RAM"] = {"measured": 30, "free": 26}
        status = self.client.json("GET", "/status")
        self.assertEqual(list(status["resources"]), ["VRAM", "RAM"])
        self.assertEqual(
            status["resources"]["VRAM"],
            {
                "name": "VRAM",
                "total": 24,
                "measured": None,
                "reserved_by_starting_services": 12,
                "in_use": 10,
                "free": 14,
                "available": 14,
                "usage_by_service": {ALPHA: 10},
            },
        )
        ram = status["resources"]["RAM"]
        self.assertEqual((ram["total"], ram["measured"], ram["free"]), (None, 30, 26))
        self.assertEqual(ram["usage_by_service"], {ALPHA: 4})

    def test_answers_while_a_start_is_in_progress(self) -> None:
        pending = self.backends.start(QWEN)
        self.backends.service_changes[QWEN] = {"status": ServiceState.STARTING}
        status = self.client.json("GET", "/status")
        self.assertEqual(self.service(status, QWEN)["status"], ServiceState.STARTING)
        self.assertNoResult(pending)

    def test_markup_in_names_is_plain_json(self) -> None:
        _, body = self.client.request("GET", "/status")
        self.assertIn(b'"name": "<b>x</b>"', body)
        self.assertIn('"name": "Qwen/Qwen 7B é"'.encode(), body)

    def test_no_cache(self) -> None:
        response, _ = self.client.request("GET", "/status")
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])


class StartTests(ApiCase):
    """POST /services/{name}/start."""

    def test_answers_once_running(self) -> None:
        d = self.client.send("POST", f"/services/{ALPHA}/start")
        self.assertNoResult(d)
        self.backends.finish_start(ALPHA)
        response, body = self.client.finish(d)
        self.assertEqual(response.code, 200)
        service = json.loads(body)
        self.assertEqual((service["name"], service["status"]), (ALPHA, ServiceState.RUNNING))
        # A management start holds no connection.
        self.assertEqual(service["proxied_connections"], 0)

    def test_running_already(self) -> None:
        self.backends.finish_start(ALPHA)
        self.assertEqual(
            self.client.json("POST", f"/services/{ALPHA}/start")["status"], ServiceState.RUNNING
        )

    def test_failed_start_is_503(self) -> None:
        d = self.client.send("POST", f"/services/{ALPHA}/start")
        self.backends.fail_start(ALPHA, "alpha-server exited with status 1")
        response, body = self.client.finish(d)
        self.assertEqual(response.code, 503)
        error = json.loads(body)
        self.assertEqual(error["error"], "alpha-server exited with status 1")
        self.assertEqual(error["service"]["status"], "stopped")

    def test_percent_encoded_name(self) -> None:
        d = self.client.send("POST", f"/services/{QWEN_PATH}/start")
        self.backends.finish_start(QWEN)
        response, body = self.client.finish(d)
        self.assertEqual((response.code, json.loads(body)["name"]), (200, QWEN))

    def test_name_with_raw_slash(self) -> None:
        self.backends.finish_start(QWEN)
        path = "/services/Qwen/Qwen%207B%20%C3%A9/start"
        self.assertEqual(self.client.json("POST", path)["name"], QWEN)

    def test_markup_name(self) -> None:
        self.backends.finish_start(MARKUP)
        path = "/services/%3Cb%3Ex%3C%2Fb%3E/start"
        self.assertEqual(self.client.json("POST", path)["name"], MARKUP)

    def test_unknown_service_is_404(self) -> None:
        error = self.client.json("POST", "/services/nope/start", 404)
        self.assertEqual(error, {"error": "no service named 'nope'"})

    def test_get_is_405(self) -> None:
        response, body = self.client.request("GET", f"/services/{ALPHA}/start")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["POST"])
        self.assertEqual(json.loads(body), {"error": "method GET not allowed"})

    def test_cross_origin_post_is_refused(self) -> None:
        headers = {"Origin": "http://evil.example"}
        response, body = self.client.request("POST", f"/services/{ALPHA}/start", headers)
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(body), {"error": "cross-origin request refused"})
        self.assertEqual(self.backends.pending[ALPHA], [])

    def test_same_origin_post_is_accepted(self) -> None:
        self.backends.finish_start(ALPHA)
        headers = {"Origin": BASE}
        response, _ = self.client.request("POST", f"/services/{ALPHA}/start", headers)
        self.assertEqual(response.code, 200)


class StopTests(ApiCase):
    """POST /services/{name}/stop."""

    def test_stop(self) -> None:
        self.backends.finish_start(ALPHA)
        service = self.client.json("POST", f"/services/{ALPHA}/stop")
        self.assertEqual((service["name"], service["status"]), (ALPHA, "stopped"))
        self.assertEqual(self.backends.stop_calls, [(ALPHA, False)])

    def test_busy_is_409(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.acquire(ALPHA)
        error = self.client.json("POST", f"/services/{ALPHA}/stop", 409)
        self.assertIn("force=1", error["error"])
        self.assertEqual(error["service"]["status"], ServiceState.RUNNING)
        self.assertEqual(error["service"]["proxied_connections"], 1)

    def test_force(self) -> None:
        self.backends.finish_start(ALPHA)
        self.backends.acquire(ALPHA)
        service = self.client.json("POST", f"/services/{ALPHA}/stop?force=1")
        self.assertEqual(service["status"], "stopped")
        self.assertEqual(self.backends.stop_calls, [(ALPHA, True)])

    def test_force_words(self) -> None:
        for word, force in [("true", True), ("yes", True), ("0", False), ("", False)]:
            self.client.json("POST", f"/services/{ALPHA}/stop?force={word}")
            self.assertEqual(self.backends.stop_calls.pop(), (ALPHA, force))

    def test_percent_encoded_name(self) -> None:
        self.assertEqual(self.client.json("POST", f"/services/{QWEN_PATH}/stop")["name"], QWEN)
        self.assertEqual(self.backends.stop_calls, [(QWEN, False)])

    def test_unknown_service_is_404(self) -> None:
        self.client.json("POST", "/services/nope/stop", 404)
        self.assertEqual(self.backends.stop_calls, [])

    def test_get_is_405(self) -> None:
        self.client.json("GET", f"/services/{ALPHA}/stop", 405)

    def test_cross_origin_post_is_refused(self) -> None:
        headers = {"Origin": "http://evil.example"}
        response, _ = self.client.request("POST", f"/services/{ALPHA}/stop", headers)
        self.assertEqual(response.code, 403)
        self.assertEqual(self.backends.stop_calls, [])


class ShieldTests(SynchronousTestCase):
    """An action goes on when the HTTP client that asked for it leaves."""

    def test_cancel_does_not_reach_the_action(self) -> None:
        cancelled: list[object] = []
        action: Deferred[None] = Deferred(cancelled.append)
        following = shielded(action)
        following.cancel()
        self.failureResultOf(following)
        self.assertEqual(cancelled, [])
        action.errback(ServiceUnavailable("late failure"))  # logged, not left unhandled
        self.assertIsNone(self.successResultOf(action))

    def test_follows_result(self) -> None:
        self.assertIsNone(self.successResultOf(shielded(succeed(None))))
        self.failureResultOf(shielded(fail(ServiceBusy("x"))), ServiceBusy)


class ErrorTests(ApiCase):
    """Unknown routes and wrong methods answer JSON."""

    def test_unknown_path(self) -> None:
        self.assertEqual(self.client.json("GET", "/nope", 404), {"error": "not found"})
        self.client.json("GET", f"/services/{ALPHA}", 404)
        self.client.json("POST", f"/services/{ALPHA}/restart", 404)

    def test_wrong_methods(self) -> None:
        for method, path in [
            ("POST", "/status"),
            ("DELETE", "/status"),
            ("POST", "/events"),
            ("PUT", "/metrics"),
            ("POST", f"/services/{ALPHA}/logs"),
            ("POST", "/"),
        ]:
            error = self.client.json(method, path, 405)
            self.assertEqual(error, {"error": f"method {method} not allowed"})


class EventsTests(ApiCase):
    """GET /events."""

    def test_headers_and_initial_status(self) -> None:
        stream = self.client.stream("/events")
        self.assertEqual(
            stream.response.headers.getRawHeaders("content-type"),
            ["text/event-stream; charset=utf-8"],
        )
        self.assertEqual(stream.response.headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertTrue(stream.body.data.startswith(b"retry: 1000\n\n"))
        [(event, status)] = stream.events()
        self.assertEqual(event, "status")
        self.assertEqual(status, self.client.json("GET", "/status"))
        stream.leave()

    def test_changes_of_one_turn_are_coalesced(self) -> None:
        stream = self.client.stream("/events")
        self.backends.acquire(ALPHA)  # waiting
        self.backends.finish_start(ALPHA)  # running, one proxied
        self.backends.acquire(ALPHA)  # two proxied
        self.assertEqual(len(stream.events()), 1, "nothing before the turn ends")
        self.clock.advance(0)
        events = stream.events()[1:]
        self.assertEqual([e for e, _ in events], ["service", "resource", "resource"])
        service = events[0][1]
        self.assertEqual(
            (service["name"], service["status"], service["proxied_connections"]),
            (ALPHA, ServiceState.RUNNING, 2),
        )
        self.assertEqual(service["active_connections"], 2)
        self.assertEqual(events[1][1]["name"], "VRAM")
        self.assertEqual(events[1][1]["in_use"], 10)
        self.assertEqual(events[2][1]["usage_by_service"], {ALPHA: 4})
        stream.leave()

    def test_only_what_changed(self) -> None:
        stream = self.client.stream("/events")
        self.backends.acquire(QWEN)  # a waiter: no resource changes
        self.clock.advance(0)
        [(event, service)] = stream.events()[1:]
        self.assertEqual(
            (event, service["name"], service["waiting_connections"]), ("service", QWEN, 1)
        )
        self.backends.changed()  # nothing new
        self.clock.advance(0)
        self.assertEqual(len(stream.events()), 2)
        stream.leave()

    def test_burst_back_to_the_same_state_sends_nothing(self) -> None:
        stream = self.client.stream("/events")
        d = self.backends.acquire(QWEN)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(0)
        self.assertEqual(len(stream.events()), 1)
        stream.leave()

    def test_notices(self) -> None:
        stream = self.client.stream("/events")
        for observer in list(self.backends.observers):
            observer.start_finished(ALPHA, 2.5, False)
            observer.service_evicted(QWEN)
        self.backends.set_state(ALPHA, "stopping")
        self.clock.advance(0)
        self.assertEqual(
            stream.events()[1:],
            [
                ("service", self.service(self.client.json("GET", "/status"), ALPHA)),
                ("start_finished", {"service": ALPHA, "seconds": 2.5, "succeeded": False}),
                ("evicted", {"service": QWEN}),
            ],
        )
        stream.leave()

    def test_keepalive(self) -> None:
        stream = self.client.stream("/events")
        self.clock.advance(14.9)
        self.assertNotIn(("comment", "keepalive"), stream.messages())
        self.clock.advance(0.1)
        self.assertEqual(stream.messages()[-1], ("comment", "keepalive"))
        self.clock.advance(15)
        self.assertEqual(stream.messages().count(("comment", "keepalive")), 2)
        stream.leave()

    def test_client_leaving_unsubscribes(self) -> None:
        before = list(self.backends.observers)
        stream = self.client.stream("/events")
        self.assertEqual(len(self.backends.observers), len(before) + 1)
        self.backends.acquire(ALPHA)  # a flush is pending when the client leaves
        stream.leave()
        self.assertTrue(stream.body.lost)
        self.assertEqual(self.backends.observers, before)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_clients(self) -> None:
        streams = [self.client.stream("/events") for _ in range(3)]
        self.backends.acquire(QWEN)
        self.clock.advance(0)
        for stream in streams:
            self.assertEqual([e for e, _ in stream.events()], ["status", "service"])
        for stream in streams:
            stream.leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SseTests(SynchronousTestCase):
    """The event encoding."""

    def test_one_line(self) -> None:
        self.assertEqual(sse("service", '{"a": 1}'), b'event: service\ndata: {"a": 1}\n\n')

    def test_lines(self) -> None:
        self.assertEqual(sse("lines", " a\n\nb"), b"event: lines\ndata:  a\ndata: \ndata: b\n\n")
        self.assertEqual(parse_sse(sse("lines", " a\n\nb")), [("lines", " a\n\nb")])


class DashboardFilesTests(ApiCase):
    """GET / and the dashboard's static files."""

    def test_index(self) -> None:
        response, body = self.client.request("GET", "/")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"]
        )
        [csp] = response.headers.getRawHeaders("content-security-policy")
        self.assertIn("script-src 'self'", csp)
        self.assertIn(b'src="/dashboard/app.js"', body)
        self.assertIn(b'href="/dashboard/style.css"', body)

    def test_assets(self) -> None:
        for name, content_type in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            response, body = self.client.request("GET", f"/dashboard/{name}")
            self.assertEqual(response.code, 200, name)
            self.assertEqual(response.headers.getRawHeaders("content-type"), [content_type])
            self.assertEqual(response.headers.getRawHeaders("x-content-type-options"), ["nosniff"])
            self.assertTrue(body)

    def test_only_known_files(self) -> None:
        for path in [
            "/dashboard/__init__.py",
            "/dashboard/..%2Fmanagement.py",
            "/dashboard/../management.py",
            "/dashboard/",
            "/index.html",
        ]:
            self.client.json("GET", path, 404)

    def test_javascript_never_parses_data_as_html(self) -> None:
        """
        The dashboard builds its DOM with textContent and Text nodes only.  (The
        browser test shows a service named like markup rendered as text.)
        """
        _, body = self.client.request("GET", "/dashboard/app.js")
        code = re.sub(r"//[^\n]*", "", body.decode("utf-8"))  # comments may name them
        for sink in HTML_SINKS:
            self.assertNotIn(sink, code)
