"""
Integration tests of the OpenAI port's passthrough, C{/upstream/{model}/{path}}:
a real C{twistd -n lmproxy}, the demo model server and a raw streaming
backend (C{tests/stream_echo_server.py}) as real subprocesses, and real
clients (raw sockets, C{treq}, C{urllib}, the C{openai} package).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.harness import (
    Lmproxy,
    RawClient,
    delta_texts,
    demo_service,
    free_ports,
    http,
    openai_client,
    raw_connect,
    stream_chat,
    wait_for,
)

ECHO_SERVER = Path(__file__).with_name("stream_echo_server.py")


def _echo_service(name: str, target_port: int, **keys: Any) -> dict[str, Any]:
    """A service that runs the raw streaming echo backend."""
    service: dict[str, Any] = {
        "Name": name,
        "ProxyTargetHost": "127.0.0.1",
        "ProxyTargetPort": str(target_port),
        "Command": sys.executable,
        "Args": f"{ECHO_SERVER} --port {target_port}",
        "OpenAiApi": True,
    }
    service.update(keys)
    return service


def _urllib(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """One blocking request with the standard library (call it in a thread)."""
    with urllib.request.urlopen(url, data=data, timeout=30) as response:
        return response.status, response.read()


class PassthroughTests(TestCase):
    """C{/upstream/...} through a real lmproxy, to real backends."""

    timeout = 60

    async def start(self) -> tuple[Lmproxy, int]:
        api, demo, echo = free_ports(3)
        lmproxy = Lmproxy(
            self,
            {
                # The passthrough's bodies are not bound by it.
                "OpenAiApi": {"ListenPort": api, "MaxRequestBodyBytes": 1024 * 1024},
                "Services": [
                    demo_service("demo", None, demo, OpenAiApi=True, OpenAiApiModels=["org/demo"]),
                    _echo_service("echo", echo, OpenAiApiModels=["org/echo"]),
                ],
            },
        )
        await lmproxy.start()
        return lmproxy, api

    async def raw(self, port: int, data: bytes) -> RawClient:
        client = await raw_connect(port)
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        client.send(data)
        return client

    async def test_get_and_post(self) -> None:
        """
        A GET and a POST with raw HTTP, treq and urllib: the demo server
        (started for the first) answers its own paths; an unknown model is a 404.
        """
        lmproxy, api = await self.start()
        base = f"http://127.0.0.1:{api}/upstream"

        client = await self.raw(api, b"GET /upstream/org/demo/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.closed
        head, _, body = bytes(client.received).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(json.loads(body), {"status": "ok"})

        client = await self.raw(
            api,
            b"POST /upstream/org%2Fdemo/echo HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        )
        await client.closed
        self.assertTrue(bytes(client.received).endswith(b"\r\n\r\nhello"))

        status, headers, body = await http("GET", f"{base}/org/demo/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["data"][0]["id"], "demo")
        self.assertIn("x-demo-pid", headers)
        status, _, body = await http("POST", f"{base}/org/demo/echo", b"x" * 100_000)
        self.assertEqual((status, body), (200, b"x" * 100_000))

        status, body = await deferToThread(_urllib, f"{base}/org/demo/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        self.assertEqual(
            await deferToThread(_urllib, f"{base}/org/demo/echo", b"abc"), (200, b"abc")
        )

        status, _, body = await http("GET", f"{base}/nope/health")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "model_not_found")
        self.assertNotIn("echo: started", lmproxy.output)

    async def test_openai_client_through_the_passthrough(self) -> None:
        """The openai package, its base URL under /upstream/: a streamed chat (SSE) passes."""
        _, api = await self.start()
        client = openai_client(api, 30)
        self.addCleanup(client.close)
        client.base_url = f"http://127.0.0.1:{api}/upstream/org/demo/v1/"  # type: ignore[assignment]
        chunks = await deferToThread(stream_chat, client, "demo", "one two")
        self.assertEqual(delta_texts(chunks)[-2:], [" one", " two"])

    async def test_streamed_upload(self) -> None:
        """
        A body's first bytes reach the backend (which echoes them) before the
        client sent the rest; the backend sees the rewritten path and its Host.
        """
        _, api = await self.start()
        size = 4 * 1024 * 1024
        client = await self.raw(
            api,
            b"PUT /upstream/org/echo/upload?x=1 HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Content-Length: %d\r\n\r\n" % (2 * size) + b"a" * size,
        )
        await wait_for(
            lambda: bytes(client.received).endswith(b"a" * 1000), 30, "the first half back"
        )
        head, _, body = bytes(client.received).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        line, _, _ = body.partition(b"\n")
        self.assertRegex(line.decode(), r"^PUT /upload\?x=1 HTTP/1.1 127\.0\.0\.1:\d+$")
        self.assertNotIn(b"b", body)
        client.send(b"b" * size)
        await client.closed
        body = bytes(client.received).partition(b"\r\n\r\n")[2].partition(b"\n")[2]
        self.assertEqual(body, b"a" * size + b"b" * size)

    async def test_websocket_upgrade(self) -> None:
        """An upgraded connection carries bytes both ways until the client closes."""
        _, api = await self.start()
        client = await self.raw(
            api,
            b"GET /upstream/org/echo/ws?clientId=1 HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        await wait_for(lambda: b"\r\n\r\n" in client.received, 30, "the 101")
        self.assertTrue(bytes(client.received).startswith(b"HTTP/1.1 101 "))
        for frame in (b"\x81\x05hello", b"\x81\x05again"):
            client.received.clear()
            client.send(frame)
            await wait_for(lambda f=frame: bytes(client.received) == f, 30, "the echo")
        client.close()
        await client.closed
