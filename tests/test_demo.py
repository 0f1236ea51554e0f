"""
Tests for L{lmproxy.demo}: every route and error without sockets (C{StubTreq},
C{DummyRequest}, a fake clock and reactor), then a few runs of the real process.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import struct
import sys
import time
from contextlib import redirect_stderr
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

import lmproxy
from lmproxy.demo.answers import EMBEDDING_DIMENSIONS, embedding_vector
from lmproxy.demo.api import DemoAPI
from lmproxy.demo.options import CRASH_EXIT_CODE, DemoOptions, parse_args
from lmproxy.demo.output import LineOutput
from lmproxy.demo.server import DemoServer, DemoSite

PID = 4242
BASE = "http://demo.invalid"
log = Logger()


def captureLines(test: SynchronousTestCase) -> tuple[list[str], list[str]]:
    """
    The lines that the demo process would print on its standard output and its
    standard error, from now until C{test} ends.
    """
    lines: list[str] = []
    errors: list[str] = []
    observer = LineOutput(lines.append, errors.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines, errors


def makeAPI(test: SynchronousTestCase, **kwargs: Any) -> tuple[DemoAPI, Clock, list[str]]:
    """
    A L{DemoAPI} with pid L{PID}, on a fake clock that reads 1000, and its output lines.
    """
    clock = Clock()
    clock.advance(1000)
    lines, _ = captureLines(test)
    api = DemoAPI(clock, model=kwargs.pop("model", "demo"), pid=PID, **kwargs)
    return api, clock, lines


class StubClient:
    """
    Drives a L{DemoAPI} through C{StubTreq}: real twisted.web requests, no sockets.
    """

    def __init__(self, test: SynchronousTestCase, api: DemoAPI, clock: Clock) -> None:
        self.test = test
        self.clock = clock
        self.stub = StubTreq(api)

    def _settle(self, d: Deferred[Any]) -> Any:
        # Streamed answers advance with the clock: run it until the answer is complete.
        self.stub.flush()
        while not d.called and self.clock.getDelayedCalls():
            due = min(call.getTime() for call in self.clock.getDelayedCalls())
            self.clock.advance(max(0.0, due - self.clock.seconds()))
            self.stub.flush()
        return self.test.successResultOf(d)

    def request(
        self, method: str, path: str, body: bytes | None = None, **kwargs: Any
    ) -> tuple[Any, bytes]:
        response = self._settle(self.stub.request(method, BASE + path, data=body, **kwargs))
        content = self._settle(self.stub.content(response))
        return response, content

    def json(self, method: str, path: str, obj: Any = None) -> tuple[Any, Any]:
        """
        C{method path} with C{obj} as JSON body; the decoded answer and the response.
        """
        body = None if obj is None else json.dumps(obj).encode()
        response, content = self.request(method, path, body)
        return json.loads(content), response

    def header(self, response: Any, name: bytes) -> bytes | None:
        values = response.headers.getRawHeaders(name)
        return None if values is None else values[0]


class RouteTests(SynchronousTestCase):
    """
    Each route over real twisted.web request handling, without sockets.
    """

    def setUp(self) -> None:
        self.api, self.clock, self.lines = makeAPI(self, model="demo-model")
        self.client = StubClient(self, self.api, self.clock)

    def assertJSONResponse(self, response: Any, code: int) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(self.client.header(response, b"content-type"), b"application/json")
        self.assertEqual(self.client.header(response, b"x-demo-pid"), b"%d" % PID)

    def assertError(self, method: str, path: str, obj: Any, code: int, param: str | None) -> dict:
        body, response = self.client.json(method, path, obj)
        self.assertJSONResponse(response, code)
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
        self.assertIsInstance(body["error"]["message"], str)
        self.assertEqual(body["error"]["param"], param)
        return body["error"]

    def test_health(self) -> None:
        body, response = self.client.json("GET", "/health")
        self.assertJSONResponse(response, 200)
        self.assertEqual(body, {"status": "ok"})

    def test_healthHead(self) -> None:
        response, content = self.client.request("HEAD", "/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(content, b"")

    def test_failHealth(self) -> None:
        api, clock, _ = makeAPI(self, fail_health=True)
        self.client = StubClient(self, api, clock)
        error = self.assertError("GET", "/health", None, 503, None)
        self.assertEqual(error["type"], "unavailable_error")

    def test_models(self) -> None:
        body, response = self.client.json("GET", "/v1/models")
        self.assertJSONResponse(response, 200)
        self.assertEqual(
            body,
            {
                "object": "list",
                "data": [
                    {
                        "id": "demo-model",
                        "object": "model",
                        "created": 1000,
                        "owned_by": "lmproxy-demo",
                    }
                ],
            },
        )

    def test_modelById(self) -> None:
        api, clock, _ = makeAPI(self, model="org/Model+1 ü")
        self.client = StubClient(self, api, clock)
        for path in ("/v1/models/org%2FModel%2B1%20%C3%BC", "/v1/models/org/Model%2B1%20%C3%BC"):
            body, response = self.client.json("GET", path)
            self.assertEqual((response.code, body["id"]), (200, "org/Model+1 ü"))
        error = self.assertError("GET", "/v1/models/other", None, 404, "model")
        self.assertEqual(error["code"], "model_not_found")

    def test_chatCompletion(self) -> None:
        request = {
            "model": "asked-for",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "the last question"},
            ],
        }
        body, response = self.client.json("POST", "/v1/chat/completions", request)
        self.assertJSONResponse(response, 200)
        self.assertTrue(body["id"].startswith("chatcmpl-"))
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["created"], 1000)
        self.assertEqual(body["model"], "asked-for")
        self.assertEqual(
            body["choices"],
            [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": f"demo(asked-for) pid {PID}: the last question",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        )
        self.assertEqual(
            body["usage"], {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
        )

    def test_chatIdsDiffer(self) -> None:
        request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        first = self.client.json("POST", "/v1/chat/completions", request)[0]
        second = self.client.json("POST", "/v1/chat/completions", request)[0]
        self.assertNotEqual(first["id"], second["id"])
        self.assertEqual(first["choices"], second["choices"])

    def test_chatContentParts(self) -> None:
        request = {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look at "},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": "this"},
                    ],
                }
            ],
        }
        body = self.client.json("POST", "/v1/chat/completions", request)[0]
        self.assertEqual(
            body["choices"][0]["message"]["content"], f"demo(m) pid {PID}: look at this"
        )

    def test_chatMaxTokens(self) -> None:
        request = {
            "model": "m",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "one two three"}],
        }
        body = self.client.json("POST", "/v1/chat/completions", request)[0]
        self.assertEqual(body["choices"][0]["message"]["content"], f"demo(m) pid {PID}:")
        self.assertEqual(body["choices"][0]["finish_reason"], "length")
        self.assertEqual(body["usage"]["completion_tokens"], 3)

    def test_completion(self) -> None:
        body, response = self.client.json(
            "POST", "/v1/completions", {"model": "m", "prompt": "once upon"}
        )
        self.assertJSONResponse(response, 200)
        self.assertTrue(body["id"].startswith("cmpl-"))
        self.assertEqual(body["object"], "text_completion")
        self.assertEqual(body["model"], "m")
        self.assertEqual(
            body["choices"],
            [
                {
                    "text": f"demo(m) pid {PID}: once upon",
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        )
        self.assertEqual(
            body["usage"], {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        )

    def test_completionPromptList(self) -> None:
        body = self.client.json("POST", "/v1/completions", {"model": "m", "prompt": ["a", "b"]})[0]
        self.assertEqual(body["choices"][0]["text"], f"demo(m) pid {PID}: b")

    def test_embeddings(self) -> None:
        body, response = self.client.json(
            "POST", "/v1/embeddings", {"model": "e", "input": ["alpha", "beta", "alpha"]}
        )
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["object"], "list")
        self.assertEqual(body["model"], "e")
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        self.assertEqual([d["index"] for d in body["data"]], [0, 1, 2])
        self.assertEqual({d["object"] for d in body["data"]}, {"embedding"})
        vectors = [d["embedding"] for d in body["data"]]
        for vector in vectors:
            self.assertEqual(len(vector), EMBEDDING_DIMENSIONS)
            self.assertAlmostEqual(sum(x * x for x in vector), 1.0)
        self.assertEqual(vectors[0], vectors[2])
        self.assertNotEqual(vectors[0], vectors[1])
        single = self.client.json("POST", "/v1/embeddings", {"model": "e", "input": "beta"})[0]
        self.assertEqual(single["data"][0]["embedding"], vectors[1])
        self.assertEqual(vectors[0], embedding_vector(b"alpha"))

    def test_embeddingsBase64AndDimensions(self) -> None:
        request = {"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 3}
        body = self.client.json("POST", "/v1/embeddings", request)[0]
        packed = base64.b64decode(body["data"][0]["embedding"])
        values = struct.unpack("<3f", packed)
        for got, want in zip(values, embedding_vector(b"x", 3), strict=True):
            self.assertAlmostEqual(got, want, places=6)

    def test_embeddingsTokenArrays(self) -> None:
        one = self.client.json("POST", "/v1/embeddings", {"model": "e", "input": [1, 2, 3]})[0]
        request = {"model": "e", "input": [[1, 2, 3], [4]]}
        two = self.client.json("POST", "/v1/embeddings", request)[0]
        self.assertEqual(len(one["data"]), 1)
        self.assertEqual(len(two["data"]), 2)
        self.assertEqual(one["data"][0]["embedding"], two["data"][0]["embedding"])

    def test_echo(self) -> None:
        for size in (0, 10, 300_000):  # 300 kB: twisted.web keeps it in a temporary file
            body = os.urandom(size)
            response, content = self.client.request(
                "POST", "/echo", body, headers={"content-type": "application/x-test"}
            )
            self.assertEqual(response.code, 200)
            self.assertEqual(content, body)
            self.assertEqual(self.client.header(response, b"content-type"), b"application/x-test")
            self.assertEqual(response.length, size)  # from Content-Length
            self.assertEqual(self.client.header(response, b"x-demo-pid"), b"%d" % PID)

    def test_bytes(self) -> None:
        for n in (0, 1, 65_536, 200_001):
            response, content = self.client.request("GET", f"/bytes?n={n}")
            self.assertEqual(response.code, 200)
            self.assertEqual(len(content), n)
            self.assertEqual(content, (bytes(range(256)) * (n // 256 + 1))[:n])
            self.assertEqual(response.length, n)  # from Content-Length

    def test_bytesBadCount(self) -> None:
        for query in ("", "?n=", "?n=-1", "?n=ten"):
            self.assertError("GET", "/bytes" + query, None, 400, "n")

    def test_badJSON(self) -> None:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            for raw in (b"{bad", b"\xff\xfe", b""):
                response, content = self.client.request("POST", path, raw)
                self.assertJSONResponse(response, 400)
                self.assertEqual(json.loads(content)["error"]["type"], "invalid_request_error")

    def test_badBodies(self) -> None:
        chat = "/v1/chat/completions"
        messages = [{"role": "user", "content": "x"}]
        cases: list[tuple[str, Any, str | None]] = [
            (chat, [1, 2], None),
            (chat, {"messages": messages}, "model"),
            (chat, {"model": 7, "messages": messages}, "model"),
            (chat, {"model": "m"}, "messages"),
            (chat, {"model": "m", "messages": "hi"}, "messages"),
            (chat, {"model": "m", "messages": messages, "stream": "yes"}, "stream"),
            (chat, {"model": "m", "messages": messages, "max_tokens": 0}, "max_tokens"),
            ("/v1/completions", {"prompt": "x"}, "model"),
            ("/v1/completions", {"model": "m", "prompt": 5}, "prompt"),
            ("/v1/embeddings", {"input": "x"}, "model"),
            ("/v1/embeddings", {"model": "m"}, "input"),
            ("/v1/embeddings", {"model": "m", "input": []}, "input"),
            (
                "/v1/embeddings",
                {"model": "m", "input": "x", "encoding_format": "hex"},
                "encoding_format",
            ),
        ]
        for path, body, param in cases:
            error = self.assertError("POST", path, body, 400, param)
            self.assertEqual(error["type"], "invalid_request_error", (path, body))

    def test_notFound(self) -> None:
        for path in ("/", "/nope", "/v1", "/v1/chat", "/health/extra"):
            error = self.assertError("GET", path, None, 404, None)
            self.assertIn(path, error["message"])

    def test_wrongMethod(self) -> None:
        cases = [
            ("POST", "/health", b"GET"),
            ("DELETE", "/v1/models", b"GET"),
            ("GET", "/v1/chat/completions", b"POST"),
            ("GET", "/v1/completions", b"POST"),
            ("PUT", "/v1/embeddings", b"POST"),
            ("GET", "/echo", b"POST"),
            ("POST", "/bytes", b"GET"),
        ]
        for method, path, allowed in cases:
            body, response = self.client.json(method, path, None)
            self.assertJSONResponse(response, 405)
            self.assertEqual(body["error"]["code"], "method_not_allowed")
            self.assertEqual(self.client.header(response, b"allow"), allowed)

    def test_streamOverHTTP(self) -> None:
        """
        A streamed chat answer over real twisted.web is chunked SSE whose deltas add up
        to the non-streamed answer.
        """
        api, clock, _ = makeAPI(self, token_delay=0.25)
        self.client = StubClient(self, api, clock)
        request = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
        plain = self.client.json("POST", "/v1/chat/completions", request)[0]
        response, content = self.client.request(
            "POST", "/v1/chat/completions", json.dumps({**request, "stream": True}).encode()
        )
        self.assertEqual(self.client.header(response, b"content-type"), b"text/event-stream")
        self.assertEqual(self.client.header(response, b"x-demo-pid"), b"%d" % PID)
        events = parseEvents(content)
        self.assertEqual(events[-1], "[DONE]")
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        self.assertEqual(text, plain["choices"][0]["message"]["content"])
        self.assertEqual(clock.seconds(), 1000 + 0.25 * (len(events) - 1))


def parseEvents(content: bytes) -> list[Any]:
    """
    The data of each Server-Sent Event in C{content}: JSON decoded, or "[DONE]".
    """
    assert content.endswith(b"\n\n"), content[-20:]
    events: list[Any] = []
    for block in content.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        data = block[len(b"data: ") :].decode()
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def dummyPost(path: str, obj: Any) -> DummyRequest:
    """
    A L{DummyRequest} for C{POST path} with a JSON body.
    """
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = b"POST"
    request.uri = path.encode()
    request.content = io.BytesIO(json.dumps(obj).encode())
    return request


class StreamTests(SynchronousTestCase):
    """
    The event sequence of streamed answers: one write per event, C{token_delay} apart.
    """

    chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]}

    def render(self, api: DemoAPI, request: DummyRequest) -> None:
        result = api.render(request)
        self.assertIsInstance(result, int)  # NOT_DONE_YET

    def test_chatEvents(self) -> None:
        api, clock, _ = makeAPI(self, token_delay=0.5)
        request = dummyPost("/v1/chat/completions", self.chat)
        self.render(api, request)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/event-stream"]
        )
        self.assertEqual(len(request.written), 1)  # the role delta, at once
        clock.advance(0.49)
        self.assertEqual(len(request.written), 1)
        for expected in range(2, 9):
            clock.advance(0.01 if expected == 2 else 0.5)
            self.assertEqual(len(request.written), expected)
        self.assertEqual(request.finished, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        perWrite = [parseEvents(chunk) for chunk in request.written]
        self.assertEqual({len(e) for e in perWrite}, {1})  # one event per write
        events = [e[0] for e in perWrite]
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        self.assertEqual({c["object"] for c in chunks}, {"chat.completion.chunk"})
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        self.assertEqual({c["model"] for c in chunks}, {"m"})
        deltas = [c["choices"][0]["delta"] for c in chunks]
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        self.assertEqual(deltas[0], {"role": "assistant", "content": ""})
        self.assertEqual(
            [d["content"] for d in deltas[1:-1]], ["demo(m)", " pid", f" {PID}:", " a", " b"]
        )
        self.assertEqual(deltas[-1], {})
        self.assertEqual(reasons, [None] * 6 + ["stop"])

    def test_completionEvents(self) -> None:
        api, clock, _ = makeAPI(self)
        request = dummyPost(
            "/v1/completions", {"model": "m", "prompt": "go", "stream": True, "max_tokens": 2}
        )
        self.render(api, request)
        clock.advance(0)
        events = [parseEvents(chunk)[0] for chunk in request.written]
        self.assertEqual(request.finished, 1)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual({e["object"] for e in events[:-1]}, {"text_completion"})
        self.assertEqual(
            [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events[:-1]],
            [("demo(m)", None), (" pid", None), ("", "length")],
        )

    def test_includeUsage(self) -> None:
        api, clock, _ = makeAPI(self)
        request = dummyPost(
            "/v1/chat/completions", {**self.chat, "stream_options": {"include_usage": True}}
        )
        self.render(api, request)
        clock.advance(0)
        events = [parseEvents(chunk)[0] for chunk in request.written]
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["choices"], [])
        self.assertEqual(
            events[-2]["usage"], {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        )

    def test_clientGoes(self) -> None:
        """
        A client that leaves mid-stream stops the stream: nothing more is written or
        scheduled, and one line tells.
        """
        api, clock, lines = makeAPI(self, token_delay=1.0)
        request = dummyPost("/v1/chat/completions", self.chat)
        self.render(api, request)
        clock.advance(1.0)
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(len(request.written), 2)
        self.assertEqual(request.finished, 0)
        self.assertEqual(
            lines, ["stream of /v1/chat/completions ended by the client after 2 of 8 events"]
        )

    def test_crashMidStream(self) -> None:
        crashed: list[DummyRequest] = []
        api, clock, lines = makeAPI(
            self, token_delay=0.1, crash_mid_stream=True, crash=crashed.append
        )
        request = dummyPost("/v1/chat/completions", self.chat)
        self.render(api, request)
        self.assertEqual(crashed, [])
        clock.advance(0.1)
        self.assertEqual(crashed, [request])
        self.assertEqual(len(request.written), 2)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(request.finished, 0)
        self.assertEqual(lines, ["crashing on purpose after 2 events (--crash-mid-stream)"])

    def test_crashSparesUnstreamedAnswers(self) -> None:
        crashed: list[DummyRequest] = []
        api, _, _ = makeAPI(self, crash_mid_stream=True, crash=crashed.append)
        request = dummyPost("/v1/chat/completions", {**self.chat, "stream": False})
        request.render(api)
        self.assertEqual(request.finished, 1)
        self.assertEqual(crashed, [])


class SiteTests(SynchronousTestCase):
    """
    L{DemoSite} logs one line per request.
    """

    def test_requestLine(self) -> None:
        api, clock, lines = makeAPI(self)
        site = DemoSite(api, reactor=clock)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /health?x=1 HTTP/1.1\r\nHost: demo\r\n\r\n")
        protocol.dataReceived(b"GET /missing HTTP/1.1\r\nHost: demo\r\n\r\n")
        self.assertIn(b"X-Demo-Pid: 4242", transport.value())
        self.assertEqual(
            lines,
            [
                '10.1.2.3 "GET /health?x=1 HTTP/1.1" 200 15',
                '10.1.2.3 "GET /missing HTTP/1.1" 404 106',
            ],
        )
        protocol.connectionLost(Failure(ConnectionDone()))


class FailingListenReactor(MemoryReactorClock):
    """
    A fake reactor whose C{listenTCP} fails like a port in use.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError("Address already in use"))


