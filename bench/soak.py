"""
A bounded soak test of lmproxy: a real C{twistd -n lmproxy} for a while,
with four demo model servers that do not all fit (they share a resource of
which only two fit at once), driven by clients of four kinds at once: raw TCP
to a service's ListenPort and the OpenAI port, each streaming or not.  The
services are evicted for each other all along.

Each request carries a unique token; its answer must echo the token, and the
pid that wrote it must be a process that lmproxy started for the service
asked for (lmproxy logs each start's pid).  A request that gets no answer is
lost; an answer without its token, or from another service's process, is
misrouted.  lmproxy's and its watchdog's RSS and open descriptors are
sampled every few seconds.

At the end it prints the requests by kind, lost, misrouted, errors by kind,
starts and evictions, descriptors at start, after the warm-up (the first
minute) and at the end (every service stopped again), RSS after the warm-up
and at the end, and the machine.  It exits with 1 if a request was lost or
misrouted, a descriptor leaked, or RSS grew more than 10% after the warm-up.

Run it from a checkout, for 10 minutes by default::

    PYTHONPATH=. python bench/soak.py [--minutes 10 | --seconds 30] [--clients 6]

Not part of the test run (tests/test_soak_script.py runs it for a few
seconds to show that it works).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lmproxy.testing.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["soak-a", "soak-b", "soak-c", "soak-d"]
KINDS = ["tcp", "tcp-stream", "openai", "openai-stream"]
FITTING = 2  # of the services, at once
RSS_GROWTH_LIMIT = 0.10
FD_SLACK = 2  # descriptors lmproxy may open once and keep (e.g. a lazily opened file)
REQUEST_TIMEOUT = 180.0
# lmproxy's log line for a start: "<service>: started [...] as pid <pid>".
STARTED = re.compile(r"\] (?P<service>\S+): started .* as pid (?P<pid>\d+)\s*$")
ANSWER = re.compile(r"pid (?P<pid>\d+): check (?P<token>\S+)")


def write_config(directory: Path) -> dict[str, int]:
    """Write lmproxy's config; return the ports: C{openai}, C{management}, one per service."""
    names = ["openai", "management", *SERVICES]
    every = free_ports(len(names) + len(SERVICES))
    ports = dict(zip(names, every, strict=False))
    targets = every[len(names) :]
    services = [
        {
            "Name": name,
            "ListenPort": str(ports[name]),
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": str(target),
            "Command": sys.executable,
            "Args": f"-m lmproxy.demo --port {target} --model {name} --token-delay 0.005",
            "OpenAiApi": True,
            "ResourceRequirements": {"slots": 1},
        }
        for name, target in zip(SERVICES, targets, strict=True)
    ]
    config = {
        "OpenAiApi": {"ListenPort": str(ports["openai"])},
        "ManagementApi": {"ListenPort": str(ports["management"])},
        "ResourcesAvailable": {"slots": FITTING},
        # Services leave by eviction, not for idleness.
        "ShutDownAfterInactivitySeconds": 3600,
        "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds": 120,
        "OutputServiceLogs": False,
        "Services": services,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return ports


class Lmproxy:
    """The lmproxy process, and the pids of the services it started, from its log."""

    def __init__(self, directory: Path) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.process = subprocess.Popen(
            [twistd, "--nodaemon", "--pidfile=", "lmproxy", "-c", "config.json"],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.process.pid
        self.started: dict[int, str] = {}
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail = [*self.tail[-40:], line]
            match = STARTED.search(line)
            if match:
                self.started[int(match["pid"])] = match["service"]

    def watchdog_pid(self) -> int | None:
        """The watchdog: lmproxy's child that runs lmproxy's reaper."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if ppid == self.pid and b"reaper" in cmdline:
                return int(entry)
        return None


def sample(pid: int | None) -> tuple[int, int] | None:
    """(RSS in KiB, open descriptors) of C{pid}, or None when it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def management(port: int, method: str, path: str) -> object:
    """A request to the management API; its JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def status(port: int) -> dict[str, dict[str, object]]:
    document = management(port, "GET", "/status")
    assert isinstance(document, dict)
    return {s["name"]: s for s in document["services"]}


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll C{condition} until it is true; exit the script after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Tally:
    """What the clients saw, counted under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.misrouted: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.answers: list[tuple[str, str, int]] = []  # (kind, service, pid)

    def count(self, counter: Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1


def answer_text(body: bytes, stream: bool) -> str:
    """The assistant's text in a chat completion, whole or streamed."""
    if not stream:
        return str(json.loads(body)["choices"][0]["message"]["content"])
    parts = []
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            choices = json.loads(line[6:])["choices"]
            parts.append(choices[0]["delta"].get("content") or "" if choices else "")
    return "".join(parts)


def one_request(kind: str, service: str, token: str, ports: dict[str, int], tally: Tally) -> None:
    stream = kind.endswith("stream")
    port = ports["openai"] if kind.startswith("openai") else ports[service]
    body = {
        "model": service,
        "stream": stream,
        "messages": [{"role": "user", "content": f"check {token}"}],
    }
    tally.count(tally.requests, kind)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Content-Type": "application/json", "Connection": "close"},
        )
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as e:
        tally.count(tally.lost, f"{kind}: {type(e).__name__}")
        return
    finally:
        conn.close()
    if response.status != 200:
        tally.count(tally.errors, f"{kind}: HTTP {response.status}")
        return
    try:
        match = ANSWER.search(answer_text(data, stream))
    except (ValueError, KeyError, IndexError, TypeError):
        match = None
    if match is None or match["token"] != token:
        tally.count(tally.misrouted, f"{kind}: answer without its token")
        return
    with tally.lock:
        tally.answers.append((kind, service, int(match["pid"])))


def client(index: int, stop_at: float, ports: dict[str, int], tally: Tally) -> None:
    rng = random.Random(index)
    number = 0
    while time.monotonic() < stop_at:
        number += 1
        one_request(rng.choice(KINDS), rng.choice(SERVICES), f"c{index}n{number}", ports, tally)
        time.sleep(rng.uniform(0, 0.2))  # a user's pause: lets services go idle, to be evicted


def sampler(
    lmproxy: Lmproxy,
    stop: threading.Event,
    period: float,
    samples: list[tuple[float, str, int, int]],
) -> None:
    began = time.monotonic()
    watchdog = None
    while not stop.wait(period):
        watchdog = watchdog or lmproxy.watchdog_pid()
        for who, pid in (("lmproxy", lmproxy.pid), ("watchdog", watchdog)):
            got = sample(pid)
            if got is not None:
                samples.append((time.monotonic() - began, who, *got))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    length.add_argument(
        "--seconds", type=float, help="how long to run, in seconds (for a smoke run)"
    )
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument(
        "--sample-seconds", type=float, default=5.0, help="sampling period (default 5)"
    )
    args = parser.parse_args(argv)
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    warmup = min(60.0, duration / 5)
    period = min(args.sample_seconds, max(duration / 10, 0.2))
    directory = Path(tempfile.mkdtemp(prefix="lmproxy-soak-"))
    ports = write_config(directory)
    lmproxy = Lmproxy(directory)
    try:
        return run(lmproxy, ports, duration, warmup, period, args.clients)
    except SystemExit:
        print("soak: lmproxy's last lines:\n" + "".join(lmproxy.tail), file=sys.stderr)
        raise
    finally:
        if lmproxy.process.poll() is None:
            lmproxy.process.send_signal(signal.SIGTERM)
            try:
                lmproxy.process.wait(60)
            except subprocess.TimeoutExpired:
                lmproxy.process.kill()
        shutil.rmtree(directory, ignore_errors=True)


def run(
    lmproxy: Lmproxy,
    ports: dict[str, int],
    duration: float,
    warmup: float,
    period: float,
    clients: int,
) -> int:
    """Drive lmproxy for C{duration} seconds, stop every service, report; the exit status."""
    wait_until(lambda: status(ports["management"]) is not None, 60, "lmproxy to answer /status")
    print(f"soak: {duration:g} s, {clients} clients; at start: {machine()}", flush=True)
    at_start = sample(lmproxy.pid)
    assert at_start is not None
    samples: list[tuple[float, str, int, int]] = []
    stop = threading.Event()
    threading.Thread(target=sampler, args=(lmproxy, stop, period, samples), daemon=True).start()
    tally = Tally()
    stop_at = time.monotonic() + duration
    workers = [
        threading.Thread(target=client, args=(i, stop_at, ports, tally)) for i in range(clients)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    under_load = sample(lmproxy.pid)
    for name in SERVICES:
        management(ports["management"], "POST", f"/services/{name}/stop")
    wait_until(
        lambda: all(s["status"] == "stopped" for s in status(ports["management"]).values()),
        120,
        "every service to stop",
    )
    services = status(ports["management"])
    # The descriptors of connections just closed may take a moment to go.
    deadline = time.monotonic() + 10
    while (sample(lmproxy.pid) or at_start)[1] > at_start[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = sample(lmproxy.pid)
    assert under_load is not None and stopped is not None
    figures = Figures(at_start, under_load, stopped, samples, warmup)
    return report(lmproxy, tally, services, figures, duration)


class Figures:
    """
    The samples that the verdict compares.

    @ivar at_start: (RSS, descriptors) of lmproxy before any client.
    @ivar under_load: the same when the clients have finished.
    @ivar stopped: the same once every service is stopped again.
    @ivar warm: lmproxy's first sample after the warm-up, or C{under_load}.
    @ivar watchdog: the watchdog's first sample after the warm-up and its
        last one, when it was found.
    """

    def __init__(
        self,
        at_start: tuple[int, int],
        under_load: tuple[int, int],
        stopped: tuple[int, int],
        samples: list[tuple[float, str, int, int]],
        warmup: float,
    ) -> None:
        self.at_start, self.under_load, self.stopped = at_start, under_load, stopped
        warm = [(rss, fds) for t, who, rss, fds in samples if who == "lmproxy" and t >= warmup]
        self.warm = warm[0] if warm else under_load
        dog = [(rss, fds) for t, who, rss, fds in samples if who == "watchdog" and t >= warmup]
        self.watchdog = (dog[0], dog[-1]) if dog else None


def machine() -> str:
    load1, load5, load15 = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {load1:.2f} {load5:.2f} {load15:.2f}"


def growth(before: int, after: int) -> float:
    return (after - before) / before if before else 0.0


def report(
    lmproxy: Lmproxy,
    tally: Tally,
    services: dict[str, dict[str, object]],
    figures: Figures,
    duration: float,
) -> int:
    """Print the figures; return 1 if a request was lost or misrouted, or a resource leaked."""
    for kind, service, pid in tally.answers:
        served_by = lmproxy.started.get(pid)
        if served_by != service:
            tally.misrouted[f"{kind}: answered by {served_by or 'an unknown process'}"] += 1
    answered = len(tally.answers) - sum(tally.misrouted.values())
    lines = [
        f"soak: {duration:g} s, {sum(tally.requests.values())} requests,"
        f" {answered} answered by the right service",
        "  requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(tally.requests.items())),
        f"  lost: {sum(tally.lost.values())} {dict(tally.lost) or ''}",
        f"  misrouted: {sum(tally.misrouted.values())} {dict(tally.misrouted) or ''}",
        f"  errors: {sum(tally.errors.values())} {dict(tally.errors) or ''}",
    ]
    for key in ("starts", "failed_starts", "evictions"):
        counts = {name: s[key] for name, s in services.items()}
        total = sum(int(str(n)) for n in counts.values())
        lines.append(f"  {key}: {total} {counts}")
    start, warm, load, stopped = figures.at_start, figures.warm, figures.under_load, figures.stopped
    rss_growth = growth(warm[0], load[0])
    lines += [
        f"  lmproxy fds: at start {start[1]}, after warm-up {warm[1]}, at the end with every"
        f" service stopped {stopped[1]}",
        f"  lmproxy RSS: after warm-up {warm[0]} KiB, at the end {load[0]} KiB ({rss_growth:+.1%})",
    ]
    if figures.watchdog is not None:
        (w_rss, w_fds), (e_rss, e_fds) = figures.watchdog
        lines.append(
            f"  watchdog: fds {w_fds} -> {e_fds}, RSS {w_rss} -> {e_rss} KiB"
            f" ({growth(w_rss, e_rss):+.1%})"
        )
    lines.append(f"  machine at the end: {machine()}")
    failures = []
    if tally.lost:
        failures.append("requests were lost")
    if tally.misrouted:
        failures.append("requests were misrouted")
    if stopped[1] > start[1] + FD_SLACK:
        failures.append(f"descriptors leaked ({start[1]} -> {stopped[1]})")
    if rss_growth > RSS_GROWTH_LIMIT:
        failures.append(f"RSS grew {rss_growth:.1%} after the warm-up")
    lines.append("  verdict: " + ("; ".join(failures) if failures else "ok"))
    print("\n".join(lines), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
