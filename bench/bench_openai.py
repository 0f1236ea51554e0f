"""
Benchmark of lmproxy's OpenAI port against a warm backend.  A script, not a
test: it prints figures and never fails on timing.

It measures, through the proxy and directly to the backend:

1. the median (and p99) time of a small non-streaming chat completion, both
   over keep-alive connections; the difference is what the proxy adds;
2. the delay each Server-Sent Event of a stream gets from backend to client
   (p50/p99/max): a controlled SSE backend inside this script writes one event,
   waits until the client has it, and writes the next, so each event's transit
   is timed on one clock;
3. 200 concurrent streaming chat completions, all of which must be served,
   with the proxy's resident memory before, at its peak and after.

By default it starts the demo model server (``python -m lmproxy.demo``) and a
proxy process that serves ``OpenAiApi`` with a stand-in for the supervisor
(L{FakeBackends} with the services already running), over real sockets.  With
``--target`` it measures a running lmproxy instead (e.g. ``twistd -n lmproxy``)::

    python bench/bench_openai.py --target http://127.0.0.1:7070 \\
        --direct http://127.0.0.1:18081 --model demo --target-pid PID \\
        [--sse-model sse --sse-backend-port 18099]

where ``--direct`` is the backend that lmproxy forwards ``--model`` to (started
and warm), and the optional SSE model is a service of that lmproxy whose
ProxyTargetPort is ``--sse-backend-port`` (this script listens there).

Run it from a checkout with ``PYTHONPATH=. python bench/bench_openai.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

CHAT_PATH = "/v1/chat/completions"
SMALL_CHAT = {
    "model": "",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 8,
}
# One streamed event per word of the demo's reply: this is about 40 events.
STREAM_PROMPT = " ".join(f"word{n}" for n in range(36))


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


# --- processes ---------------------------------------------------------------------------


def start(argv: list[str], listening: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``argv``; wait for the stdout line matching ``listening`` (with the port)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(listening, line)
        if match:
            # Keep draining, so that a chatty child never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(match.group(1))
    raise SystemExit(f"{argv[0]} exited before listening (status {process.wait()})")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid``, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_proxy(demo_port: int, sse_port: int, agent_kind: str) -> None:
    """The proxy process: OpenAiApi over a real socket, the services already running."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IAgent

    from lmproxy.config import Config, ServiceConfig
    from lmproxy.interfaces import ServiceState
    from lmproxy.listen.httpforward import backend_agent
    from lmproxy.listen.openai import OpenAiApi
    from lmproxy.testing import FakeBackends

    config = Config(
        services=(
            ServiceConfig(
                name="demo",
                command="(bench)",
                proxy_target_port=demo_port,
                openai_api=True,
                openai_api_models=("demo",),
            ),
            ServiceConfig(
                name="sse",
                command="(bench)",
                proxy_target_port=sse_port,
                openai_api=True,
                openai_api_models=("sse",),
            ),
        )
    )
    backends = FakeBackends(config, started_at=reactor.seconds())
    for service in config.services:
        backends.set_state(service.name, ServiceState.RUNNING)
    agent: IAgent
    if agent_kind == "plain":
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True))
    else:
        agent = backend_agent(reactor)
    api = OpenAiApi(backends, config, agent, reactor)
    # A backlog of 50 (listenTCP's default) drops SYNs of a burst of new clients,
    # which then retry after a second.
    port = reactor.listenTCP(0, api.site(), backlog=1024, interface="127.0.0.1")  # type: ignore[arg-type]
    print(f"proxy listening on {port.getHost().port} pid={os.getpid()}", flush=True)  # type: ignore[attr-defined]
    reactor.run()


# --- 1. latency of small requests -------------------------------------------------------


def chat_timings(host: str, port: int, model: str, count: int) -> list[float]:
    """Seconds per small chat completion, ``count`` in a row on one keep-alive connection."""
    body = json.dumps({**SMALL_CHAT, "model": model}).encode()
    headers = {"Content-Type": "application/json"}
    connection = http.client.HTTPConnection(host, port)
    timings = []
    for _ in range(count):
        began = time.perf_counter()
        connection.request("POST", CHAT_PATH, body, headers)
        response = connection.getresponse()
        answer = response.read()
        timings.append(time.perf_counter() - began)
        if response.status != 200 or response.will_close:
            raise SystemExit(f"unexpected answer {response.status}: {answer[:200]!r}")
    connection.close()
    return timings