class ServerTests(SynchronousTestCase):
    """
    L{DemoServer}'s life on a fake reactor: startup delay, listening line, exit-after.
    """

    def makeServer(self, reactor: MemoryReactorClock | None = None, **options: Any) -> None:
        self.reactor = reactor or MemoryReactorClock()
        self.lines, self.errors = captureLines(self)
        self.server = DemoServer(
            self.reactor,  # type: ignore[arg-type]
            DemoOptions(**{"port": 8123, **options}),
            pid=PID,
        )
        self.server.start()

    def test_listensAtOnce(self) -> None:
        self.makeServer(model="tiny")
        self.assertEqual(self.reactor.tcpServers, [])
        self.reactor.advance(0)
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, factory, interface), (8123, self.server.site, "127.0.0.1"))
        self.assertEqual(
            self.lines,
            [f'demo model server "tiny" listening on http://127.0.0.1:8123 pid={PID} at=0.000000'],
        )
        self.assertIs(self.server.site.resource, self.server.api)
        self.assertEqual(self.server.api.model, "tiny")

    def test_startupDelay(self) -> None:
        self.makeServer(startup_delay=2.0)
        self.reactor.advance(1.99)
        self.assertEqual((self.reactor.tcpServers, self.lines), ([], []))
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(len(self.lines), 1)

    def test_ipv6Host(self) -> None:
        self.makeServer(host="::1")
        self.reactor.advance(0)
        self.assertIn("listening on http://[::1]:8123 ", self.lines[0])

    def test_exitAfter(self) -> None:
        self.makeServer(startup_delay=1.0, exit_after=5.0, exit_code=3)
        self.reactor.advance(1.0)  # listening
        self.reactor.advance(4.99)
        self.assertFalse(self.reactor.hasStopped)
        self.reactor.advance(0.01)  # 5 s after listening
        self.assertTrue(self.reactor.hasStopped)
        self.assertEqual(self.server.exit_code, 3)

    def test_runsUntilStopped(self) -> None:
        self.makeServer()
        self.reactor.advance(1_000_000)
        self.assertFalse(self.reactor.hasStopped)
        self.assertEqual(self.server.exit_code, 0)
        [trigger] = self.reactor.triggers["before"]["shutdown"]
        trigger[0](*trigger[1], **trigger[2])
        self.assertEqual(self.lines[-1], f"demo model server pid={PID} stopping")

    def test_cannotListen(self) -> None:
        self.makeServer(reactor=FailingListenReactor())
        self.reactor.advance(0)
        self.assertTrue(self.reactor.hasStopped)
        self.assertEqual(self.server.exit_code, 1)
        self.assertEqual(self.lines, [])
        self.assertEqual(len(self.errors), 1)
        self.assertIn("cannot listen", self.errors[0])


