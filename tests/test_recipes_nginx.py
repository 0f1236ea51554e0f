"""
Tests of C{conf/nginx-lmproxy.conf}, the recipe of several lmproxy instances
behind nginx: C{nginx -t} accepts it as it is, and, run with its addresses
replaced by ports on 127.0.0.1 that the OS chose, it routes each request to
the real lmproxy that serves its model (by path prefix and by header),
passes a streamed answer on event by event, and serves a box's dashboard API
under the Host name that lmproxy was told to allow.

Skipped where the machine has no C{nginx} (Debian's package C{nginx}, which
.ci/run installs).  Every wait has a deadline; no test asserts a duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.http_headers import Headers

from tests.harness import (
    PROJECT_ROOT,
    Lmproxy,
    ProcessOutput,
    demo_service,
    free_ports,
    http,
    listening_ports,
    wait_for,
)

SNIPPET = PROJECT_ROOT / "conf" / "nginx-lmproxy.conf"
DEADLINE = 30.0  # for any one step: far more than any takes, even on a busy machine
LMPROXY = [sys.executable, "-m", "lmproxy", "-c", "config.json"]
MISTRAL_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
ALLOWED_HOST = "models.example.lan"
"""The snippet's server_name, which box 1's ManagementApi.AllowedHosts names."""

HELD_STREAM = """\
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, release = int(sys.argv[1]), sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        self.wfile.write(b'data: {"first": true}\\n\\n')
        self.wfile.flush()
        while not os.path.exists(release):  # until the test has seen the first event
            time.sleep(0.02)
        self.wfile.write(b"data: [DONE]\\n\\n")

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
"""
A model server whose streamed answer sends one event, then holds the rest
until a file exists: if anything between it and the client buffers, the
client never sees that first event and the test fails at its deadline.
"""