def bench_latency(
    direct: tuple[str, int],
    proxy: tuple[str, int],
    model: str,
    rounds: int,
    per_round: int,
    pid: int | None,
) -> None:
    # Alternate short runs so that load from elsewhere on the machine hits both alike.
    chat_timings(*direct, model, per_round)
    chat_timings(*proxy, model, per_round)
    through_direct: list[float] = []
    through_proxy: list[float] = []
    cpu = 0.0
    for _ in range(rounds):
        through_direct += chat_timings(*direct, model, per_round)
        before = cpu_seconds(pid) if pid is not None else 0.0
        through_proxy += chat_timings(*proxy, model, per_round)
        cpu += cpu_seconds(pid) - before if pid is not None else 0.0
    print(f"\n1. Small non-streaming chat completion, keep-alive, {len(through_proxy)} each")
    for name, samples in (("direct", through_direct), ("via lmproxy", through_proxy)):
        print(
            f"   {name:12} median {micros(statistics.median(samples))}"
            f"   p99 {micros(percentile(samples, 99))}"
        )
    added = statistics.median(through_proxy) - statistics.median(through_direct)
    print(f"   added by lmproxy (median): {micros(added)}   (target < 1 ms)")
    if pid is not None:
        print(f"   lmproxy CPU time per request: {micros(cpu / len(through_proxy))}")


# --- 2. per-event delay of a stream -----------------------------------------------------


