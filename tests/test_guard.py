"""
Tests for L{lmproxy.listen.guard}: API keys, the Host and Origin checks, and
how each HTTP port refuses strangers (the OpenAI port once the headers are
in, before the body is read; the management port before its routes run).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, cast

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from lmproxy.config import Config, Secret
from lmproxy.listen import guard
from lmproxy.listen.guard import (
    CROSS_SITE,
    KeyCheck,
    cross_site,
    host_refusal,
    origin_refusal,
)
from lmproxy.listen.openai import OpenAiApi
from lmproxy.listen.timeouts import IDLE_SECONDS
from lmproxy.manage.api import ManagementApi
from lmproxy.testing import ScriptedBackends
from tests.test_management import ALPHA, Client, make_config
from tests.test_openai import CHAT_MODELS, CONFIG, ProxyTestCase, RecordingBackends, SiteTreq

KEY = "sk-right-key"
MODEL = CHAT_MODELS[0]
OTHER = "sk-other-key"


def _headers(**values: str) -> Headers:
    return Headers({name.replace("_", "-").encode(): [v.encode()] for name, v in values.items()})


class KeyCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.check = KeyCheck([Secret(OTHER), Secret(KEY)], "X.ApiKeys")

    def test_no_keys_needs_none(self) -> None:
        self.assertIsNone(KeyCheck([], "X.ApiKeys").refusal(Headers()))

    def test_bearer(self) -> None:
        for value in [f"Bearer {KEY}", f"bearer  {KEY} ", f"BEARER {OTHER}"]:
            self.assertIsNone(self.check.refusal(_headers(authorization=value)), value)

    def test_x_api_key(self) -> None:
        self.assertIsNone(self.check.refusal(_headers(x_api_key=KEY)))
        # Either header may carry it.
        self.assertIsNone(self.check.refusal(_headers(authorization="Basic eA==", x_api_key=KEY)))

    def test_missing(self) -> None:
        for headers in [Headers(), _headers(authorization=KEY), _headers(authorization="Bearer ")]:
            refusal = self.check.refusal(headers)
            assert refusal is not None
            self.assertEqual((refusal.status, refusal.code), (401, "invalid_api_key"))
            self.assertIn("needs an API key", refusal.message)
            self.assertIn("X.ApiKeys", refusal.message)

    def test_wrong(self) -> None:
        for value in [KEY + "x", KEY[:-1], KEY.upper(), ""]:
            refusal = self.check.refusal(_headers(authorization=f"Bearer {value}x"))
            assert refusal is not None
            self.assertEqual(refusal.status, 401)
            self.assertNotIn(value + "x", refusal.message)
            self.assertEqual(refusal.headers(), [(b"WWW-Authenticate", b"Bearer")])

    def test_every_key_compared(self) -> None:
        """No early exit: the time taken does not tell which key matched, or how far."""
        calls: list[bytes] = []
        original = hmac.compare_digest

        def compare(a: bytes, b: bytes) -> bool:
            calls.append(b)
            return original(a, b)

        self.patch(guard.hmac, "compare_digest", compare)
        self.assertIsNone(self.check.refusal(_headers(authorization=f"Bearer {OTHER}")))
        self.assertEqual(len(calls), 2)
        # Digests of one length: a key's length does not show either.
        self.assertEqual({len(c) for c in calls}, {32})


class HostTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        for host in [
            b"127.0.0.1",
            b"127.0.0.1:7071",
            b"10.1.2.3:80",
            b"[::1]",
            b"[::1]:7071",
            b"[fe80::1]:1",
            b"localhost",
            b"LocalHost:7071",
            b"dash.localhost:7071",
            b"gpu-box:7071",
            b"GPU-Box",
        ]:
            self.assertIsNone(host_refusal(host, {"gpu-box"}), host)

    def test_no_host(self) -> None:
        """Only tools send none (HTTP/1.0); DNS rebinding needs a browser, which always does."""
        self.assertIsNone(host_refusal(None, ()))

    def test_refused(self) -> None:
        for host in [
            b"rebind.evil.example",
            b"rebind.evil.example:7071",
            b"gpu-box.evil",
            b"localhost.evil.example",
            b"127.0.0.1.nip.io",
            b"::1",
            b"[::1",
            b"[nope]:80",
            b"[::1]x",
            b"localhost:x",
            b"",
            b"\xff\xfe",
            "bücher.example".encode(),
        ]:
            refusal = host_refusal(host, {"gpu-box"})
            assert refusal is not None, host
            self.assertEqual(refusal.status, 403)
            self.assertIn("ManagementApi.AllowedHosts", refusal.message)

    def test_message_names_the_host(self) -> None:
        refusal = host_refusal(b"rebind.evil.example:7071", ())
        assert refusal is not None
        self.assertIn("'rebind.evil.example:7071' is not allowed", refusal.message)


class CrossSiteTests(SynchronousTestCase):
    def test_same_site(self) -> None:
        self.assertFalse(cross_site(None, b"localhost:7071"))
        self.assertFalse(cross_site(b"http://localhost:7071", b"localhost:7071"))
        self.assertFalse(cross_site(b"http://LOCALHOST:7071", b"localhost:7071"))
        self.assertFalse(cross_site(b"http://[::1]:7071", b"[::1]:7071"))

    def test_cross_site(self) -> None:
        for origin in [
            b"http://evil.example",
            b"http://localhost:7072",
            b"null",
            b"http://[",
            b"http://\xff",
            b"",
        ]:
            self.assertTrue(cross_site(origin, b"localhost:7071"), origin)
        self.assertTrue(cross_site(b"http://localhost:7071", None))


class OriginTests(SynchronousTestCase):
    def test_no_origin_never_refused(self) -> None:
        self.assertIsNone(origin_refusal(None, b"rebind.evil.example", ()))

    def test_not_allowed(self) -> None:
        for origin, host in [
            (b"http://evil.example", b"127.0.0.1:7070"),
            (b"http://[", b"127.0.0.1:7070"),
            (b"null", b"127.0.0.1:7070"),
            # Same origin, but by a name that could be rebound.
            (b"http://rebind.evil.example:7070", b"rebind.evil.example:7070"),
        ]:
            refusal = origin_refusal(origin, host, ("http://localhost:3000",))
            assert refusal is not None
            self.assertEqual((refusal.status, refusal.code), (403, "origin_not_allowed"))
            self.assertIn("OpenAiApi.CorsAllowedOrigins", refusal.message)

    def test_allowed(self) -> None:
        allowed = ("http://localhost:3000", "http://[::1]:8080")
        for origin in [b"http://localhost:3000", b"HTTP://LOCALHOST:3000", b"http://[::1]:8080"]:
            self.assertIsNone(origin_refusal(origin, b"127.0.0.1:7070", allowed), origin)
        self.assertIsNone(origin_refusal(b"http://evil.example", b"x", ("*",)))

    def test_same_origin(self) -> None:
        self.assertIsNone(origin_refusal(b"http://127.0.0.1:7070", b"127.0.0.1:7070", ()))
        self.assertIsNone(origin_refusal(b"http://localhost:7070", b"localhost:7070", ()))


class ManagementCase(SynchronousTestCase):
    """The management API as lmproxy serves it: behind its gate."""

    keys: tuple[Secret, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    def setUp(self) -> None:
        config = attrs.evolve(
            make_config(self.mktemp()),
            management_api_keys=self.keys,
            management_allowed_hosts=self.allowed_hosts,
        )
        self.backends = ScriptedBackends(config)
        self.client = Client(self, ManagementApi(self.backends, config, Clock()), config)

    def get(self, path: str, **headers: str) -> tuple[int, Headers, bytes]:
        response, body = self.client.request("GET", path, headers)
        return response.code, response.headers, body

    def error(self, method: str, path: str, code: int, **headers: str) -> str:
        response, body = self.client.request(method, path, headers)
        self.assertEqual(response.code, code, body)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"]
        )
        [message] = json.loads(body).values()
        assert isinstance(message, str)
        return message


class ManagementHostTests(ManagementCase):
    allowed_hosts = ("gpu-box.lan",)

    def test_rebinding_refused(self) -> None:
        """The issue's case: a rebound name, with a matching Origin, started a service."""
        evil = "rebind.evil.example:7071"
        message = self.error(
            "POST", f"/services/{ALPHA}/start", 403, Host=evil, Origin=f"http://{evil}"
        )
        self.assertIn("'rebind.evil.example:7071' is not allowed", message)
        self.assertEqual(self.backends.pending[ALPHA], [])

    def test_every_route_checks_the_host(self) -> None:
        for path in ["/", "/dashboard/app.js", "/status", "/metrics", "/nope"]:
            self.error("GET", path, 403, Host="rebind.evil.example")

    def test_allowed_host(self) -> None:
        code, _, _ = self.get("/status", Host="GPU-Box.lan:7071")
        self.assertEqual(code, 200)
        self.backends.finish_start(ALPHA)
        host = "gpu-box.lan:7071"
        response, _ = self.client.request(
            "POST", f"/services/{ALPHA}/start", {"Host": host, "Origin": f"http://{host}"}
        )
        self.assertEqual(response.code, 200)

    def test_malformed_origin_is_cross_site(self) -> None:
        """It answered 500 before."""
        message = self.error("POST", f"/services/{ALPHA}/stop", 403, Origin="http://[")
        self.assertEqual(message, CROSS_SITE.message)
        self.assertEqual(self.backends.stop_calls, [])

    def test_cross_site_get_refused(self) -> None:
        self.error("GET", "/events", 403, Origin="http://evil.example")


