"""
lmproxy against direct on every path of issue 10, with a C client and a C
backend (client.c and backend.c, built here with the machine's C{cc}) that do
not limit the figures: direct runs far above the proxied runs.  A script, not
a test: it prints a table and writes a JSON file, and never fails on timing::

    python3 bench/perf/run.py [--rounds 5] [--json perf.json]   # all, in a few minutes
    python3 bench/perf/run.py --smoke                            # each path for about a second
    python3 bench/perf/run.py --only tcp_rtt,tcp_100             # some rows

It runs a real C{twistd -n lmproxy} (the project must be installed) on a config
of C backends, and interleaves direct and proxied runs over several rounds.
Cold start and swap added: (the client's first byte - its request) through
lmproxy, minus the backend's own start (its main() to its listen), minus the
same for the backend spawned here by Python and polled every 0.1 ms (from the
spawn); for a swap, A, idle, holds the resource B needs.  Cold start added
after the listen: (first byte - the backend's listen), minus the same direct.
RSS: VmRSS of lmproxy plus its children (the watchdog) with 10 idle services.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import REQUEST, Ports, announced, first_byte, lmproxy, running_with
from paths import Client, Row, rows, run_round

from lmproxy.testing.ports import free_ports


@dataclass
class Settings:
    """How much each path measures per round."""

    rounds: int = 5
    rtt: int = 10000
    bulk_mib: int = 1024
    load_seconds: float = 2.0
    keep: int = 2000
    new: int = 1000
    sse_events: int = 200
    cold: int = 10
    swap: int = 10
    settle: float = 1.0


SMOKE = Settings(1, 200, 16, 0.2, 50, 20, 10, 1, 2, 0.3)


def hot_paths(
    table: dict[str, Row], client: Client, ports: Ports, s: Settings, only: set[str]
) -> None:
    """The warm paths in C{only}, direct and proxied interleaved, round after round."""
    local = "127.0.0.1"
    plans: list[tuple[str, tuple[object, ...], tuple[object, ...]]] = []
    for key, mode, args in (
        ("tcp_rtt", "rtt", (s.rtt, 200)),
        ("bulk_up", "up", (s.bulk_mib,)),
        ("bulk_down", "down", (s.bulk_mib,)),
        ("tcp_100", "load", (100, s.load_seconds, "echo")),
        ("tcp_500", "load", (500, s.load_seconds, "echo")),
    ):
        plans.append((key, (mode, local, ports.echo_raw, *args), (mode, local, ports.echo, *args)))
    for key, mode, args in (
        ("openai_new", "http", (s.new, "chat", "new")),
        ("openai_keep", "http", (s.keep, "chat", "keep")),
        ("openai_64", "load", (64, s.load_seconds, "chat")),
        ("sse", "sse", ("chat", s.sse_events)),
    ):
        direct = (mode, local, ports.chat_http, *args)
        plans.append((key, direct, (mode, local, ports.openai, *args)))
    for number in range(s.rounds):
        for key, direct, via in plans:
            if key in only:
                run_round(table[key], client, number % 2 == 1, direct, via)
        print(f"  round {number + 1}/{s.rounds} done", flush=True)


def direct_cold(table: dict[str, Row], binary: Path, workdir: Path, samples: int) -> None:
    """
    The backend started here (by Python's subprocess) and polled every 0.1 ms:
    ms from its listen to the first byte, and from the spawn minus its own
    start (its main() to its listen).
    """
    for n in range(samples):
        (port,) = free_ports(1)
        path = workdir / f"direct{n}.ann"
        spawned = time.monotonic_ns()
        with harness.backend(binary, "--announce", str(path), "--http", str(port)):
            while True:
                try:
                    _, received = first_byte(port, REQUEST)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.0001)
            started, listening = announced(path, 0)
        table["cold_listen"].direct.append((received - listening) / 1e6)
        after_spawn = (received - spawned - (listening - started)) / 1e6
        table["cold"].direct.append(after_spawn)
        table["swap"].direct.append(after_spawn)


def cold_start(table: dict[str, Row], ports: Ports, workdir: Path, n: int) -> None:
    """First clients of a stopped service whose backend listens at once."""
    marker = f"--http\0{ports.cold_http}\0".encode()
    path = workdir / "cold.ann"
    for _ in range(n):
        deadline = time.monotonic() + 30
        while running_with(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # lmproxy reaps it and marks it stopped
        skip = path.stat().st_size if path.exists() else 0
        sent, received = first_byte(ports.cold, REQUEST)
        started, listening = announced(path, skip)
        table["cold_listen"].proxied.append((received - listening) / 1e6)
        table["cold"].proxied.append((received - sent - (listening - started)) / 1e6)


def swaps(table: dict[str, Row], ports: Ports, workdir: Path, n: int) -> None:
    """A and B need the one unit of R: each request to the stopped one swaps."""
    first_byte(ports.swap_a, REQUEST)
    targets = [(ports.swap_b, workdir / "b.ann"), (ports.swap_a, workdir / "a.ann")]
    for number in range(n):
        port, path = targets[number % 2]
        time.sleep(0.1)  # lmproxy sees the last connection closed: the other is idle
        skip = path.stat().st_size if path.exists() else 0
        sent, received = first_byte(port, REQUEST)
        started, listening = announced(path, skip)
        table["swap"].proxied.append((received - sent - (listening - started)) / 1e6)


def idle_rss(table: dict[str, Row], binary: Path, workdir: Path, settle: float) -> None:
    config, listens = harness.idle_config(binary, 10)
    with lmproxy(config, workdir, "idle", listens[-1]) as pid:
        time.sleep(settle)
        own = harness.rss_kib(pid)
        helpers = [
            p for p in harness.children(pid) if str(binary).encode() not in harness.cmdline(p)
        ]
        watchdog = sum(harness.rss_kib(p) for p in helpers)
    row = table["rss"]
    row.proxied.append((own + watchdog) / 1024)
    row.extra.update(lmproxy_mib=own / 1024, watchdog_mib=watchdog / 1024)


def machine() -> dict[str, Any]:
    import twisted

    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "machine": platform.machine(),
        "commit": head.stdout.strip(),
    }


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def cell(row: Row, figures: dict[str, float]) -> tuple[str, str, str]:
    """The direct, lmproxy and added/ratio cells of a row."""
    if not figures:
        return "-", "(not run)", ""
    unit = row.unit
    if row.latency:
        return (
            f"{number(figures['direct'])} {unit}",
            f"{number(figures['lmproxy'])} {unit}",
            f"+{number(figures['added'])} (p99 +{number(figures['added_p99'])})",
        )
    if "direct" in figures:
        return (
            f"{number(figures['direct'])} {unit}",
            f"{number(figures['lmproxy'])} {unit}",
            f"{figures['ratio']:.2f}x",
        )
    return "-", f"{number(figures['lmproxy'])} {unit}", ""


def print_table(table: dict[str, Row], info: dict[str, Any]) -> None:
    print(
        f"\n{info['time_utc']}  {info['cores']} cores, load {' '.join(info['loadavg'])}, "
        f"Python {info['python']}, Twisted {info['twisted']}, {info['commit']}"
    )
    header = ("path", "direct", "lmproxy", "added/ratio", "CPU/req", "goal", "met", "Go (issue)")
    lines = [header]
    for row in table.values():
        figures = row.figures()
        # Below ten clock ticks, CPU time is too coarse to show.
        cpu = figures.get("cpu_us_per_request") if row.cpu >= 0.1 else None
        met = ("yes" if row.met(figures) else "NO") if figures else "?"
        errors = figures.get("errors_lmproxy", 0) + figures.get("errors_direct", 0)
        met += f" ({errors:.0f} errors)" if errors else ""
        lines.append(
            (row.label, *cell(row, figures), f"{cpu:.1f} µs" if cpu else "", row.goal, met, row.go)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="each path for about a second")
    parser.add_argument("--rounds", type=int, help="rounds of direct/proxied runs")
    parser.add_argument("--json", default="perf.json", help="where to write the figures")
    parser.add_argument("--only", help="comma-separated row keys (see the JSON) to run, not all")
    args = parser.parse_args()
    settings = SMOKE if args.smoke else Settings()
    if args.rounds:
        settings.rounds = args.rounds
    table = rows()
    only = set(args.only.split(",")) if args.only else set(table)
    if only - set(table):
        parser.error(f"unknown rows {sorted(only - set(table))}; rows: {', '.join(table)}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lmproxy-perf-") as tmp:
        workdir = Path(tmp)
        binary, client_binary = harness.build(workdir)
        if "rss" in only:
            print("RSS idle with 10 services", flush=True)
            idle_rss(table, binary, workdir, settings.settle)
        ports = Ports()
        config = harness.main_config(binary, ports, workdir)
        with lmproxy(config, workdir, "main", ports.openai) as pid:
            client = Client(client_binary, pid)
            # Start the warm services (they stay up: an hour's inactivity timeout).
            client.run("rtt", "127.0.0.1", ports.echo, 1, 200)
            client.run("http", "127.0.0.1", ports.openai, 1, "chat", "keep")
            print("hot paths", flush=True)
            hot_paths(table, client, ports, settings, only)
            if only & {"cold", "cold_listen", "swap"}:
                print("cold starts and swaps", flush=True)
                direct_cold(table, binary, workdir, max(3, settings.cold))
            if only & {"cold", "cold_listen"}:
                cold_start(table, ports, workdir, settings.cold)
            if "swap" in only:
                swaps(table, ports, workdir, settings.swap)
    info = machine()
    info["seconds"] = round(time.monotonic() - began, 1)
    print_table(table, info)
    Path(args.json).write_text(
        json.dumps({"machine": info, "rows": [row.as_json() for row in table.values()]}, indent=1)
    )
    print(f"\nfigures written to {args.json} ({info['seconds']} s)")


if __name__ == "__main__":
    sys.exit(main())
