"""
Tests for L{lmproxy.listen.openai} and L{lmproxy.listen.httpforward}: the OpenAI port.

Most tests drive the app's own site (L{OpenAiApi.site}) with L{SiteTreq}, a
C{StubTreq} for a whole site, and let it forward, through a
C{RequestTraversalAgent}, to L{FakeModelServer}, an in-memory twisted.web
resource standing for every model server.  The tests that need the raw bytes
on either side (flow control, keep-alive, chunked request bodies, exact
forwarded headers) use L{Wire}: the app's own site and agent (L{OpenAiApi.site},
L{backend_agent}), both over C{StringTransport}s.  No sockets, no real time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import treq
from attrs import evolve
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.test.iosim import connect as connect_pumped
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from lmproxy.config import Config, ServiceConfig
from lmproxy.interfaces import (
    ILease,
    ServiceState,
    ServiceUnavailable,
)
from lmproxy.listen import routeforward
from lmproxy.listen.httpforward import BytesProducer, backend_agent, end_to_end_headers
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE
from lmproxy.listen.multipart import multipart_field
from lmproxy.listen.openai import OpenAiApi
from lmproxy.logs import debugging, set_log_level
from lmproxy.testing import FakeBackends

STARTED_AT = 1_700_000_000
CHAT_MODELS = ("llama-3", "org/model+v1 beta", "Модель")
CONFIG = Config(
    services=(
        ServiceConfig(
            name="chat",
            command="chat-server",
            proxy_target_port=9001,
            openai_api=True,
            openai_api_models=CHAT_MODELS,
        ),
        ServiceConfig(
            name="embed",
            command="embed-server",
            proxy_target_port=9002,
            openai_api=True,
            openai_api_models=("embedder",),
            restart_on_connection_failure=True,
        ),
        # A plain TCP service: not on the OpenAI port, even by its name.
        ServiceConfig(name="tcp-only", command="x", proxy_target_port=9003, listen_port=7003),
    )
)
JSON_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/completion",
    "/infill",
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/embedding",
    "/reranking",
)
MULTIPART_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
BOUNDARY = "lmproxy-test-boundary"


class RecordingBackends(FakeBackends):
    """FakeBackends that also records every acquire."""

    def __init__(self, config: Config = CONFIG) -> None:
        super().__init__(config, started_at=float(STARTED_AT) + 0.75)
        self.acquired: list[str] = []

    def acquire(self, service: str) -> Deferred[ILease]:
        self.acquired.append(service)
        return super().acquire(service)

    def counts(self, service: str) -> tuple[int, int]:
        """(waiting, proxied) connections of C{service}."""
        status = next(s for s in self.snapshot().services if s.name == service)
        return status.waiting_connections, status.proxied_connections


class FakeModelServer(Resource):
    """
    Every model server behind the proxy (they differ by the Host header the
    agent sends).  Records each request; answers with C{handler}, by default
    a JSON echo of what it received.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.bodies: list[bytes] = []
        self.disconnects: list[Failure] = []
        self.handler: Callable[[Request, bytes], bytes | int] = self.echo

    def render(self, request: Request) -> bytes | int:
        body = request.content.read()
        self.requests.append(request)
        self.bodies.append(body)
        request.notifyFinish().addErrback(self.disconnects.append)
        return self.handler(request, body)

    def echo(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Backend", request.getHeader(b"host") or b"")
        return json.dumps(
            {
                "host": (request.getHeader(b"host") or b"").decode(),
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "body": body.decode("latin-1"),
            }
        ).encode()


@implementer(IAgent)
class RefusingAgent:
    """An agent whose connections to some ports are refused, a set number of times."""

    def __init__(self, agent: IAgent, refusals: dict[int, int]) -> None:
        self._agent = agent
        self.refusals = refusals

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        port = int(uri.split(b"/")[2].rsplit(b":", 1)[1])
        if self.refusals.get(port, 0):
            self.refusals[port] -= 1
            return fail(ConnectionRefusedError())
        return self._agent.request(method, uri, headers, bodyProducer)


@implementer(IAgentEndpointFactory)
class _Loopback:
    """Every URL's endpoint is 127.0.0.1 on its port, through a memory reactor."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self._reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self._reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class SiteTraversalAgent:
    """
    treq's C{RequestTraversalAgent}, for a whole C{Site} rather than a
    resource (that one serves its resource with a plain C{Site}): each request
    is a real client connection to C{site}, over in-memory transports.
    """

    def __init__(self, site: Site) -> None:
        self._site = site
        self._reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._reactor, _Loopback(self._reactor))
        self._pumps: set[IOPump] = set()

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        connections = len(self._reactor.tcpClients)
        response = self._agent.request(method, uri, headers, bodyProducer)
        if len(self._reactor.tcpClients) == connections:
            return response  # failed before connecting
        _, port, factory, _, _ = self._reactor.tcpClients[-1]
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server = self._site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        self._pumps.add(
            connect_pumped(
                server,
                FakeTransport(server, True, server_address, client_address),
                client,
                FakeTransport(client, False, client_address, server_address),
            )
        )
        return response

    def flush(self) -> None:
        """Move every pending byte between the clients and the site."""
        pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            pump.flush()
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected):
                self._pumps.add(pump)


class SiteTreq(HTTPClient):
    """C{treq.testing.StubTreq}, for a whole site: see L{SiteTraversalAgent}."""

    def __init__(self, site: Site) -> None:
        self._site_agent = SiteTraversalAgent(site)
        # Bodies are written at once (treq's default producer needs the global reactor).
        super().__init__(self._site_agent, data_to_body_producer=BytesProducer)

    def flush(self) -> None:
        """Move every pending byte between the clients and the site."""
        self._site_agent.flush()


DONE = Failure(ConnectionDone())


class Chunks(Protocol):
    """Collects a response body chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = DONE) -> None:
        self.ended = reason