class ManagementKeyTests(ManagementCase):
    keys = (Secret(OTHER), Secret(KEY))

    def test_api_routes_need_a_key(self) -> None:
        for method, path in [
            ("GET", "/status"),
            ("GET", "/events"),
            ("GET", "/metrics"),
            ("GET", f"/services/{ALPHA}/logs?follow=1"),
            ("GET", f"/services/{ALPHA}/logs"),
            ("POST", f"/services/{ALPHA}/start"),
            ("POST", f"/services/{ALPHA}/stop"),
            ("GET", "/nope"),
            ("POST", "/"),
        ]:
            response, body = self.client.request(method, path)
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ["Bearer"])
            self.assertIn("ManagementApi.ApiKeys", json.loads(body)["error"])
        self.assertEqual(self.backends.pending[ALPHA], [])
        self.assertEqual(self.backends.stop_calls, [])

    def test_wrong_key(self) -> None:
        message = self.error("GET", "/status", 401, Authorization=f"Bearer {KEY}x")
        self.assertNotIn(KEY, message)

    def test_with_a_key(self) -> None:
        self.assertEqual(self.get("/status", Authorization=f"Bearer {KEY}")[0], 200)
        self.assertEqual(self.get("/metrics", **{"x-api-key": OTHER})[0], 200)
        stream = self.client.stream("/events", {"Authorization": f"Bearer {KEY}"})
        self.assertEqual(stream.events()[0][0], "status")
        stream.leave()

    def test_dashboard_files_are_public(self) -> None:
        """The page loads without the key, then asks for it."""
        for path in ["/", "/dashboard/app.js"]:
            self.assertEqual(self.get(path)[0], 200, path)
        self.assertEqual(self.get("/dashboard/nope.js")[0], 404)


