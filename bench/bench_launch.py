"""
Benchmark of lmproxy's start-up (not a test: it prints figures).

    python3 bench/bench_launch.py [--runs 50] [--load 4] [--tree DIR] [--signals 2]

Four cases, launched in turn (so that a change of the machine's load touches
each alike), C{--runs} times each:

  - C{lmproxy} listening: the C{lmproxy} console script on a generated config
    with two services, the OpenAI port and the management port, from the
    launch until all four ports listen; then SIGTERM, and every run that does
    not end with exit 0 and no traceback is counted (a SIGTERM that early
    is also a test of the quit signals);
  - C{lmproxy} bad config: the same command on a config with a mistake, from
    the launch until it exits (with status 1 and the problem on stderr);
  - the same two with C{twistd -n lmproxy}.

The ports are read from the kernel (Linux's sock_diag) and never connected
to: a connection to a service port is a client, and would start the service.
With C{--load N} every case is measured idle, then again beside N CPU-bound
processes.  C{--tree DIR} measures another
checkout (e.g. C{git worktree add /tmp/wt-old HEAD}) through C{PYTHONPATH}.

With C{--signals SECONDS}, two more cases send SIGINT or SIGTERM (at random)
at a random moment of the first SECONDS after the launch, and measure the time
from the signal to the exit; every run that does not exit 0 without a
traceback is counted, split by whether lmproxy's handler was in place (the
interpreter's own start, before lmproxy's first line, is not covered).

Bytecode is cached in a temporary directory for the run (the first launch of
each case warms it, and the file system cache, and twistd's plugin cache), as
an installed package has it, whatever C{PYTHONDONTWRITEBYTECODE} says.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lmproxy.testing.ports import free_ports

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, TCP_LISTEN = 4, 20, 10
DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
NLMSG_ERROR, NLMSG_DONE = 2, 3


def listening_ports() -> set[int]:
    """
    The IPv4 TCP ports that listen on this machine, from the kernel's
    sock_diag netlink interface: 0.05 ms a call, where reading /proc/net/tcp
    takes milliseconds on a busy machine (and would blur the figures).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        # inet_diag_req_v2: IPv4, TCP, no extensions, the LISTEN state, any socket.
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        request += bytes(48)
        header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, DUMP_REQUEST, 1, 0)
        s.sendto(header + request, (0, 0))
        ports = set()
        while True:
            data = s.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    return ports
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                # inet_diag_msg: family, state, timer, retrans, then the source port.
                ports.add(struct.unpack_from("!H", data, offset + 16 + 4)[0])
                offset += (length + 3) & ~3


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


def commands(path: str) -> dict[str, list[str]]:
    script = BIN / "lmproxy"
    lmproxy = [str(script)] if script.exists() else [sys.executable, "-m", "lmproxy"]
    return {
        "lmproxy": [*lmproxy, "-c", path],
        "twistd -n lmproxy": [str(BIN / "twistd"), "-n", "--pidfile=", "lmproxy", "-c", path],
    }


class Launcher:
    """Launches lmproxy with the environment of the run."""

    def __init__(self, tree: Path, pycache: str) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=pycache)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def listening(self, argv: list[str], wanted: set[int]) -> tuple[float, str | None]:
        """
        Seconds from the launch until every port of C{wanted} listens, and
        what went wrong with the SIGTERM sent then (C{None}: exit 0, no
        traceback).
        """
        began = time.monotonic()
        process = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            while not wanted <= listening_ports():
                if process.poll() is not None or time.monotonic() - began > 60:
                    raise SystemExit(f"{argv[0]} did not listen on every port")
                time.sleep(0.0005)
            took = time.monotonic() - began
        finally:
            process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return took, "still running 20 s after SIGTERM"
        if b"Traceback" in err:
            return took, f"exit {process.returncode} with a traceback"
        if process.returncode != 0:
            return took, f"exit {process.returncode}"
        return took, None

    def bad_config(self, argv: list[str]) -> tuple[float, str | None]:
        """Seconds from the launch until lmproxy exits, refusing the config."""
        began = time.monotonic()
        result = subprocess.run(argv, env=self.env, capture_output=True, timeout=60)
        took = time.monotonic() - began
        if result.returncode != 1 or b"the config cannot be used" not in result.stderr:
            return took, f"exit {result.returncode}: {result.stderr.decode()[-200:]}"
        return took, None

    def quit_at_random(self, argv: list[str], window: float) -> tuple[float, str | None]:
        """
        Launch, send SIGINT or SIGTERM after a random delay of up to
        C{window} seconds, and wait: the seconds from the signal to the exit,
        and what went wrong (a run that did not exit 0 without a traceback).
        """
        signum = random.choice([signal.SIGINT, signal.SIGTERM])
        began = time.monotonic()
        process = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(max(0.0, began + random.uniform(0, window) - time.monotonic()))
        handled = handler_installed(process.pid)
        process.send_signal(signum)
        sent = time.monotonic()
        name = signal.Signals(signum).name
        when = "with lmproxy's handler" if handled else "before lmproxy's handler"
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return 20.0, f"{name} {when}: lost (still running 20 s later)"
        took = time.monotonic() - sent
        if process.returncode == 0 and b"Traceback" not in err:
            return took, None
        traceback = " with a traceback" if b"Traceback" in err else ""
        return took, f"{name} {when}: exit {process.returncode}{traceback}"