class ProxyTestCase(SynchronousTestCase):
    """The app under test, its fake backends, its fake model server and a client."""

    max_body_bytes = 64 * 1024 * 1024

    def setUp(self) -> None:
        self.clock = Clock()
        self.backends = RecordingBackends()
        self.server = FakeModelServer()
        self.backend_agent = RequestTraversalAgent(self.server)
        self.agent = RefusingAgent(self.backend_agent, {})
        config = evolve(CONFIG, openai_max_body_bytes=self.max_body_bytes)
        self.api = OpenAiApi(self.backends, config, self.agent, self.clock)
        # The site, not only the app's resource: the site holds the body limit.
        self.client = SiteTreq(self.api.site())

    def make_running(self, service: str = "chat") -> None:
        self.backends.set_state(service, ServiceState.RUNNING)

    def pump(self) -> None:
        """Move every pending byte between client, proxy and model server."""
        for _ in range(4):
            self.backend_agent.flush()
            self.client.flush()

    def post(self, path: str, document: object, **kwargs: Any) -> Deferred[Any]:
        headers = kwargs.pop("headers", {"Content-Type": "application/json"})
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return self.client.post("http://lmproxy" + path, data=body, headers=headers, **kwargs)

    def result(self, d: Deferred[Any]) -> tuple[int, Headers, bytes]:
        """Status, headers and whole body of the response C{d} fires with."""
        self.pump()
        response = self.successResultOf(d)
        body = treq.content(response)
        self.pump()
        return response.code, response.headers, self.successResultOf(body)

    def assertJSON(self, result: tuple[int, Headers, bytes], code: int, document: object) -> None:
        self.assertEqual(result[0], code)
        self.assertEqual(result[1].getRawHeaders(b"content-type"), [JSON_CONTENT_TYPE])
        self.assertEqual(json.loads(result[2]), document)

    def assertError(
        self,
        result: tuple[int, Headers, bytes],
        code: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        error_code: str | None = None,
    ) -> None:
        error = {"message": message, "type": kind, "param": param, "code": error_code}
        self.assertJSON(result, code, {"error": error})

    def assertNothingStarted(self) -> None:
        self.assertEqual(self.backends.acquired, [])
        self.assertEqual(self.server.requests, [])