class OpenKeylessManagementTests(ManagementCase):
    def test_no_key_needed(self) -> None:
        self.assertEqual(self.get("/status")[0], 200)


def _openai_config(**changes: Any) -> Config:
    return attrs.evolve(CONFIG, **changes)


class OpenAiGateTests(ProxyTestCase):
    """The OpenAI port's gate, through its whole site."""

    def setUp(self) -> None:
        super().setUp()
        config = _openai_config(
            openai_api_keys=(Secret(KEY),), openai_allowed_origins=("http://localhost:3000",)
        )
        self.api = OpenAiApi(self.backends, config, self.agent, self.clock)
        self.client = SiteTreq(self.api.site())
        self.make_running()

    def chat(self, **headers: str) -> tuple[int, Headers, bytes]:
        return self.result(
            self.post(
                "/v1/chat/completions",
                {"model": MODEL, "messages": []},
                headers={"Content-Type": "application/json", **headers},
            )
        )

    def test_no_key(self) -> None:
        result = self.chat()
        self.assertError(
            result,
            401,
            "This port needs an API key: send it as 'Authorization: Bearer <key>'"
            " (or 'x-api-key: <key>'); the keys are in OpenAiApi.ApiKeys.",
            error_code="invalid_api_key",
        )
        self.assertEqual(result[1].getRawHeaders(b"www-authenticate"), [b"Bearer"])
        self.assertNothingStarted()

    def test_wrong_key(self) -> None:
        self.assertError(
            self.chat(Authorization="Bearer nope"),
            401,
            "Incorrect API key provided: it is not in OpenAiApi.ApiKeys.",
            error_code="invalid_api_key",
        )
        self.assertNothingStarted()

    def test_every_route_needs_it(self) -> None:
        for path in ["/v1/models", "/v1/models/chat", "/nope"]:
            response = self.successResultOf(self._get(path))
            self.assertEqual(response.code, 401, path)

    def _get(self, path: str) -> Any:
        d = self.client.get("http://lmproxy" + path)
        self.pump()
        return d

    def test_right_key(self) -> None:
        self.assertEqual(self.chat(Authorization=f"Bearer {KEY}")[0], 200)
        self.assertEqual(self.chat(**{"x-api-key": KEY})[0], 200)
        self.assertEqual(self.backends.acquired, ["chat", "chat"])

    def test_cross_site_no_cors_post_refused(self) -> None:
        """The issue's case: a page's no-cors text/plain POST started a model."""
        result = self.result(
            self.post(
                "/v1/chat/completions",
                {"model": MODEL, "messages": []},
                headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
            )
        )
        self.assertEqual(result[0], 403)
        self.assertEqual(json.loads(result[2])["error"]["code"], "origin_not_allowed")
        self.assertNothingStarted()

    def test_allowed_origin(self) -> None:
        headers = {"Origin": "http://localhost:3000", "Authorization": f"Bearer {KEY}"}
        self.assertEqual(self.chat(**headers)[0], 200)

    def test_allowed_origin_still_needs_the_key(self) -> None:
        self.assertEqual(self.chat(Origin="http://localhost:3000")[0], 401)


