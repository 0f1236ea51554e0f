"""
Processes of the bench/perf harness: builds the C client and backend, writes
lmproxy's config, runs a real C{twistd -n lmproxy} on it, and reads CPU time
and resident memory from C{/proc}.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmproxy.testing.ports import free_ports, wait_port

HERE = Path(__file__).parent
# What a cold start's first client sends (the C backend answers any request).
REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: perf\r\n\r\n"


def build(workdir: Path) -> tuple[Path, Path]:
    """Compile the C backend and client with the machine's C{cc} into C{workdir}."""
    built = []
    for name in ("backend", "client"):
        binary = workdir / f"perf_{name}"
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(binary), str(HERE / f"{name}.c")], check=True)
        built.append(binary)
    return built[0], built[1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time C{pid} has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of C{pid}, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The processes whose parent is C{pid}."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def running_with(marker: bytes) -> bool:
    """Whether a process has C{marker} in its command line."""
    return any(marker in cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit())


def first_byte(port: int, payload: bytes) -> tuple[int, int]:
    """Connects, sends C{payload}, reads one byte: (send time, first-byte time) in ns."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sent = time.monotonic_ns()
        sock.sendall(payload)
        if not sock.recv(1):
            raise SystemExit(f"port {port} closed without answering")
        return sent, time.monotonic_ns()


def announced(path: Path, skip: int) -> tuple[int, int]:
    """The (started, listening) times of the backend line after byte C{skip} of C{path}."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = path.read_text()[skip:] if path.exists() else ""
        if text.endswith("\n"):
            fields = dict(f.split("=") for f in text.split()[:2])
            return int(fields["started"]), int(fields["listening"])
        time.sleep(0.001)
    raise SystemExit(f"no backend announced itself in {path}")


class Ports:
    """The ports of one run, chosen by the OS."""

    def __init__(self) -> None:
        (
            self.openai,
            self.echo,
            self.echo_raw,
            self.chat_http,
            self.cold,
            self.cold_http,
            self.swap_a,
            self.swap_a_http,
            self.swap_b,
            self.swap_b_http,
        ) = free_ports(10)


def service(name: str, binary: Path, backend: str, port: int, **keys: Any) -> dict[str, Any]:
    """One service that runs the C backend with C{backend} (C{--http}/C{--raw}) on C{port}."""
    return {
        "Name": name,
        "ProxyTargetHost": "127.0.0.1",
        "ProxyTargetPort": port,
        "Command": str(binary),
        "Args": f"{backend} {port}",
        **keys,
    }


def main_config(binary: Path, ports: Ports, workdir: Path) -> dict[str, Any]:
    """Warm services for the hot paths, a cold one that stops at once, two that swap."""
    announce = {name: f"--announce {workdir / (name + '.ann')}" for name in ("cold", "a", "b")}
    return {
        "ShutDownAfterInactivitySeconds": 3600,
        "OutputServiceLogs": False,
        "OpenAiApi": {"ListenPort": ports.openai},
        "ResourcesAvailable": {"R": 1},
        "Services": [
            service("echo", binary, "--raw", ports.echo_raw, ListenPort=ports.echo),
            service(
                "chat", binary, "--http", ports.chat_http, OpenAiApi=True, OpenAiApiModels=["chat"]
            ),
            service(
                "cold",
                binary,
                f"{announce['cold']} --http",
                ports.cold_http,
                ListenPort=ports.cold,
                ShutDownAfterInactivitySeconds=0.2,
            ),
            service(
                "swapa",
                binary,
                f"{announce['a']} --http",
                ports.swap_a_http,
                ListenPort=ports.swap_a,
                ResourceRequirements={"R": 1},
            ),
            service(
                "swapb",
                binary,
                f"{announce['b']} --http",
                ports.swap_b_http,
                ListenPort=ports.swap_b,
                ResourceRequirements={"R": 1},
            ),
        ],
    }


def idle_config(binary: Path, count: int) -> tuple[dict[str, Any], list[int]]:
    """C{count} services, none started, and an OpenAI port: for the idle RSS."""
    ports = free_ports(2 * count + 1)
    services = [
        service(f"idle{n}", binary, "--http", ports[2 * n + 1], ListenPort=ports[2 * n + 2])
        for n in range(count)
    ]
    for entry in services:
        entry.update(OpenAiApi=True)
    config = {"OpenAiApi": {"ListenPort": ports[0]}, "Services": services}
    return config, [ports[0]] + [s["ListenPort"] for s in services]


def twistd() -> list[str]:
    """The twistd beside this Python, or the one on PATH."""
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if not found:
        raise SystemExit("twistd not found (pip install the project first)")
    return [found]


@contextmanager
def lmproxy(config: dict[str, Any], workdir: Path, name: str, port: int) -> Iterator[int]:
    """Runs C{twistd -n lmproxy} on C{config} until the block ends; yields its pid."""
    rundir = workdir / name
    rundir.mkdir()
    (rundir / "config.json").write_text(json.dumps(config, indent=1))
    with open(rundir / "lmproxy.log", "wb") as log:
        process = subprocess.Popen(
            [*twistd(), "--pidfile=", "-n", "lmproxy", "-c", "config.json"],
            cwd=rundir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def backend(binary: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The C backend, started by the harness itself (for direct cold starts)."""
    process = subprocess.Popen([str(binary), *args])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
