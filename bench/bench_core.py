"""
Benchmark of lmproxy's per-service TCP forwarding (not a test: it prints figures).

    python3 bench/bench_core.py [--rounds 2000] [--cold 10] [--megabytes 500]

Runs a real lmproxy (``python3 -m lmproxy``) on a generated config with the demo
model server as its service, and measures, against the same demo server reached
directly:

* warm round trip: a small keep-alive HTTP request/response on one connection,
  median and p99, through the service port vs. direct;
* cold start: for the first client of a stopped service, the time from the
  moment the freshly started server began listening (it prints it) to the
  client's first byte, vs. the same for the server started directly and polled
  every 0.2 ms: what lmproxy adds beyond the model server's own start-up;
* bulk transfer: ``GET /bytes?n=...`` through the service port vs. direct, MB/s.
"""

from __future__ import annotations

import argparse
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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, poll: float = 0.0002) -> float:
    """Poll until ``port`` accepts; returns the time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.monotonic()
        except OSError:
            time.sleep(poll)
    raise SystemExit(f"port {port} never opened")


def wait_gone(port: int, timeout: float = 20.0) -> None:
    """Wait until no demo server for ``port`` runs (its port closes before it exits)."""
    marker = f"--port\0{port}\0".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(marker in _cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()):
            return
        time.sleep(0.01)
    raise SystemExit(f"the demo server on port {port} never exited")


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed mid-response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def round_trips(port: int, rounds: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm up (and start the service when cold)
            sock.sendall(REQUEST)
            read_response(sock)
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            sock.sendall(REQUEST)
            read_response(sock)
            times.append(time.perf_counter() - began)
    return times


def bulk_mb_per_s(port: int, megabytes: int) -> float:
    size = megabytes * 1_000_000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        began = time.perf_counter()
        sock.sendall(f"GET /bytes?n={size} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        received = 0
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while received < size:
            n = sock.recv_into(view)
            if not n:
                break
            received += n
        elapsed = time.perf_counter() - began
    return received / 1_000_000 / elapsed


def demo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "lmproxy.demo", "--port", str(port), "--model", "bench"]


def listened_at(line: bytes) -> float:
    """The wall-clock time in the demo server's "listening on ... at=T" line."""
    return float(line.rsplit(b"at=", 1)[1])


def direct_after_listen(samples: int) -> list[float]:
    """
    The demo server alone: polled every 0.2 ms until it listens, one request;
    first byte minus the moment the server says it began listening.
    """
    times = []
    for _ in range(samples):
        port = free_port()
        process = subprocess.Popen(demo_command(port), stdout=subprocess.PIPE)
        assert process.stdout is not None
        wait_port(port)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(REQUEST)
            sock.recv(1)
            first_byte = time.time()
        times.append(first_byte - listened_at(process.stdout.readline()))
        process.terminate()
        process.wait()
    return times


def cold_after_listen(listen: int, target: int, samples: int, log_path: str) -> list[float]:
    """
    The first client of a stopped service, through lmproxy: its first byte
    minus the moment the freshly started server says it began listening.
    """
    times = []
    for _ in range(samples):
        wait_gone(target)
        seen = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with socket.create_connection(("127.0.0.1", listen)) as sock:
            sock.sendall(REQUEST)
            sock.recv(1)
            first_byte = time.time()
        with open(log_path, "rb") as log:
            log.seek(seen)
            line = next(line for line in log if b"listening on" in line)
        times.append(first_byte - listened_at(line.rstrip()))
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--megabytes", type=int, default=500)
    args = parser.parse_args()

    listen, target = free_port(), free_port()
    config = {
        "ShutDownAfterInactivitySeconds": 0.3,
        "OutputServiceLogs": False,
        "Services": [
            {
                "Name": "bench",
                "ListenPort": listen,
                "ProxyTargetHost": "127.0.0.1",
                "ProxyTargetPort": target,
                "Command": sys.executable,
                "Args": " ".join(demo_command(target)[1:]),
            }
        ],
    }
    workdir = tempfile.mkdtemp(prefix="lmproxy-bench-")
    config_path = os.path.join(workdir, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    log_path = os.path.join(workdir, "lmproxy.log")
    lmproxy = subprocess.Popen(
        [sys.executable, "-m", "lmproxy", "-c", config_path],
        cwd=workdir,
        env=env,
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
    )
    print(f"lmproxy's log: {log_path}")
    try:
        wait_port(listen)
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        print(f"machine: {machine}, Python {platform.python_version()}")

        direct_cold = direct_after_listen(args.cold)
        via_cold = cold_after_listen(
            listen, target, args.cold, os.path.join(workdir, "logs", "bench.log")
        )
        print(
            f"cold start (median of {args.cold}), first byte after the server began "
            f"listening: direct {ms(statistics.median(direct_cold))}, via lmproxy "
            f"{ms(statistics.median(via_cold))}; added "
            f"{ms(statistics.median(via_cold) - statistics.median(direct_cold))}"
        )

        # A connection through lmproxy held open for the rest of the run: the
        # direct measurements bypass lmproxy, which would otherwise see the
        # service idle and stop it.
        keeper = socket.create_connection(("127.0.0.1", listen))
        keeper.sendall(REQUEST)
        read_response(keeper)
        via = round_trips(listen, args.rounds)
        direct = round_trips(target, args.rounds)
        q = statistics.quantiles
        print(
            f"warm round trip ({args.rounds} keep-alive requests): direct median "
            f"{ms(statistics.median(direct))} p99 {ms(q(direct, n=100)[98])}; via lmproxy median "
            f"{ms(statistics.median(via))} p99 {ms(q(via, n=100)[98])}; added median "
            f"{ms(statistics.median(via) - statistics.median(direct))}"
        )

        direct_rate = bulk_mb_per_s(target, args.megabytes)
        via_rate = bulk_mb_per_s(listen, args.megabytes)
        print(
            f"bulk transfer of {args.megabytes} MB: direct {direct_rate:.0f} MB/s, "
            f"via lmproxy {via_rate:.0f} MB/s ({via_rate / direct_rate:.0%})"
        )
        keeper.close()
    finally:
        lmproxy.terminate()
        lmproxy.wait(timeout=30)


if __name__ == "__main__":
    main()