def handler_installed(pid: int) -> bool:
    """
    Does process C{pid} run lmproxy's Python with its quit handler in place?
    Python itself catches SIGINT from its start, SIGTERM only lmproxy does.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    [caught] = [int(line.split()[1], 16) for line in status.splitlines() if line[:6] == "SigCgt"]
    return b"lmproxy" in cmdline and bool(caught & (1 << (signal.SIGTERM - 1)))


Case = Callable[[], tuple[float, "str | None"]]


def hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """C{count} CPU-bound processes."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def measure(cases: dict[str, Case], runs: int) -> dict[str, tuple[list[float], list[str]]]:
    """Each case C{runs} times, in turn: its durations and what went wrong."""
    for case in cases.values():
        case()  # warm the caches
    results: dict[str, tuple[list[float], list[str]]] = {name: ([], []) for name in cases}
    for _ in range(runs):
        for name, case in cases.items():
            took, problem = case()
            results[name][0].append(took)
            if problem is not None:
                results[name][1].append(problem)
    return results


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def report(results: dict[str, tuple[list[float], list[str]]], load: int) -> None:
    average = os.getloadavg()
    print(
        f"\nbeside {load} CPU-bound processes; load average at the end: "
        f"{average[0]:.2f} {average[1]:.2f} {average[2]:.2f}"
    )
    print(f"{'(ms)':36} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, (values, _) in results.items():
        figures = [statistics.median(values), percentile(values, 90), percentile(values, 99)]
        figures.append(max(values))
        print(f"{name:36} " + " ".join(f"{1000 * f:8.1f}" for f in figures))
    for name, (values, problems) in results.items():
        if problems:
            counts = {p: problems.count(p) for p in problems}
            listed = ", ".join(f"{n}x {p}" for p, n in counts.items())
            print(f"  {name}: {len(problems)} of {len(values)} runs went wrong: {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="launches per case (default 50)")
    parser.add_argument(
        "--load", type=int, default=0, help="also measure beside N CPU-bound processes"
    )
    parser.add_argument("--tree", type=Path, default=PROJECT_ROOT, help="the checkout to measure")
    parser.add_argument(
        "--signals",
        type=float,
        metavar="SECONDS",
        help="also send SIGINT or SIGTERM at a random moment of the first SECONDS",
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; lmproxy from {args.tree}; {args.runs} launches per case"
    )
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(args.tree.resolve(), os.path.join(tmp, "pycache"))
        ports = free_ports(6)
        good = os.path.join(tmp, "config.json")
        Path(good).write_text(json.dumps(config(ports, tmp)))
        bad = os.path.join(tmp, "bad.json")
        broken = config(ports, tmp)
        del broken["Services"][1]["Command"]  # type: ignore[index]
        Path(bad).write_text(json.dumps(broken))
        wanted = set(ports[:4])
        cases: dict[str, Case] = {}
        for name, argv in commands(good).items():
            cases[f"{name}: listening"] = lambda argv=argv: launcher.listening(argv, wanted)
        for name, argv in commands(bad).items():
            cases[f"{name}: bad config"] = lambda argv=argv: launcher.bad_config(argv)
        if args.signals:
            for name, argv in commands(good).items():
                cases[f"{name}: quit at random (exit)"] = lambda argv=argv: launcher.quit_at_random(
                    argv, args.signals
                )
        for load in sorted({0, args.load}):
            running = hogs(load)
            try:
                if running:
                    time.sleep(2)  # let the hogs take the cores
                results = measure(cases, args.runs)
            finally:
                for hog in running:
                    hog.kill()
                    hog.wait()
            report(results, load)


if __name__ == "__main__":
    main()