class ParseArgsTests(SynchronousTestCase):
    """
    The command line.
    """

    def test_defaults(self) -> None:
        self.assertEqual(parse_args(["--port", "0"]), DemoOptions(port=0))

    def test_everything(self) -> None:
        options = parse_args(
            [
                "--port",
                "9",
                "--host",
                "::1",
                "--model",
                "m",
                "--startup-delay",
                "1.5",
                "--exit-after",
                "2",
                "--exit-code",
                "4",
                "--spawn-grandchild",
                "/tmp/p",
                "--crash-mid-stream",
                "--token-delay",
                "0.01",
                "--fail-health",
            ]
        )
        self.assertEqual(
            options,
            DemoOptions(
                port=9,
                host="::1",
                model="m",
                startup_delay=1.5,
                exit_after=2.0,
                exit_code=4,
                spawn_grandchild="/tmp/p",
                crash_mid_stream=True,
                token_delay=0.01,
                fail_health=True,
            ),
        )

    def test_rejects(self) -> None:
        for argv in ([], ["--port", "70000"], ["--port", "1", "--token-delay", "-1"]):
            with redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, parse_args, argv)


# -- the real process ------------------------------------------------------------------

LISTENING = re.compile(
    rb'^demo model server "(.*)" listening on http://(.+):(\d+) pid=(\d+) at=[\d.]+$'
)
DEADLINE = 15.0  # seconds; generous for a loaded 2-core machine


