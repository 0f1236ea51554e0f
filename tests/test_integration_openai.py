"""
Integration tests of the OpenAI-compatible port (issue 3): a real C{twistd -n
lmproxy}, demo model servers as real subprocesses, and the official C{openai}
client (its blocking client, in a thread) as the user of the port.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lmproxy.demo.answers import embedding_vector
from tests.harness import (
    Lmproxy,
    delta_texts,
    demo_service,
    eventually,
    free_ports,
    http,
    openai_client,
    pid_alive,
    stream_chat,
    user_message,
    wait_for,
)

JSON_UTF8 = "application/json; charset=utf-8"
ERROR_KEYS = {"message", "type", "param", "code"}


def _answer_pid(text: str, model: str) -> int:
    """The pid in a demo answer, which reads C{demo(MODEL) pid PID: ...}."""
    match = re.match(rf"demo\({re.escape(model)}\) pid (\d+): ", text)
    if match is None:
        raise AssertionError(f"not an answer of the demo's model {model!r}: {text!r}")
    return int(match.group(1))


def _started_pids(lmproxy: Lmproxy, service: str = r"[^ ]+") -> list[int]:
    """The pids lmproxy spawned for C{service} (default: any), from its "started" lines."""
    return [
        int(pid) for pid in re.findall(rf"\] {service}: started .* as pid (\d+)", lmproxy.output)
    ]


def _chat(client: openai.OpenAI, model: str, text: str = "hi") -> tuple[str, int]:
    """A non-streaming chat: (its answer, the local port of the connection it used)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user_message(text))
    stream = raw.http_response.extensions["network_stream"]
    port = stream.get_extra_info("client_addr")[1]
    return raw.parse().choices[0].message.content or "", port


def _cut_stream(
    client: openai.OpenAI, model: str, text: str
) -> tuple[list[ChatCompletionChunk], Exception]:
    """The chunks of a streamed chat that fails mid-stream, and what it fails with."""
    chunks: list[ChatCompletionChunk] = []
    try:
        with client.chat.completions.create(
            model=model, messages=user_message(text), stream=True
        ) as stream:
            chunks.extend(stream)
    except Exception as e:
        return chunks, e
    raise AssertionError(f"the stream ended without an error after {len(chunks)} chunks")


def _status_error(client: openai.OpenAI, model: str) -> openai.APIStatusError:
    """The error a chat with C{model} fails with."""
    try:
        answer = client.chat.completions.create(model=model, messages=user_message("hi"))
    except openai.APIStatusError as e:
        return e
    raise AssertionError(f"expected an error status, got an answer: {answer}")


