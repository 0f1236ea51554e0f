"""
The measured paths of the bench/perf harness: each row of issue 10's table,
direct against through lmproxy, with the figures that row reports and its goal.

Latencies are pooled over the rounds (p50/p99 of all samples); rates are the
median of the rounds' figures.  CPU per request is lmproxy's utime+stime
(C{/proc/PID/stat}, 10 ms ticks) over the proxied runs, divided by the requests
the client completed in them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import cpu_seconds


def percentile(samples: Sequence[float], p: float) -> float:
    """The C{p}-th percentile (nearest rank) of C{samples}."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass
class Row:
    """One row of the table: what it measured, and how its goal reads its figures."""

    key: str
    label: str
    unit: str
    goal: str
    go: str
    met: Callable[[dict[str, float]], bool]
    direct: list[float] = field(default_factory=list)
    proxied: list[float] = field(default_factory=list)
    cpu: float = 0.0
    requests: int = 0
    latency: bool = False
    extra: dict[str, float] = field(default_factory=dict)
    # Each run's figure (its p50 for latencies): shows drift between rounds.
    runs: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "lmproxy": []})

    def figures(self) -> dict[str, float]:
        """Medians (rates) or p50/p99 (latencies, in µs), plus CPU per request in µs."""
        if not self.proxied:
            return {}
        out = dict(self.extra)
        if self.direct:
            direct, proxied = statistics.median(self.direct), statistics.median(self.proxied)
            out.update(direct=direct, lmproxy=proxied)
            if self.latency:
                out["added"] = proxied - direct
                out["direct_p99"] = percentile(self.direct, 99)
                out["lmproxy_p99"] = percentile(self.proxied, 99)
                out["added_p99"] = out["lmproxy_p99"] - out["direct_p99"]
            else:
                out["ratio"] = proxied / direct
        else:
            out["lmproxy"] = statistics.median(self.proxied)
        if self.requests:
            out["cpu_us_per_request"] = self.cpu / self.requests * 1e6
        return out

    def as_json(self) -> dict[str, Any]:
        figures = self.figures()
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "goal": self.goal,
            "go": self.go,
            "met": self.met(figures) if figures else None,
            "samples_direct": len(self.direct),
            "samples_lmproxy": len(self.proxied),
            "runs_direct": self.runs["direct"] or self.direct,
            "runs_lmproxy": self.runs["lmproxy"] or self.proxied,
            **figures,
        }


def rows() -> dict[str, Row]:
    """The rows of issue 10's table, with its goals and Go's figures."""

    def added_at_most(limit: float) -> Callable[[dict[str, float]], bool]:
        return lambda f: f["added"] <= limit

    def ratio_cpu(ratio: float, cpu: float) -> Callable[[dict[str, float]], bool]:
        return lambda f: f["ratio"] >= ratio and f.get("cpu_us_per_request", 0) <= cpu

    table = [
        Row("tcp_rtt", "TCP round trip, 200 B, one kept connection", "µs", "added <= 1.2x direct",
            "+28 µs", lambda f: f["added"] <= 1.2 * f["direct"], latency=True),
        Row("bulk_up", "bulk client->backend", "GB/s", ">= 0.65x direct", "1.0 GB/s",
            lambda f: f["ratio"] >= 0.65),
        Row("bulk_down", "bulk backend->client", "GB/s", ">= 0.65x direct", "2.2 GB/s",
            lambda f: f["ratio"] >= 0.65),
        Row("tcp_100", "TCP, 100 connections, closed loops", "req/s", ">= 0.40x, <= 17 µs CPU",
            "48.6k; 19.5 µs", ratio_cpu(0.40, 17)),
        Row("tcp_500", "TCP, 500 connections, closed loops", "req/s", ">= 0.40x, <= 17 µs CPU",
            "40.6k", ratio_cpu(0.40, 17)),
        Row("openai_new", "OpenAI small chat, new connection each", "µs", "added <= 150 µs",
            "+203 µs", added_at_most(150), latency=True),
        Row("openai_keep", "OpenAI small chat, keep-alive", "µs", "added <= 75 µs", "+29 µs",
            added_at_most(75), latency=True),
        Row("openai_64", "OpenAI, 64 clients", "req/s", ">= 0.2x, <= 60 µs CPU", "39.6k; 22 µs",
            ratio_cpu(0.2, 60)),
        Row("sse", "SSE, delay per event", "µs", "added p50 <= 50 µs", "+54 µs",
            added_at_most(50), latency=True),
        Row("cold", "cold start, backend listens at once", "ms", "added <= 2 ms", "+1.7 ms",
            added_at_most(2), latency=True),
        Row("cold_listen", "cold start, after the backend's listen", "ms", "added <= 2 ms",
            "-", added_at_most(2), latency=True),
        Row("swap", "swap, A idle holds what B needs", "ms", "added <= 3 ms", "+2.6 ms",
            added_at_most(3), latency=True),
        Row("rss", "RSS idle, 10 services, watchdog included", "MiB", "<= 45 MiB",
            "10 MiB", lambda f: f["lmproxy"] <= 45),
    ]  # fmt: skip
    return {row.key: row for row in table}


class Client:
    """Runs the C client; accounts lmproxy's CPU time to the proxied runs."""

    def __init__(self, binary: Path, pid: int) -> None:
        self.binary = binary
        self.pid = pid

    def run(self, *args: object) -> tuple[dict[str, Any], float]:
        """The client's JSON, and the CPU seconds lmproxy used meanwhile."""
        before = cpu_seconds(self.pid)
        done = subprocess.run(
            [str(self.binary), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        used = cpu_seconds(self.pid) - before
        if done.returncode:
            raise SystemExit(f"perf_client {args}: {done.stderr.strip()}")
        return json.loads(done.stdout), used


def run_round(
    row: Row,
    client: Client,
    proxied_first: bool,
    direct: tuple[object, ...],
    via: tuple[object, ...],
) -> None:
    """One direct and one proxied run of C{row} (order alternating between rounds)."""
    order = [(False, direct), (True, via)]
    for through, args in order[::-1] if proxied_first else order:
        result, cpu = client.run(*args)
        if row.latency:
            samples = [ns / 1000 for ns in result["ns"]]
            count, figure = len(samples), statistics.median(samples)
        elif "bytes" in result:
            count, figure = 0, result["bytes"] / result["seconds"] / 1e9
            samples = [figure]
        else:
            count, figure = result["total"], result["requests"] / result["seconds"]
            samples = [figure]
        (row.proxied if through else row.direct).extend(samples)
        row.runs["lmproxy" if through else "direct"].append(figure)
        if through and count:
            row.cpu += cpu
            row.requests += count
        if result.get("errors"):
            # Failed or cut answers (the client reconnects): none is expected.
            key = "errors_lmproxy" if through else "errors_direct"
            row.extra[key] = row.extra.get(key, 0) + result["errors"]