def nginx() -> str:
    """The nginx binary; skips the test where there is none."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise SkipTest("no nginx on this machine (Debian's package nginx)")
    return found


def main_config(prefix: Path, snippet: Path) -> Path:
    """An nginx.conf in C{prefix} that includes C{snippet} in its http block."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(
        f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {snippet};
}}
"""
    )
    return path


class SyntaxTests(TestCase):
    """C{nginx -t} on the file as it is."""

    def test_nginx_t(self) -> None:
        """nginx accepts the snippet, included in an http block, without a warning."""
        binary = nginx()
        prefix = Path(self.mktemp()).resolve()
        config = main_config(prefix, SNIPPET)
        result = subprocess.run(
            [binary, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("test is successful", output)
        self.assertNotIn("[warn]", output)
        self.assertNotIn("[emerg]", output)


class RoutingTests(TestCase):
    """The snippet run in front of two real lmproxy instances."""

    async def test_routes_and_streams(self) -> None:
        """
        Box 1 serves C{qwen} and box 2 C{mistral} and a held stream.  Through
        nginx: C{/models/MODEL/v1/...} reaches the box of MODEL (its
        C{/v1/models} lists that box's models, and a chat is answered by that
        box's server), and so does C{/v1/...} with C{X-Model: MODEL}; a
        streamed answer reaches the client event by event; box 1's
        C{/status} answers through the management server block.
        """
        binary = nginx()
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        (openai1, openai2, management1, qwen, mistral, held, front, admin) = free_ports(8)
        release = work / "release"
        (work / "held.py").write_text(HELD_STREAM)
        box1: dict[str, Any] = {
            "OpenAiApi": {"ListenPort": str(openai1)},
            "ManagementApi": {"ListenPort": str(management1), "AllowedHosts": [ALLOWED_HOST]},
            "Services": [
                demo_service("qwen", None, qwen, OpenAiApi=True, OpenAiApiModels=["qwen"]),
            ],
        }
        box2: dict[str, Any] = {
            "OpenAiApi": {"ListenPort": str(openai2)},
            "Services": [
                demo_service(
                    "mistral", None, mistral, OpenAiApi=True, OpenAiApiModels=[MISTRAL_MODEL]
                ),
                {
                    "Name": "held",
                    "OpenAiApi": True,
                    "ProxyTargetHost": "127.0.0.1",
                    "ProxyTargetPort": str(held),
                    "Command": sys.executable,
                    "Args": f"{work / 'held.py'} {held} {release}",
                },
            ],
        }
        lmproxies = [Lmproxy(self, box, LMPROXY) for box in (box1, box2)]
        for lmproxy in lmproxies:
            await lmproxy.start()

        text = SNIPPET.read_text()
        replacements = {
            "server 10.0.0.11:7070;": f"server 127.0.0.1:{openai1};",
            "server 10.0.0.12:7070;": f"server 127.0.0.1:{openai2};",
            "server 10.0.0.11:7071;": f"server 127.0.0.1:{management1};",
            "listen 8080;": f"listen 127.0.0.1:{front};",
            "listen 8081;": f"listen 127.0.0.1:{admin};",
            # The held stream is a model of box 2, as far as nginx knows.
            "    mistral                             lmproxy_box2;": (
                "    mistral                             lmproxy_box2;\n"
                "    held                                lmproxy_box2;"
            ),
        }
        for old, new in replacements.items():
            self.assertEqual(text.count(old), 1, old)
            text = text.replace(old, new)
        snippet = work / "lmproxy.conf"
        snippet.write_text(text)
        prefix = work / "nginx"
        config = main_config(prefix, snippet)
        process = ProcessOutput()
        argv = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
        argv += ["-g", "daemon off; master_process off;"]
        transport = reactor.spawnProcess(process, binary, argv, env=dict(os.environ))
        pid = transport.pid
        assert pid is not None

        async def stop_nginx() -> None:
            if not process.ended.called:
                os.kill(pid, signal.SIGTERM)
                await process.ended

        self.addCleanup(stop_nginx)
        await wait_for(
            lambda: process.ended.called or {front, admin} <= listening_ports(pid),
            DEADLINE,
            "nginx to listen",
        )
        self.assertFalse(process.ended.called, process.data.decode())
        base = f"http://127.0.0.1:{front}"

        # By path prefix.
        code, _, body = await http("GET", f"{base}/models/qwen/v1/models", timeout=DEADLINE)
        self.assertEqual((code, [m["id"] for m in json.loads(body)["data"]]), (200, ["qwen"]))
        escaped = MISTRAL_MODEL.replace("/", "%2F")
        code, _, body = await http("GET", f"{base}/models/{escaped}/v1/models", timeout=DEADLINE)
        self.assertEqual(
            (code, [m["id"] for m in json.loads(body)["data"]]), (200, [MISTRAL_MODEL, "held"])
        )
        answer = await self.chat(f"{base}/models/qwen/v1/chat/completions", "qwen")
        self.assertIn("demo(qwen)", answer)

        # By header.
        answer = await self.chat(f"{base}/v1/chat/completions", MISTRAL_MODEL, MISTRAL_MODEL)
        self.assertIn(f"demo({MISTRAL_MODEL})", answer)
        self.assertEqual(await self.running(management1), ["qwen"])  # box 2 ran mistral

        # A streamed answer, event by event.
        events = bytearray()
        response = await treq.post(
            f"{base}/v1/chat/completions",
            json.dumps({"model": "held", "stream": True, "messages": []}).encode(),
            headers=Headers({"X-Model": ["held"], "Content-Type": ["application/json"]}),
            persistent=False,
            unbuffered=True,
            timeout=DEADLINE,
        )
        self.assertEqual(response.code, 200)
        done = treq.collect(response, events.extend)
        await wait_for(lambda: b'data: {"first": true}' in events, DEADLINE, "the first event")
        self.assertNotIn(b"[DONE]", events)
        release.write_text("")
        await done
        self.assertTrue(events.endswith(b"data: [DONE]\n\n"), events)

        # Box 1's management API: nginx passes the client's Host, which
        # lmproxy answers when it is an allowed name, and refuses otherwise.
        status = f"http://127.0.0.1:{admin}/status"
        for host, code in ((ALLOWED_HOST, 200), ("rebound.example", 403)):
            response = await treq.get(
                status, headers=Headers({"Host": [host]}), persistent=False, timeout=DEADLINE
            )
            body = await response.content()
            self.assertEqual(response.code, code, body)
        self.assertEqual(
            [s["status"] for s in json.loads(await self.get(status))["services"]], ["running"]
        )

    async def get(self, url: str) -> bytes:
        code, _, body = await http("GET", url, timeout=DEADLINE)
        self.assertEqual(code, 200, body)
        return body

    async def chat(self, url: str, model: str, header: str | None = None) -> str:
        """A chat completion for C{model} at C{url} (with C{X-Model: header}); its text."""
        headers = Headers({"Content-Type": ["application/json"]})
        if header is not None:
            headers.setRawHeaders("X-Model", [header])
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        response = await treq.post(
            url, body.encode(), headers=headers, persistent=False, timeout=DEADLINE
        )
        content = await response.content()
        self.assertEqual(response.code, 200, content)
        return str(json.loads(content)["choices"][0]["message"]["content"])

    async def running(self, management: int) -> list[str]:
        """The services that run, by box 1's C{/status} (asked directly)."""
        body = await self.get(f"http://127.0.0.1:{management}/status")
        return [s["name"] for s in json.loads(body)["services"] if s["status"] == "running"]