def multipart(fields: list[tuple[str, bytes, str | None]]) -> bytes:
    """A multipart/form-data body of (name, value, filename) parts."""
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"\r\nContent-Type: audio/wav'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        parts.append(head + value + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class ModelListTests(ProxyTestCase):
    """GET /v1/models and GET /v1/models/{id}."""

    def entry(self, model: str) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            "created": STARTED_AT,
            "owned_by": "lmproxy",
            "status": {"value": "stopped"},
        }

    def test_list(self) -> None:
        """Every model id of every OpenAI service, in config order."""
        result = self.result(self.client.get("http://lmproxy/v1/models"))
        data = [self.entry(m) for m in (*CHAT_MODELS, "embedder")]
        self.assertJSON(result, 200, {"object": "list", "data": data})
        self.assertNothingStarted()

    def test_retrieve(self) -> None:
        """Ids with /, +, spaces and Cyrillic, raw or percent-encoded in the path."""
        paths = {
            "/v1/models/llama-3": "llama-3",
            "/v1/models/org/model+v1%20beta": "org/model+v1 beta",
            "/v1/models/" + quote("org/model+v1 beta", safe=""): "org/model+v1 beta",
            "/v1/models/" + quote("Модель"): "Модель",
        }
        for path, model in paths.items():
            result = self.result(self.client.get("http://lmproxy" + path))
            self.assertJSON(result, 200, self.entry(model))
        self.assertNothingStarted()

    def test_retrieve_unknown(self) -> None:
        """An unknown id, or the name of a service that is not on the OpenAI port: 404."""
        for model in ("nope", "tcp-only", "llama"):
            result = self.result(self.client.get("http://lmproxy/v1/models/" + model))
            self.assertError(
                result,
                404,
                f"The model {model!r} does not exist.",
                param="model",
                error_code="model_not_found",
            )

    def test_wrong_method(self) -> None:
        for path in ("/v1/models", "/v1/models/llama-3"):
            result = self.result(self.post(path, {"model": "llama-3"}))
            self.assertError(
                result,
                405,
                f"Method POST is not allowed for {path}; use GET or HEAD.",
                error_code="method_not_allowed",
            )
            self.assertEqual(result[1].getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertNothingStarted()


class RoutingTests(ProxyTestCase):
    """Each request goes to the service whose model it names."""

    def setUp(self) -> None:
        super().setUp()
        self.make_running("chat")
        self.make_running("embed")

    def test_every_json_endpoint(self) -> None:
        """Same method, path, query and body, to the service of the model."""
        for path in JSON_PATHS:
            body = json.dumps({"model": "embedder", "input": "ü"}).encode()
            result = self.result(self.post(path + "?x=1&y=%20", body))
            self.assertEqual(result[0], 200)
            self.assertEqual(
                json.loads(result[2]),
                {
                    "host": "127.0.0.1:9002",
                    "method": "POST",
                    "uri": path + "?x=1&y=%20",
                    "body": body.decode("latin-1"),
                },
            )
        self.assertEqual(self.backends.acquired, ["embed"] * len(JSON_PATHS))
        self.assertEqual(self.server.bodies[0], body)

    def test_routing_table(self) -> None:
        """Several ids of one service, and ids of different services."""
        expected = {model: "127.0.0.1:9001" for model in CHAT_MODELS}
        expected["embedder"] = "127.0.0.1:9002"
        for model, host in expected.items():
            result = self.result(self.post("/v1/chat/completions", {"model": model}))
            self.assertEqual(json.loads(result[2])["host"], host)
        self.assertEqual(self.backends.acquired, ["chat", "chat", "chat", "embed"])

    def test_debug_line_only_at_debug_level(self) -> None:
        """One line per forwarded request with LogLevel Debug; none, not even built, else."""
        self.addCleanup(set_log_level, "Normal")
        built: list[str] = []
        self.patch(routeforward.log, "debug", lambda format, **kw: built.append(format))
        for level in ["Debug", "Normal"]:
            set_log_level(level)
            self.assertEqual(debugging(), level == "Debug")
            result = self.result(self.post("/v1/chat/completions", {"model": "llama-3"}))
            self.assertEqual(result[0], 200)
        self.assertEqual(built, ["{method} {path} -> {service}: {code} in {seconds:.3f}s"])

    def test_debug_line(self) -> None:
        """The debug line says what was forwarded where, its status and duration."""
        self.addCleanup(set_log_level, "Normal")
        set_log_level("Debug")
        with capturedLogs() as events:
            self.result(self.post("/v1/chat/completions", {"model": "llama-3"}))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r"^POST /v1/chat/completions -> chat: 200 in \d+\.\d{3}s$")

    def test_backend_answer_passes_through(self) -> None:
        """A backend's own error status and body reach the client unchanged."""

        def refuse(request: Request, body: bytes) -> bytes:
            request.setResponseCode(422, b"Unprocessable")
            request.setHeader(b"Content-Type", b"application/problem+json")
            return b'{"detail": "bad"}'

        self.server.handler = refuse
        code, headers, body = self.result(self.post("/v1/embeddings", {"model": "embedder"}))
        self.assertEqual((code, body), (422, b'{"detail": "bad"}'))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/problem+json"])
        self.assertEqual(self.backends.counts("embed"), (0, 0))

    def test_no_content_type_invented(self) -> None:
        """A backend answer without Content-Type does not get twisted.web's text/html."""

        def bare(request: Request, body: bytes) -> bytes:
            request.responseHeaders.removeHeader(b"content-type")
            request.defaultContentType = None
            return b"raw"

        self.server.handler = bare
        code, headers, body = self.result(self.post("/v1/completions", {"model": "llama-3"}))
        self.assertEqual((code, body), (200, b"raw"))
        self.assertIsNone(headers.getRawHeaders(b"content-type"))

    def test_multipart(self) -> None:
        """The model form field routes; the body is forwarded byte for byte."""
        # A large file with bytes that look like a boundary, before the model field.
        audio = (b"RIFF\r\n--" + BOUNDARY.encode() + b"x\x00\xff") * 10_000
        body = multipart(
            [("file", audio, "a.wav"), ("model", b"embedder", None), ("x", b"1", None)]
        )
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        for path in MULTIPART_PATHS:
            result = self.result(self.post(path, body, headers={"Content-Type": content_type}))
            self.assertEqual(json.loads(result[2])["host"], "127.0.0.1:9002")
            self.assertEqual(json.loads(result[2])["uri"], path)
        self.assertEqual(self.server.bodies, [body, body])
        self.assertEqual(self.server.requests[0].getHeader(b"content-type"), content_type.encode())

    def test_multipart_without_model(self) -> None:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        body = multipart([("file", b"x", "model"), ("model-name", b"llama-3", None)])
        result = self.result(self.post("/v1/audio/transcriptions", body, headers=headers))
        self.assertError(result, 400, "You must provide a model parameter.", param="model")
        self.assertEqual(self.server.requests, [])

    def test_multipart_model_first(self) -> None:
        body = multipart([("model", "Модель".encode(), None), ("file", b"\x00" * 10, "a.wav")])
        headers = {"Content-Type": f'multipart/form-data; boundary="{BOUNDARY}"'}
        result = self.result(self.post("/v1/audio/transcriptions", body, headers=headers))
        self.assertEqual(json.loads(result[2])["host"], "127.0.0.1:9001")
        self.assertEqual(self.server.bodies, [body])


