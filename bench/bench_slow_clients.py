"""
Benchmark of lmproxy beside slow clients (not a test: it prints figures).

    python3 bench/bench_slow_clients.py [--clients 200] [--requests 200]

Runs a real lmproxy (``python3 -m lmproxy``) with the OpenAI and management
ports, and times C{GET /status} (a new connection each) first alone, then
while C{--clients} slowloris clients (half of them on each HTTP port) send
their request headers a byte at a time, between batches of 20 timings.
Prints the median and p99 of both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmproxy.testing.ports import free_ports, wait_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATUS = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
SLOW_REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 64


def time_status(port: int, requests: int) -> list[float]:
    """Seconds per C{GET /status}, each on a new connection, read to the end."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(STATUS)
            while s.recv(65536):
                pass
        times.append(time.perf_counter() - started)
    return times


def figures(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    openai_port, management_port = free_ports(2)
    config = {
        "OpenAiApi": {"ListenPort": str(openai_port)},
        "ManagementApi": {"ListenPort": str(management_port), "ListenAddress": "127.0.0.1"},
        "Services": [],
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "config.json")
        path.write_text(json.dumps(config))
        lmproxy = subprocess.Popen(
            [sys.executable, "-m", "lmproxy", "-c", str(path)],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(management_port)
            time_status(management_port, 20)  # warm up: the site is built on first use
            alone = time_status(management_port, args.requests)
            slow = []
            for i in range(args.clients):
                port = openai_port if i % 2 else management_port
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(SLOW_REQUEST[:20])
                slow.append(s)
            beside: list[float] = []
            sent = 20
            while len(beside) < args.requests:
                for s in slow:  # one more byte each
                    with contextlib.suppress(OSError):
                        s.send(SLOW_REQUEST[sent : sent + 1])
                sent = min(sent + 1, len(SLOW_REQUEST) - 1)
                beside += time_status(management_port, min(20, args.requests - len(beside)))
            for s in slow:
                s.close()
        finally:
            lmproxy.terminate()
            lmproxy.wait(30)
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, load {os.getloadavg()}")
    print(f"GET /status alone ({args.requests}):            {figures(alone)}")
    print(f"GET /status beside {args.clients} slow clients:  {figures(beside)}")


if __name__ == "__main__":
    main()