def read_request(connection: socket.socket) -> bytes | None:
    """
    One HTTP request with a Content-Length body, as the backend receives it;
    None if the connection closes before a request (a readiness probe).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        received = connection.recv(65536)
        if not received:
            return None
        data += received
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += connection.recv(65536)
    return head


def accept_request(listener: socket.socket) -> socket.socket:
    """
    The next connection to ``listener`` that carries a request, read.  A real
    lmproxy probes the port of a service it starts (connect, then close):
    those connections are skipped.
    """
    while True:
        backend, _ = listener.accept()
        if read_request(backend) is not None:
            return backend
        backend.close()


def event_delays(
    listener: socket.socket, client_to: tuple[str, int], model: str, count: int
) -> list[float]:
    """
    Stream ``count`` events from the backend ``listener`` to a client connected
    to ``client_to`` (the backend itself, or a proxy forwarding ``model`` to it),
    one at a time: the seconds each took from the backend's send to the client.
    """
    client = socket.create_connection(client_to)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps({"model": model, "stream": True, "messages": []}).encode()
    client.sendall(
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (CHAT_PATH.encode(), len(body), body)
    )
    backend = accept_request(listener)
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    backend.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    received = b""
    delays = []
    for n in range(count):
        event = b'data: {"n": %d}\n\n' % n
        began = time.perf_counter()
        backend.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        while event not in received:
            data = client.recv(65536)
            if not data:
                raise SystemExit(f"the stream ended after {n} events")
            received += data
        delays.append(time.perf_counter() - began)
        received = received[received.index(event) + len(event) :]
    backend.sendall(b"0\r\n\r\n")
    backend.close()
    client.close()
    return delays


def bench_events(listener: socket.socket, proxy: tuple[str, int], model: str, count: int) -> None:
    host, port = listener.getsockname()
    direct = event_delays(listener, (host, port), model, count)
    through_proxy = event_delays(listener, proxy, model, count)
    print(f"\n2. Per-event delay of an SSE stream, backend send -> client receive, {count} events")
    for name, samples in (("direct", direct), ("via lmproxy", through_proxy)):
        print(
            f"   {name:12} p50 {micros(percentile(samples, 50))}"
            f"   p99 {micros(percentile(samples, 99))}   max {micros(max(samples))}"
        )
    added = percentile(through_proxy, 99) - percentile(direct, 99)
    print(f"   added by lmproxy (p99): {micros(added)}   (target < 1 ms)")


# --- 3. many concurrent streams ---------------------------------------------------------


async def one_stream(host: str, port: int, model: str) -> tuple[int, float, float]:
    """(events received, seconds to the first byte, seconds in all) of one streamed chat."""
    body = json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": STREAM_PROMPT}]}
    ).encode()
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (CHAT_PATH.encode(), len(body), body)
    )
    first = await reader.read(1)
    first_byte = time.perf_counter() - began
    answer = first + await reader.read()
    writer.close()
    complete = answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"0\r\n\r\n")
    events = answer.count(b"data: ") if complete and b"data: [DONE]" in answer else 0
    return events, first_byte, time.perf_counter() - began


async def concurrent_streams(
    host: str, port: int, model: str, clients: int, pid: int | None
) -> tuple[list[tuple[int, float, float]], float, int]:
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while pid is not None:
            peak = max(peak, memory(pid)["VmRSS"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    began = time.perf_counter()
    results = await asyncio.gather(*(one_stream(host, port, model) for _ in range(clients)))
    elapsed = time.perf_counter() - began
    watcher.cancel()
    return results, elapsed, peak


def bench_streams(
    direct: tuple[str, int], proxy: tuple[str, int], model: str, clients: int, pid: int | None
) -> None:
    expected = asyncio.run(one_stream(*direct, model))[0]
    print(f"\n3. {clients} concurrent streaming chat completions of {expected} events each")
    before = memory(pid)["VmRSS"] if pid is not None else None
    for name, address in (("direct", direct), ("via lmproxy", proxy)):
        results, elapsed, peak = asyncio.run(
            concurrent_streams(*address, model, clients, pid if name != "direct" else None)
        )
        served = sum(1 for events, _, _ in results if events == expected)
        first_bytes = [first for _, first, _ in results]
        print(
            f"   {name:12} served {served}/{clients} in {elapsed:.2f} s;"
            f" first byte p50 {statistics.median(first_bytes) * 1e3:.1f} ms,"
            f" max {max(first_bytes) * 1e3:.1f} ms"
        )
    if pid is not None and before is not None:
        after = memory(pid)["VmRSS"]
        print(
            f"   lmproxy RSS: {before / 1024:.1f} MiB before, {peak / 1024:.1f} MiB at peak,"
            f" {after / 1024:.1f} MiB after"
        )


# --- main -------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), load average {load};"
        f" Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="URL of a running lmproxy OpenAI port")
    parser.add_argument("--direct", help="with --target: URL of the backend of --model")
    parser.add_argument("--model", default="demo", help="with --target: the model to use")
    parser.add_argument("--target-pid", type=int, help="with --target: lmproxy's pid, for RSS")
    parser.add_argument("--sse-model", help="with --target: model served by the SSE backend")
    parser.add_argument("--sse-backend-port", type=int, default=0, help="port of the SSE backend")
    parser.add_argument("--rounds", type=int, default=10, help="latency: rounds of each")
    parser.add_argument("--per-round", type=int, default=200, help="latency: requests per round")
    parser.add_argument("--events", type=int, default=5000, help="stream: events to time")
    parser.add_argument("--clients", type=int, default=200, help="concurrent streams")
    parser.add_argument("--token-delay", type=float, default=0.02, help="demo: between events")
    parser.add_argument(
        "--agent",
        choices=("backend", "plain"),
        default="backend",
        help="proxy agent: lmproxy.listen.httpforward.backend_agent, or a plain pooled Agent",
    )
    parser.add_argument("--serve-proxy", nargs=2, type=int, metavar=("DEMO_PORT", "SSE_PORT"))
    args = parser.parse_args(argv)
    if args.serve_proxy:
        demo_port, sse_port = args.serve_proxy
        serve_proxy(demo_port, sse_port, args.agent)
        return

    listener = socket.create_server(("127.0.0.1", args.sse_backend_port))
    children: list[subprocess.Popen[str]] = []
    try:
        if args.target:
            if not args.direct:
                parser.error("--target needs --direct")
            proxy, direct = address(args.target), address(args.direct)
            model, sse_model, pid = args.model, args.sse_model, args.target_pid
        else:
            demo_argv = [sys.executable, "-m", "lmproxy.demo", "--port", "0"]
            demo, demo_port = start(
                [*demo_argv, "--token-delay", str(args.token_delay)],
                r"listening on http://127\.0\.0\.1:(\d+)",
            )
            children.append(demo)
            sse_port = listener.getsockname()[1]
            proxy_argv = [sys.executable, __file__, "--agent", args.agent, "--serve-proxy"]
            server, proxy_port = start(
                [*proxy_argv, str(demo_port), str(sse_port)],
                r"proxy listening on (\d+)",
            )
            children.append(server)
            proxy, direct = ("127.0.0.1", proxy_port), ("127.0.0.1", demo_port)
            model, sse_model, pid = "demo", "sse", server.pid
        print(f"Machine: {machine()}")
        print(f"Proxy {proxy[0]}:{proxy[1]}, backend {direct[0]}:{direct[1]}, model {model!r}")
        if not args.target:
            print(f"In-process OpenAiApi with the {args.agent!r} agent")
        bench_latency(direct, proxy, model, args.rounds, args.per_round, pid)
        if sse_model:
            bench_events(listener, proxy, sse_model, args.events)
        bench_streams(direct, proxy, model, args.clients, pid)
    finally:
        listener.close()
        for child in children:
            child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