class MultipartFieldTests(SynchronousTestCase):
    """L{multipart_field} finds one form field."""

    def test_found(self) -> None:
        body = multipart([("a", b"1", None), ("model", b"m-1", None), ("model", b"m-2", None)])
        self.assertEqual(multipart_field(body, BOUNDARY.encode(), "model"), "m-1")

    def test_value_spans_slices(self) -> None:
        """A value longer than the slices the body is fed in."""
        value = "é" * 100_000
        body = multipart([("model", value.encode(), None)])
        self.assertEqual(multipart_field(body, BOUNDARY.encode(), "model"), value)

    def test_missing(self) -> None:
        body = multipart([("file", b"model", "model")])
        self.assertIsNone(multipart_field(body, BOUNDARY.encode(), "model"))

    def test_malformed(self) -> None:
        for body in (b"", b"garbage", multipart([("model", b"m", None)])[:-30]):
            self.assertRaises(ValueError, multipart_field, body, BOUNDARY.encode(), "model")

    def test_not_utf8(self) -> None:
        body = multipart([("model", b"\xff", None)])
        self.assertRaises(ValueError, multipart_field, body, BOUNDARY.encode(), "model")


class BadRequestTests(ProxyTestCase):
    """Bad requests get OpenAI-shaped errors, and start nothing."""

    max_body_bytes = 100

    def test_bad_json(self) -> None:
        for path in JSON_PATHS:
            result = self.result(self.post(path, b'{"model": "llama-3",}'))
            self.assertError(
                result,
                400,
                "The body is not valid JSON: Expecting property name enclosed in double"
                " quotes: line 1 column 21 (char 20)",
            )
        self.assertNothingStarted()

    def test_not_an_object(self) -> None:
        for document in ([{"model": "llama-3"}], "llama-3", 1, None):
            result = self.result(self.post("/v1/chat/completions", document))
            self.assertError(result, 400, "The body must be a JSON object.")
        self.assertNothingStarted()

    def test_model_missing(self) -> None:
        result = self.result(self.post("/v1/chat/completions", {"messages": []}))
        self.assertError(result, 400, "You must provide a model parameter.", param="model")
        self.assertNothingStarted()

    def test_model_not_a_string(self) -> None:
        for model in (1, ["llama-3"], {"id": "llama-3"}, True):
            result = self.result(self.post("/v1/completions", {"model": model}))
            self.assertError(result, 400, "The model parameter must be a string.", param="model")
        self.assertNothingStarted()

    def test_unknown_model(self) -> None:
        for model in ("gpt-4o", "tcp-only", "LLAMA-3"):
            result = self.result(self.post("/v1/embeddings", {"model": model}))
            self.assertError(
                result,
                404,
                f"The model {model!r} does not exist.",
                param="model",
                error_code="model_not_found",
            )
        self.assertNothingStarted()

    def test_wrong_method(self) -> None:
        for path in JSON_PATHS + MULTIPART_PATHS:
            result = self.result(self.client.get("http://lmproxy" + path))
            self.assertError(
                result,
                405,
                f"Method GET is not allowed for {path}; use POST.",
                error_code="method_not_allowed",
            )
            self.assertEqual(result[1].getRawHeaders(b"allow"), [b"POST"])
        self.assertNothingStarted()

    def test_unknown_path(self) -> None:
        for method, path in (("GET", "/"), ("POST", "/v1/chat"), ("GET", "/v1/models/")):
            d = self.client.request(method, "http://lmproxy" + path)
            self.assertError(self.result(d), 404, f"Invalid URL ({method} {path})")
        self.assertNothingStarted()

    def test_url_not_utf8(self) -> None:
        result = self.result(self.client.get("http://lmproxy/v1/models/%FF"))
        self.assertError(result, 400, "The URL is not valid UTF-8.")

    def test_body_too_large(self) -> None:
        """Over max_body_bytes (as Content-Length says): 413; at the limit: forwarded."""
        self.make_running()
        document = {"model": "llama-3", "pad": ""}
        at_limit = json.dumps(document).encode()
        at_limit = at_limit.replace(b'""', b'"' + b"x" * (100 - len(at_limit)) + b'"')
        over = at_limit.replace(b'"x', b'"xx')
        self.assertEqual((len(at_limit), len(over)), (100, 101))
        result = self.result(self.post("/v1/chat/completions", over))
        self.assertError(
            result,
            413,
            "The request body is larger than the limit of 100 bytes.",
            error_code="request_too_large",
        )
        self.assertNothingStarted()
        result = self.result(self.post("/v1/chat/completions", at_limit))
        self.assertEqual(result[0], 200)
        self.assertEqual(self.server.bodies, [at_limit])

    def test_multipart_too_large(self) -> None:
        body = multipart([("model", b"llama-3", None), ("file", b"\x00" * 100, "a.wav")])
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        result = self.result(self.post("/v1/audio/translations", body, headers=headers))
        self.assertEqual(result[0], 413)
        self.assertNothingStarted()

    def test_multipart_errors(self) -> None:
        cases = [
            ({"Content-Type": "application/json"}, b"{}"),
            ({"Content-Type": "multipart/form-data"}, b""),
        ]
        for headers, body in cases:
            result = self.result(self.post("/v1/audio/transcriptions", body, headers=headers))
            self.assertError(result, 400, "The body must be multipart/form-data with a boundary.")
        self.assertNothingStarted()

    def test_internal_error(self) -> None:
        """A bug answers a JSON 500 (and is logged), never a traceback page."""
        self.backends.acquire = lambda service: fail(RuntimeError("bug"))  # type: ignore[method-assign]
        result = self.result(self.post("/v1/chat/completions", {"model": "llama-3"}))
        self.assertError(result, 500, "Internal error in lmproxy.", "server_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LifecycleTests(ProxyTestCase):
    """Waiting for a start, leases, and clients or backends that go away."""

    def test_waits_for_start(self) -> None:
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        self.assertNoResult(d)
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        self.assertEqual(self.server.requests, [])
        self.backends.finish_start("chat")
        code, _, body = self.result(d)
        self.assertEqual((code, json.loads(body)["host"]), (200, "127.0.0.1:9001"))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_failed_start(self) -> None:
        """Every request waiting for a start that fails gets a 503."""
        waiting = [self.post(path, {"model": "llama-3"}) for path in JSON_PATHS[:3]]
        self.pump()
        self.assertEqual(self.backends.counts("chat"), (3, 0))
        self.backends.fail_start("chat", "service 'chat' failed to start: exit status 1")
        for d in waiting:
            self.assertError(
                self.result(d),
                503,
                "service 'chat' failed to start: exit status 1",
                "server_error",
                error_code="service_unavailable",
            )
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.server.requests, [])

    def test_failed_start_says_when_and_whether_to_retry(self) -> None:
        """
        The 503 of a failed start carries the server's last lines,
        C{Retry-After} (its back-off, rounded up) and, when retrying cannot
        help, C{x-should-retry: false}, which OpenAI's SDKs obey.
        """
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        error = ServiceUnavailable(
            "service 'chat' failed to start: process exited with status 1 while starting",
            retry_after=0.4,
            retryable=False,
            output_tail=("loading", "CUDA error: out of memory"),
        )
        self.backends.fail_start("chat", error=error)
        code, headers, body = self.result(d)
        self.assertEqual(code, 503)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(headers.getRawHeaders(b"x-should-retry"), [b"false"])
        self.assertEqual(
            json.loads(body)["error"]["message"],
            "service 'chat' failed to start: process exited with status 1 while starting\n"
            "Last output of the server:\nloading\nCUDA error: out of memory",
        )

    def test_retryable_failure_without_back_off(self) -> None:
        """Nothing known about retrying: neither header."""
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        self.backends.fail_start("chat", "gave up waiting")
        _, headers, _ = self.result(d)
        self.assertIsNone(headers.getRawHeaders(b"retry-after"))
        self.assertIsNone(headers.getRawHeaders(b"x-should-retry"))

    def test_client_leaves_while_waiting(self) -> None:
        """Its wait is cancelled at once; the start then forwards nothing."""
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        self.assertEqual(self.backends.counts("chat"), (1, 0))
        d.cancel()
        self.pump()
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.backends.finish_start("chat")
        self.pump()
        self.assertEqual(self.server.requests, [])
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_lease_held_until_response_ends(self) -> None:
        self.make_running()
        self.server.handler = lambda request, body: NOT_DONE_YET
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.server.requests[0].write(b"partial ")
        self.pump()
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.server.requests[0].finish()
        code, _, body = self.result(d)
        self.assertEqual((code, body), (200, b"partial "))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_stream_arrives_in_chunks(self) -> None:
        """Each event reaches the client when the backend sends it."""
        self.make_running()
        events = [b'data: {"n": %d}\n\n' % n for n in range(3)] + [b"data: [DONE]\n\n"]

        def stream(request: Request, body: bytes) -> int:
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(events[0])
            for n, event in enumerate(events[1:], 1):
                self.clock.callLater(n, request.write, event)
            self.clock.callLater(len(events), request.finish)
            return NOT_DONE_YET

        self.server.handler = stream
        d = self.post("/v1/chat/completions", {"model": "llama-3", "stream": True})
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        body = Chunks()
        response.deliverBody(body)
        self.pump()
        self.assertEqual(body.chunks, events[:1])
        for n in range(1, len(events)):
            self.clock.advance(1)
            self.pump()
            self.assertEqual(body.chunks, events[: n + 1])
            self.assertIsNone(body.ended)
            self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.clock.advance(1)
        self.pump()
        self.assertIsNotNone(body.ended)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_client_leaves_mid_stream(self) -> None:
        """The backend request is dropped and the lease released."""
        self.make_running()

        def stream(request: Request, body: bytes) -> int:
            request.write(b"data: 1\n\n")
            return NOT_DONE_YET

        self.server.handler = stream
        d = self.post("/v1/chat/completions", {"model": "llama-3", "stream": True})
        self.pump()
        body = Chunks()
        self.successResultOf(d).deliverBody(body)
        self.pump()
        self.assertEqual((body.chunks, self.server.disconnects), ([b"data: 1\n\n"], []))
        body.transport.stopProducing()
        self.pump()
        self.assertEqual(len(self.server.disconnects), 1)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_client_leaves_before_answer(self) -> None:
        """While the backend computes: the backend request is dropped too."""
        self.make_running()
        self.server.handler = lambda request, body: NOT_DONE_YET
        d = self.post("/v1/chat/completions", {"model": "llama-3"})
        self.pump()
        self.assertEqual(len(self.server.requests), 1)
        with capturedLogs() as events:
            d.cancel()
            self.pump()
        self.failureResultOf(d, ResponseNeverReceived)
        # One plain line says what happened; no error, no raw Failure list.
        lines = [formatEvent(e) for e in events]
        self.assertEqual(
            lines, ["POST /v1/chat/completions -> chat: the client left before the response"]
        )
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertEqual(len(self.server.disconnects), 1)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_backend_dies_mid_stream(self) -> None:
        """A chunked response cut short ends as an error, after what was sent."""
        self.make_running()

        def die(request: Request, body: bytes) -> int:
            request.write(b"data: 1\n\n")
            self.clock.callLater(1, request.channel.transport.abortConnection)
            return NOT_DONE_YET

        self.server.handler = die
        d = self.post("/v1/chat/completions", {"model": "llama-3", "stream": True})
        self.pump()
        body = treq.content(self.successResultOf(d))
        self.pump()
        self.assertNoResult(body)
        self.clock.advance(1)
        self.pump()
        # No last chunk: the client's HTTP parser sees the body cut.
        self.failureResultOf(body, ResponseFailed)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_backend_dies_mid_sized_response(self) -> None:
        """A response with Content-Length cut short: the client's connection closes."""
        self.make_running()

        def die(request: Request, body: bytes) -> int:
            request.setHeader(b"Content-Length", b"100")
            request.write(b"0123456789")
            request.channel.transport.abortConnection()
            return NOT_DONE_YET

        self.server.handler = die
        d = self.post("/v1/embeddings", {"model": "llama-3"})
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.length, 100)
        body = Chunks()
        response.deliverBody(body)
        self.pump()
        self.assertEqual(body.chunks, [b"0123456789"])
        assert body.ended is not None
        self.assertTrue(body.ended.check(ResponseFailed))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_backend_closes_without_answer(self) -> None:
        self.make_running()

        def hang_up(request: Request, body: bytes) -> int:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET

        self.server.handler = hang_up
        result = self.result(self.post("/v1/chat/completions", {"model": "llama-3"}))
        self.assertError(
            result,
            502,
            "Service 'chat' closed the connection without a response.",
            "server_error",
            error_code="bad_gateway",
        )
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_reconnect(self) -> None:
        """A refused connection asks the lease to reconnect, then retries once."""
        self.make_running("embed")
        self.agent.refusals[9002] = 1
        result = self.result(self.post("/v1/embeddings", {"model": "embedder"}))
        self.assertEqual((result[0], json.loads(result[2])["host"]), (200, "127.0.0.1:9002"))
        self.assertEqual(self.backends.reconnects, ["embed"])
        self.assertEqual(self.backends.acquired, ["embed", "embed"])
        self.assertEqual(self.backends.counts("embed"), (0, 0))

    def test_reconnect_refused(self) -> None:
        """Without RestartOnConnectionFailure, reconnect fails: 503."""
        self.make_running("chat")
        self.agent.refusals[9001] = 1
        result = self.result(self.post("/v1/chat/completions", {"model": "llama-3"}))
        self.assertError(
            result,
            503,
            "could not connect to service 'chat'",
            "server_error",
            error_code="service_unavailable",
        )
        self.assertEqual(self.backends.reconnects, ["chat"])
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_refused_after_reconnect(self) -> None:
        """Only one retry: a second refusal is a 503."""
        self.make_running("embed")
        self.agent.refusals[9002] = 2
        result = self.result(self.post("/v1/embeddings", {"model": "embedder"}))
        self.assertError(
            result,
            503,
            "Could not connect to service 'embed': Connection was refused by other side.",
            "server_error",
            error_code="service_unavailable",
        )
        self.assertEqual(self.backends.reconnects, ["embed"])
        self.assertEqual(self.backends.counts("embed"), (0, 0))
        self.assertEqual(self.server.requests, [])