class OpenAiPortTests(TestCase):
    """The OpenAI port, used through the official client."""

    timeout = 60

    def client(self, port: int, timeout: float = 30) -> openai.OpenAI:
        """An openai client for C{port}, closed at the end of the test."""
        client = openai_client(port, timeout)
        self.addCleanup(client.close)
        return client

    def assertOpenAiError(self, error: openai.APIStatusError, status: int, code: str) -> None:
        self.assertEqual(error.status_code, status)
        self.assertEqual(error.code, code)
        self.assertEqual(error.response.headers["content-type"], JSON_UTF8)
        document = error.response.json()
        self.assertEqual(list(document), ["error"])
        self.assertEqual(set(document["error"]), ERROR_KEYS)

    async def test_every_endpoint(self) -> None:
        """
        Chat, completion, embeddings, a streamed chat, the model list (every
        id in config order, whether its service runs or not) and one model.
        """
        api, target, tcp_listen, tcp_target, other_target, plain_target = free_ports(6)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "Services": [
                    demo_service(
                        "demo", None, target, OpenAiApi=True, OpenAiApiModels=["org/7b", "small"]
                    ),
                    demo_service("tcp-only", tcp_listen, tcp_target),
                    demo_service(
                        "other", None, other_target, OpenAiApi=True, OpenAiApiModels=["модель 2+q"]
                    ),
                    demo_service("plain", None, plain_target, OpenAiApi=True),
                ],
            },
        )
        await lmproxy.start()
        client = self.client(api)

        models = await deferToThread(lambda: [m.id for m in client.models.list()])
        self.assertEqual(models, ["org/7b", "small", "модель 2+q", "plain"])
        for model_id in ("org/7b", "модель 2+q"):
            # The client percent-encodes the id: /v1/models/org%2F7b.
            entry = await deferToThread(client.models.retrieve, model_id)
            self.assertEqual(
                (entry.id, entry.object, entry.owned_by), (model_id, "model", "lmproxy")
            )
        status, headers, _ = await http("GET", f"http://127.0.0.1:{api}/v1/models")
        self.assertEqual((status, headers["content-type"]), (200, JSON_UTF8))
        self.assertEqual(_started_pids(lmproxy), [], "listing models starts nothing")

        answer, _ = await deferToThread(_chat, client, "small", "Hello there")
        pid = _answer_pid(answer, "small")
        self.assertEqual(answer, f"demo(small) pid {pid}: Hello there")

        completion = await deferToThread(
            client.completions.create, model="org/7b", prompt="Once upon a time"
        )
        self.assertEqual(completion.choices[0].text, f"demo(org/7b) pid {pid}: Once upon a time")

        embeddings = await deferToThread(client.embeddings.create, model="small", input="abc")
        self.assertEqual(embeddings.model, "small")
        self.assertEqual(
            [round(x, 5) for x in embeddings.data[0].embedding],
            [round(x, 5) for x in embedding_vector(b"abc")],
        )

        chunks = await deferToThread(stream_chat, client, "small", "one two three")
        words = delta_texts(chunks)
        # One event per word, relayed one by one.
        self.assertEqual(words, ["demo(small)", " pid", f" {pid}:", " one", " two", " three"])
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")

        self.assertEqual(_started_pids(lmproxy), [pid], "one process served it all")
        self.assertNotIn("-> demo: 200 in", lmproxy.output, "per-request lines are debug-only")
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertFalse(pid_alive(pid))

    async def test_two_models_alternately_on_one_connection(self) -> None:
        """
        One keep-alive client connection asks two models that don't fit
        together in turn: each request is routed on its own (no pinning), and
        each evicts the other model.
        """
        api, ta, tb = free_ports(3)
        lmproxy = Lmproxy(
            self,
            {
                "LogLevel": "Debug",
                "OpenAiApi": {"ListenPort": api},
                "ResourcesAvailable": {"RAM": 10},
                "Services": [
                    demo_service("a", None, ta, OpenAiApi=True, ResourceRequirements={"RAM": 6}),
                    demo_service("b", None, tb, OpenAiApi=True, ResourceRequirements={"RAM": 6}),
                ],
            },
        )
        await lmproxy.start()
        client = self.client(api)
        pids: list[int] = []
        ports: set[int] = set()
        for model in ("a", "b", "a", "b"):
            answer, port = await deferToThread(_chat, client, model)
            pid = _answer_pid(answer, model)
            self.assertNotIn(pid, pids, "a new process for each turn")
            if pids:
                # The previous model was stopped (its process gone) before this one started.
                self.assertFalse(pid_alive(pids[-1]))
            pids.append(pid)
            ports.add(port)
        self.assertEqual(len(ports), 1, "every request on the same client connection")
        self.assertEqual(lmproxy.output.count("a: stopping it to free RAM 2 for b"), 2)
        self.assertEqual(lmproxy.output.count("b: stopping it to free RAM 2 for a"), 1)
        self.assertEqual(lmproxy.output.count("POST /v1/chat/completions -> a: 200 in"), 2)
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_request_waits_while_the_other_model_streams(self) -> None:
        """
        A model with a request in flight is never evicted: a request for a
        model that needs its resources waits until that stream is over.
        """
        api, ta, tb = free_ports(3)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ResourcesAvailable": {"RAM": 10},
                "Services": [
                    demo_service(
                        "a",
                        None,
                        ta,
                        "--token-delay",
                        "0.05",
                        OpenAiApi=True,
                        ResourceRequirements={"RAM": 6},
                    ),
                    demo_service("b", None, tb, OpenAiApi=True, ResourceRequirements={"RAM": 6}),
                ],
            },
        )
        await lmproxy.start()
        client = self.client(api)
        # A's answer would stream for about 15 s: this test ends it from the
        # client's side once b is seen waiting, so the order never depends on timing.
        received: list[str] = []
        stop = threading.Event()
        self.addCleanup(stop.set)  # never leave the thread streaming

        def stream_a() -> None:
            with client.chat.completions.create(
                model="a", messages=user_message("word " * 300), stream=True
            ) as chunks:
                for chunk in chunks:
                    received.append(chunk.choices[0].delta.content or "")
                    if stop.is_set():
                        break

        streaming = deferToThread(stream_a)
        await wait_for(lambda: len(received) >= 5, 30, "a's stream to flow")
        pid_a = _answer_pid("".join(received), "a")
        asking_b: Deferred[tuple[str, int]] = deferToThread(_chat, client, "b")
        await wait_for(lambda: "b: waiting for resources" in lmproxy.output, 20, "b to wait")
        self.assertFalse(streaming.called, "a's stream is still flowing")
        self.assertFalse(asking_b.called, "b waits while a streams")
        self.assertNotIn("b: started", lmproxy.output)
        self.assertTrue(pid_alive(pid_a))
        stop.set()
        await streaming
        answer, _ = await asking_b
        _answer_pid(answer, "b")
        self.assertFalse(pid_alive(pid_a))
        output = lmproxy.output
        self.assertLess(
            output.index("b: waiting for resources"), output.index("a: stopping it to free")
        )
        # Closing the stream on the client's side cancelled the backend's answer.
        await wait_for(
            lambda: "ended by the client" in lmproxy.log_text("a"), 10, "a's stream to be cancelled"
        )
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_backend_crash_mid_stream(self) -> None:
        """
        A model server that dies in the middle of a streamed answer: the
        client's stream fails after the events that came (never a silently
        short answer), /metrics counts one cut answer, and the next request
        starts the model again.
        """
        api, management, target = free_ports(3)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ManagementApi": {"ListenPort": management},
                "Services": [
                    demo_service("crashy", None, target, "--crash-mid-stream", OpenAiApi=True)
                ],
            },
        )
        await lmproxy.start()
        client = self.client(api, timeout=20)
        # The chunked answer ends without its last chunk: the SDK's HTTP client
        # raises (a hang would end in openai.APITimeoutError, not this).
        chunks, error = await deferToThread(_cut_stream, client, "crashy", "one two three")
        self.assertIsInstance(error, openai.APIConnectionError)
        self.assertNotIsInstance(error, openai.APITimeoutError)
        self.assertIn("incomplete chunked read", str(error.__cause__), repr(error.__cause__))
        self.assertEqual(len(chunks), 2, "the two events the demo sends before it dies")
        self.assertEqual(delta_texts(chunks), ["demo(crashy)"])
        (crashed,) = _started_pids(lmproxy, "crashy")
        self.assertEqual(lmproxy.output.count("Backend crashy ended its response early"), 1)
        _, _, body = await http("GET", f"http://127.0.0.1:{management}/metrics")
        metrics = body.decode("utf-8")
        self.assertIn(
            'lmproxy_openai_responses_cut_total{model="crashy",service="crashy"} 1.0', metrics
        )
        # Counted with the status that was sent, not as a client that left.
        self.assertIn(
            'lmproxy_openai_requests_total{code="200",model="crashy",service="crashy"} 1.0',
            metrics,
        )
        # The dying process closes its port before lmproxy can reap it (up to
        # 0.3 s on a loaded machine): until then the service counts as running,
        # and a refused connection is a 503 (no RestartOnConnectionFailure).
        await wait_for(
            lambda: "on its own; service stopped" in lmproxy.output, 10, "lmproxy to see the crash"
        )
        self.assertFalse(pid_alive(crashed))
        answer, _ = await deferToThread(_chat, client, "crashy", "again")
        restarted = _answer_pid(answer, "crashy")
        self.assertEqual(_started_pids(lmproxy, "crashy"), [crashed, restarted])
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_failed_start_fails_every_waiting_request(self) -> None:
        """
        Four requests wait for one start, which fails: one process was
        spawned, and each request gets an OpenAI-shaped 503.
        """
        api, management, target = free_ports(3)
        gate = Path(self.mktemp()).resolve()
        broken = {
            "Name": "broken",
            "OpenAiApi": True,
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": target,
            # Never listens; exits with status 3 once the test opens the gate.
            "Command": "/bin/sh",
            "Args": f"-c 'until [ -e {gate} ]; do sleep 0.01; done; echo giving up; exit 3'",
            "StartupTimeoutMilliseconds": 30000,
        }
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ManagementApi": {"ListenPort": management},
                "Services": [broken],
            },
        )
        await lmproxy.start()
        client = self.client(api)
        requests = [deferToThread(_status_error, client, "broken") for _ in range(4)]

        # The management API tells when all four wait, so no timing is assumed.

        async def all_waiting() -> bool:
            _, _, body = await http("GET", f"http://127.0.0.1:{management}/status")
            (service,) = json.loads(body)["services"]
            return bool(service["waiting_connections"] == 4 and service["status"] == "starting")

        await eventually(all_waiting, 20, "the 4 requests to wait for the start")
        gate.touch()
        for request in requests:
            error = await request
            self.assertOpenAiError(error, 503, "service_unavailable")
            self.assertIsInstance(error, openai.InternalServerError)
            self.assertEqual(error.type, "server_error")
            self.assertIn("'broken' failed to start", error.message)
            self.assertIn("status 3", error.message)
        self.assertEqual(len(_started_pids(lmproxy, "broken")), 1, "a single process spawned")
        self.assertIn("[broken/stdout] giving up", lmproxy.output)
        # /metrics counted the four answers, and nothing waits any more.
        _, _, body = await http("GET", f"http://127.0.0.1:{management}/metrics")
        metrics = body.decode("utf-8")
        self.assertIn(
            'lmproxy_openai_requests_total{code="503",model="broken",service="broken"} 4.0',
            metrics,
        )
        self.assertIn('lmproxy_openai_requests_waiting{service="broken"} 0.0', metrics)
        self.assertIn('lmproxy_openai_request_wait_seconds_count{service="broken"} 0.0', metrics)
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_bad_requests_start_nothing(self) -> None:
        """Bad requests get OpenAI-shaped errors, and no service is started."""
        api, target = free_ports(2)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api, "MaxRequestBodyBytes": 4096},
                "Services": [demo_service("demo", None, target, OpenAiApi=True)],
            },
        )
        await lmproxy.start()
        client = self.client(api)

        unknown = await deferToThread(_status_error, client, "no-such-model")
        self.assertIsInstance(unknown, openai.NotFoundError)
        self.assertOpenAiError(unknown, 404, "model_not_found")
        self.assertEqual(unknown.param, "model")
        with self.assertRaises(openai.NotFoundError):
            await deferToThread(client.models.retrieve, "demo/")

        url = f"http://127.0.0.1:{api}/v1/chat/completions"
        cases: list[tuple[bytes, str | None]] = [
            (b'{"messages": []}', "model"),  # no model
            (b'{"model": 7, "messages": []}', "model"),  # not a string
            (b'{"model": "demo", "messages": [', None),  # not JSON
            (b'["demo"]', None),  # not an object
        ]
        for body, param in cases:
            status, headers, content = await http("POST", url, body)
            self.assertEqual((status, headers["content-type"]), (400, JSON_UTF8), body)
            document = json.loads(content)
            self.assertEqual(list(document), ["error"])
            error = document["error"]
            self.assertEqual(set(error), ERROR_KEYS)
            self.assertEqual((error["type"], error["param"]), ("invalid_request_error", param))

        too_large = json.dumps({"model": "demo", "prompt": "x" * 5000}).encode()
        status, _, content = await http("POST", url.replace("chat/", ""), too_large)
        self.assertEqual(status, 413, "over the configured MaxRequestBodyBytes")
        self.assertEqual(json.loads(content)["error"]["code"], "request_too_large")

        self.assertEqual(_started_pids(lmproxy), [])
        self.assertEqual(await lmproxy.stop(), 0)