class DemoProcess(ProcessProtocol):
    """
    A real C{python -m lmproxy.demo}: its stdout lines, the listening line and its end.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._buffer = b""
        self.listening: Deferred[tuple[str, int, int]] = Deferred()
        self.exited: Deferred[int | None] = Deferred()  # its exit status
        self.ended: Deferred[None] = Deferred()  # ... and every pipe closed
        self.running = False
        self.started = time.monotonic()
        self.listenedAfter: float | None = None
        self.process: IProcessTransport

    @classmethod
    def spawn(cls, test: TestCase, *args: str) -> DemoProcess:
        process = cls()
        root = os.path.dirname(os.path.dirname(os.path.abspath(lmproxy.__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "lmproxy.demo", *args]
        process.started = time.monotonic()
        process.process = reactor.spawnProcess(
            process, sys.executable, argv, env={**os.environ, "PYTHONPATH": path}
        )
        process.running = True
        process.listening.addTimeout(DEADLINE, reactor)
        test.addCleanup(process.kill)
        return process

    def outReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self.lines.append(line)
            match = LISTENING.match(line)
            if match and not self.listening.called:
                self.listenedAfter = time.monotonic() - self.started
                host, port, pid = match.group(2).decode(), int(match.group(3)), int(match.group(4))
                self.listening.callback((host, port, pid))

    def errReceived(self, data: bytes) -> None:
        log.info("demo stderr: {data!r}", data=data)

    def processExited(self, reason: Failure) -> None:
        self.running = False
        self.exited.callback(getattr(reason.value, "exitCode", None))  # None: a signal

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(reason)
        self.ended.callback(None)

    def kill(self) -> Deferred[None]:
        """
        Cleanup: kill the process if it still runs, and wait until it has ended.
        """
        if self.running:
            self.process.signalProcess("KILL")
        self.ended.addTimeout(DEADLINE, reactor)
        return self.ended


class Collect(Protocol):
    """
    Sends one raw HTTP request and collects everything until the server closes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