class OpenAiOriginWithoutKeysTests(ProxyTestCase):
    """Without keys, the Origin check alone; requests without Origin always pass."""

    def setUp(self) -> None:
        super().setUp()
        self.make_running()

    def test_no_origin(self) -> None:
        result = self.result(self.post("/v1/chat/completions", {"model": MODEL}))
        self.assertEqual(result[0], 200)

    def test_any_origin(self) -> None:
        api = OpenAiApi(
            self.backends, _openai_config(openai_allowed_origins=("*",)), self.agent, self.clock
        )
        self.client = SiteTreq(api.site())
        headers = {"Content-Type": "text/plain", "Origin": "http://anyone.example"}
        result = self.result(self.post("/v1/chat/completions", {"model": MODEL}, headers=headers))
        self.assertEqual(result[0], 200)

    def test_refused_by_default(self) -> None:
        headers = {"Content-Type": "text/plain", "Origin": "http://localhost:3000"}
        result = self.result(self.post("/v1/chat/completions", {"model": MODEL}, headers=headers))
        self.assertEqual(result[0], 403)
        self.assertNothingStarted()


class BeforeTheBodyTests(SynchronousTestCase):
    """The OpenAI port refuses a stranger once the headers are in: no body byte is awaited."""

    def test_refused_at_once(self) -> None:
        backends = RecordingBackends()
        config = _openai_config(openai_api_keys=(Secret(KEY),))
        clock = Clock()
        api = OpenAiApi(backends, config, cast(IAgent, _NoAgent()), clock)
        transport = StringTransport()
        channel = api.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"WWW-Authenticate: Bearer\r\n", answer)
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(backends.acquired, [])
        # Answered: the site's bound on a slow body does not answer again
        # (after IDLE_SECONDS twisted.web's own timeout closes it, with no answer).
        clock.advance(IDLE_SECONDS - 1)
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)


class _NoAgent:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing is forwarded")
