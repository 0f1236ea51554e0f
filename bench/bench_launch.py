"""
Benchmark of lmproxy's start-up (not a test: it prints figures).

    python3 bench/bench_launch.py [--runs 10]

Launches a real lmproxy (C{python3 -m lmproxy}) on a generated config with two
services, the OpenAI port and the management port, and measures the time from
the launch until every one of those four ports listens.  The ports are read
from C{/proc} (Linux) and never connected to: a connection to a service port
is a client, and would start the service.  Each run ends lmproxy with SIGTERM
and waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process C{pid} listens on, from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def config(ports: list[int], log_dir: str) -> dict[str, object]:
    a, b, openai, management, ta, tb = ports
    services = [
        {
            "Name": name,
            "ListenPort": str(listen),
            "ProxyTargetPort": str(target),
            "Command": sys.executable,
            "Args": f"-m lmproxy.demo --port {target}",
            "LogFilePath": os.path.join(log_dir, f"{name}.log"),
        }
        for name, listen, target in (("a", a, ta), ("b", b, tb))
    ]
    return {
        "Services": services,
        "OpenAiApi": {"ListenPort": str(openai)},
        "ManagementApi": {"ListenPort": str(management)},
    }


def launch_once(path: str, wanted: set[int]) -> float:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "lmproxy", "-c", path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not wanted <= listening_ports(process.pid):
            if process.poll() is not None or time.monotonic() - began > 30:
                raise SystemExit("lmproxy did not listen on every port")
            time.sleep(0.001)
        return time.monotonic() - began
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ports = free_ports(6)
        path = os.path.join(tmp, "config.json")
        Path(path).write_text(json.dumps(config(ports, tmp)))
        wanted = set(ports[:4])
        launch_once(path, wanted)  # warm the file system cache and the plugin cache
        samples = [launch_once(path, wanted) for _ in range(args.runs)]
    load = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"launch to listening on 4 ports, {args.runs} runs: median "
        f"{statistics.median(samples):.3f} s, min {min(samples):.3f} s, max {max(samples):.3f} s"
    )


if __name__ == "__main__":
    main()