def rawHTTP(port: int, method: str, path: str, body: bytes = b"") -> Deferred[bytes]:
    """
    C{method path} over a real connection to 127.0.0.1:C{port}; fires with the raw bytes
    of the response once the server has closed the connection.
    """
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    protocol = Collect(request)
    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    d.addCallback(lambda _: protocol.done)
    d.addTimeout(DEADLINE, reactor)
    return d


def processExists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RealProcessTests(TestCase):
    """
    The real C{python -m lmproxy.demo}, on ports chosen by the OS.
    """

    @inlineCallbacks
    def test_listenServeAndStop(self) -> Any:
        """
        With C{--port 0} it prints the real port, answers there, and exits 0 on SIGTERM.
        """
        process = DemoProcess.spawn(self, "--port", "0", "--model", "real")
        host, port, pid = yield process.listening
        log.info("demo listening after {seconds:.3f} s", seconds=process.listenedAfter)
        self.assertEqual((host, pid), ("127.0.0.1", process.process.pid))
        self.assertNotEqual(port, 0)
        response = yield rawHTTP(port, "GET", "/health")
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"\r\nX-Demo-Pid: %d\r\n" % pid, head)
        self.assertEqual(json.loads(body), {"status": "ok"})
        process.process.signalProcess("TERM")
        status = yield process.exited.addTimeout(DEADLINE, reactor)
        self.assertEqual(status, 0)
        yield process.ended
        self.assertIn(b'127.0.0.1 "GET /health HTTP/1.1" 200 15', process.lines)

    @inlineCallbacks
    def test_exitAfter(self) -> Any:
        process = DemoProcess.spawn(self, "--port", "0", "--exit-after", "0.2", "--exit-code", "3")
        yield process.listening
        status = yield process.exited.addTimeout(DEADLINE, reactor)
        self.assertEqual(status, 3)

    @inlineCallbacks
    def test_spawnGrandchild(self) -> Any:
        """
        The grandchild's pid file is there once the server listens; the grandchild runs
        in the server's process group and outlives a SIGTERM to the server alone.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        pidfile = os.path.join(directory, "grandchild.pid")
        process = DemoProcess.spawn(self, "--port", "0", "--spawn-grandchild", pidfile)
        _, _, pid = yield process.listening
        with open(pidfile) as f:
            grandchild = int(f.read())

        def killGrandchild() -> None:
            if processExists(grandchild):
                os.kill(grandchild, signal.SIGKILL)

        self.addCleanup(killGrandchild)
        self.assertTrue(processExists(grandchild))
        self.assertNotEqual(grandchild, pid)
        self.assertEqual(os.getpgid(grandchild), os.getpgid(pid))
        process.process.signalProcess("TERM")
        status = yield process.exited.addTimeout(DEADLINE, reactor)
        self.assertEqual(status, 0)
        self.assertTrue(processExists(grandchild))  # only its process group's end kills it
        killGrandchild()  # it holds the server's stdout: the pipes close now
        yield process.ended.addTimeout(DEADLINE, reactor)

    @inlineCallbacks
    def test_crashMidStream(self) -> Any:
        """
        The client receives exactly two events, then the connection closes and the
        process exits with L{CRASH_EXIT_CODE}.
        """
        process = DemoProcess.spawn(self, "--port", "0", "--crash-mid-stream")
        _, port, _ = yield process.listening
        body = json.dumps(
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
        ).encode()
        response = yield rawHTTP(port, "POST", "/v1/chat/completions", body)
        head, _, chunked = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(chunked.count(b"data: "), 2)
        self.assertNotIn(b"[DONE]", chunked)
        self.assertNotIn(b"\r\n0\r\n\r\n", chunked)  # the chunked body never ends
        status = yield process.exited.addTimeout(DEADLINE, reactor)
        self.assertEqual(status, CRASH_EXIT_CODE)