class HeaderTests(SynchronousTestCase):
    """L{end_to_end_headers}."""

    def test_drops_hop_by_hop(self) -> None:
        headers = Headers(
            {
                b"Connection": [b"keep-alive, X-Private"],
                b"X-Private": [b"1"],
                b"Keep-Alive": [b"timeout=5"],
                b"Proxy-Authorization": [b"Basic x"],
                b"Proxy-Connection": [b"keep-alive"],
                b"TE": [b"trailers"],
                b"Trailer": [b"X-Checksum"],
                b"Transfer-Encoding": [b"chunked"],
                b"Upgrade": [b"h2c"],
                b"Authorization": [b"Bearer k"],
                b"X-Custom": [b"a", b"b"],
                b"Host": [b"lmproxy"],
            }
        )
        kept = end_to_end_headers(headers, frozenset({b"host"}))
        self.assertEqual(
            sorted(kept.getAllRawHeaders()),
            [(b"Authorization", [b"Bearer k"]), (b"X-Custom", [b"a", b"b"])],
        )


class Wire:
    """
    The app's own site serving a client connection, forwarding with
    L{backend_agent}; both connections are C{StringTransport}s that the test
    reads and writes.
    """

    def __init__(
        self, backends: FakeBackends, max_body_bytes: int = 1000, config: Config = CONFIG
    ) -> None:
        self.reactor = MemoryReactorClock()
        config = evolve(config, openai_max_body_bytes=max_body_bytes)
        self.api = api = OpenAiApi(backends, config, backend_agent(self.reactor), self.reactor)
        self.client = StringTransport()
        self.channel = api.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.channel.makeConnection(self.client)

    def backend(self) -> tuple[Protocol, StringTransport]:
        """Accept the connection the agent opened last."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def response(self, raw: bool = False) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
        """
        Status line, headers (but Date) and body (decoded from chunks unless
        C{raw}) the client has received; clears them.
        """
        head, _, body = self.client.value().partition(b"\r\n\r\n")
        self.client.clear()
        status, *lines = head.split(b"\r\n")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, _, value = line.partition(b": ")
            if name.lower() != b"date":
                headers.setdefault(name.lower(), []).append(value)
        if headers.get(b"transfer-encoding") == [b"chunked"] and not raw:
            body = dechunk(body)
        return status, headers, body


def dechunk(data: bytes) -> bytes:
    """The payload of a complete chunked body."""
    payload = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        if int(size, 16) == 0:
            return payload
        payload, data = payload + data[: int(size, 16)], data[int(size, 16) + 2 :]


def forwarded(transport: StringTransport) -> tuple[bytes, list[bytes], bytes]:
    """Request line, header lines (sorted) and body a backend has received."""
    head, _, body = transport.value().partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    return request_line, sorted(lines), body


class WireTests(SynchronousTestCase):
    """Behaviour that shows only in the bytes on the connections."""

    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.backends.set_state("embed", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def test_forwarded_bytes(self) -> None:
        """Hop-by-hop headers are dropped both ways; Host is the backend's."""
        body = b'{"model": "llama-3"}'
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions?stream=1 HTTP/1.1\r\n"
            b"Host: lmproxy.example:8080\r\n"
            b"Authorization: Bearer sk-1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 20\r\n"
            b"Connection: keep-alive, X-Hop\r\n"
            b"X-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Authorization: Basic eA==\r\n"
            b"TE: trailers\r\n"
            b"X-Request-Id: r-1\r\n"
            b"\r\n" + body
        )
        protocol, backend = self.wire.backend()
        self.assertEqual(
            forwarded(backend),
            (
                b"POST /v1/chat/completions?stream=1 HTTP/1.1",
                [
                    b"Authorization: Bearer sk-1",
                    b"Content-Length: 20",
                    b"Content-Type: application/json",
                    b"Host: 127.0.0.1:9001",
                    b"X-Request-Id: r-1",
                ],
                body,
            ),
        )
        protocol.dataReceived(
            b"HTTP/1.1 201 Made\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 2\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Authenticate: Basic\r\n"
            b"Server: llama.cpp\r\n"
            b"X-Backend: 1\r\n"
            b"\r\n{}"
        )
        self.assertEqual(
            self.wire.response(),
            (
                b"HTTP/1.1 201 Made",
                {
                    b"server": [b"llama.cpp"],
                    b"content-type": [b"application/json"],
                    b"x-backend": [b"1"],
                    b"content-length": [b"2"],
                },
                b"{}",
            ),
        )
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_no_pinning(self) -> None:
        """One keep-alive client connection, two models, two backends, in turn."""
        connections: dict[int, tuple[Protocol, StringTransport]] = {}
        for model, port in (("llama-3", 9001), ("embedder", 9002), ("Модель", 9001)):
            body = json.dumps({"model": model}).encode()
            opened = len(self.wire.reactor.tcpClients)
            self.wire.channel.dataReceived(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: lmproxy\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            if len(self.wire.reactor.tcpClients) > opened:
                self.assertEqual(self.wire.reactor.tcpClients[-1][:2], ("127.0.0.1", port))
                connections[port] = self.wire.backend()
            protocol, backend = connections[port]
            self.assertEqual(
                forwarded(backend)[1],
                [b"Content-Length: %d" % len(body), b"Host: 127.0.0.1:%d" % port],
            )
            backend.clear()
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n%d" % port)
            status, _, answer = self.wire.response()
            self.assertEqual((status, answer), (b"HTTP/1.1 200 OK", b"%d" % port))
            self.assertFalse(self.wire.client.disconnecting)
        self.assertEqual(self.backends.acquired, ["chat", "embed", "chat"])
        # The pool reused the first backend connection for the third request.
        self.assertEqual(sorted(connections), [9001, 9002])
        self.assertEqual(len(self.wire.reactor.tcpClients), 2)

    def test_backend_connections_log_nothing(self) -> None:
        """
        A new backend connection logs no "Starting factory" / "Stopping
        factory" lines (Twisted's, for every connection of a plain pool).
        """
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        _, _, factory, _, _ = self.wire.reactor.tcpClients[-1]
        with capturedLogs() as events:
            # What a real connector does around a connection attempt.
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events if "factory" in formatEvent(e)], [])

    def test_ipv6_backend(self) -> None:
        """An IPv6 address is connected to as such, and bracketed in Host."""
        self.backends.backend_addresses["chat"] = ("::1", 9001)
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        self.assertEqual(self.wire.reactor.tcpClients[-1][:2], ("::1", 9001))
        _, backend = self.wire.backend()
        self.assertIn(b"Host: [::1]:9001", forwarded(backend)[1])

    def test_flow_control(self) -> None:
        """A client that cannot keep up pauses the backend, and resumes it."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        protocol, backend = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        status, headers, body = self.wire.response(raw=True)
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"9\r\ndata: 1\n\n\r\n"))
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        self.assertEqual(backend.producerState, "producing")
        # What the client's TCP transport does when its send buffer fills, then drains.
        self.wire.client.producer.pauseProducing()
        self.assertEqual(backend.producerState, "paused")
        self.wire.client.producer.resumeProducing()
        self.assertEqual(backend.producerState, "producing")
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.wire.client.value(), b"0\r\n\r\n")
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_client_gone_stops_backend(self) -> None:
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        protocol, backend = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        # Aborted: the backend sees its connection reset, and stops generating.
        self.assertTrue(backend.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_backend_dies_mid_stream(self) -> None:
        """A chunked response cut short: the client connection closes without the last chunk."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        protocol, _ = self.wire.backend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        protocol.connectionLost(Failure(ConnectionLost()))
        _, _, body = self.wire.response(raw=True)
        self.assertEqual(body, b"9\r\ndata: 1\n\n\r\n")
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def test_backend_dies_mid_sized_response(self) -> None:
        """Content-Length promised and not delivered: the client connection is closed."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b'Content-Length: 20\r\n\r\n{"model": "llama-3"}'
        )
        protocol, _ = self.wire.backend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        self.assertEqual(self.backends.counts("chat"), (0, 1))
        protocol.connectionLost(Failure(ConnectionLost()))
        _, headers, body = self.wire.response()
        self.assertEqual((headers[b"content-length"], body), ([b"100"], b"0123456789"))
        self.assertTrue(self.wire.client.disconnecting)
        self.wire.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.backends.counts("chat"), (0, 0))

    def assertRefused(self) -> None:
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(headers[b"content-type"], [JSON_CONTENT_TYPE])
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertEqual(headers[b"content-length"], [b"%d" % len(body)])
        error = {
            "message": "The request body is larger than the limit of 1000 bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        self.assertEqual(json.loads(body), {"error": error})
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.backends.acquired, [])

    def test_body_too_large_refused_early(self) -> None:
        """Content-Length over the limit: 413 before the body, and no 100 Continue."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1001\r\n\r\n"
        )
        self.assertRefused()
        self.wire.channel.dataReceived(b"x" * 1001)
        self.assertEqual(self.wire.client.value(), b"")

    def test_chunked_body_too_large(self) -> None:
        """A body without Content-Length is refused once it grows past the limit."""
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n"
        )
        self.assertEqual(self.wire.client.value(), b"")
        self.wire.channel.dataReceived(b"1\r\nx\r\n0\r\n\r\n")
        self.assertRefused()

    def test_body_at_limit(self) -> None:
        body = json.dumps({"model": "llama-3", "pad": "x" * 969}).encode()
        self.assertEqual(len(body), 1000)
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + body + b"\r\n0\r\n\r\n"
        )
        _, backend = self.wire.backend()
        self.assertEqual(forwarded(backend)[2], body)

    def test_multipart_not_parsed_by_site(self) -> None:
        """A malformed multipart body gets our JSON 400, not twisted.web's bare one."""
        self.wire.channel.dataReceived(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 7\r\n\r\ngarbage"
        )
        status, headers, body = self.wire.response()
        self.assertEqual(status, b"HTTP/1.1 400 Bad Request")
        self.assertEqual(headers[b"content-type"], [JSON_CONTENT_TYPE])
        self.assertEqual(
            json.loads(body)["error"]["message"],
            "The multipart/form-data body is malformed:"
            " Invalid form-data cannot parse beyond State.PREAMBLE",
        )
        self.assertEqual(self.backends.acquired, [])