class BrokenModelTests(TestCase):
    """A model whose server exits as it starts costs only its own clients."""

    timeout = 60

    async def test_one_sdk_call_one_failed_start(self) -> None:
        """
        The openai SDK (its default two retries on) asks once for a model
        whose server exits with "CUDA error: out of memory": one start fails
        (``x-should-retry: false`` stops the retries), the error carries the
        server's last line, and during the back-off the next call is answered
        at once without evicting the working model again.
        """
        api, manage, good_target, bad_target = free_ports(4)
        crash = "import sys; sys.stderr.write('CUDA error: out of memory\\n'); sys.exit(1)"
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ManagementApi": {"ListenPort": manage},
                "ResourcesAvailable": {"VRAM": 10},
                "Services": [
                    demo_service(
                        "good", None, good_target, OpenAiApi=True, ResourceRequirements={"VRAM": 6}
                    ),
                    {
                        "Name": "bad",
                        "Command": sys.executable,
                        "Args": f'-c "{crash}"',
                        "ProxyTargetPort": str(bad_target),
                        "OpenAiApi": True,
                        "ResourceRequirements": {"VRAM": 6},
                    },
                ],
            },
        )
        await lmproxy.start()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{api}/v1", api_key="unused", max_retries=2, timeout=30
        )
        self.addCleanup(client.close)
        await deferToThread(_chat, client, "good")

        error = await deferToThread(_status_error, client, "bad")
        # At once, within the back-off (1 s): answered without a start.
        again = await deferToThread(_status_error, client, "bad")
        self.assertEqual(error.status_code, 503)
        self.assertIn("CUDA error: out of memory", error.message)
        self.assertEqual(error.response.headers["x-should-retry"], "false")
        self.assertEqual(error.response.headers["retry-after"], "1")
        self.assertEqual(again.status_code, 503)
        self.assertIn("next try in", again.message)

        async def status(name: str) -> dict[str, Any]:
            _, _, body = await http("GET", f"http://127.0.0.1:{manage}/status")
            [service] = [s for s in json.loads(body)["services"] if s["name"] == name]
            return service

        bad = await status("bad")
        self.assertEqual((bad["starts"], bad["failed_starts"]), (1, 1))
        self.assertEqual(bad["last_failure"]["output_tail"], ["CUDA error: out of memory"])
        # good was evicted for the one attempt, and only once; it serves again.
        self.assertEqual((await status("good"))["evictions"], 1)
        await deferToThread(_chat, client, "good")
        self.assertEqual((await status("good"))["status"], "running")
        self.assertEqual(await lmproxy.stop(), 0)
