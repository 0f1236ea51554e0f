"""
The demo model server's command line: L{parse_args} turns it into L{DemoOptions}.

This module imports nothing from Twisted, so that C{--help} and a bad flag are
answered before the slow imports start.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from attrs import frozen

#: The status the process exits with when C{--crash-mid-stream} kills it.
CRASH_EXIT_CODE = 70


@frozen
class DemoOptions:
    """
    The command line of the demo server, parsed; see L{parse_args}.

    @ivar port: the TCP port to listen on; C{0}: one that the OS picks.
    @ivar host: the address to listen on.
    @ivar model: the model id that C{/v1/models} reports.
    @ivar startup_delay: seconds to wait before listening (a model that loads).
    @ivar exit_after: exit on its own this many seconds after listening.
    @ivar exit_code: the exit status for C{exit_after}.
    @ivar spawn_grandchild: write the pid of a child that sleeps forever to
        this file.
    @ivar crash_mid_stream: exit abruptly after two events of a streamed answer.
    @ivar token_delay: seconds between the events of a streamed answer.
    @ivar fail_health: C{/health} answers 503.
    """

    port: int
    host: str = "127.0.0.1"
    model: str = "demo"
    startup_delay: float = 0.0
    exit_after: float | None = None
    exit_code: int = 0
    spawn_grandchild: str | None = None
    crash_mid_stream: bool = False
    token_delay: float = 0.0
    fail_health: bool = False


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # written this way round, it rejects NaN too
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535: {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmproxy.demo",
        description="A small deterministic OpenAI-compatible model server for lmproxy demos"
        " and tests.",
    )
    parser.add_argument(
        "--port", type=_port, required=True, help="TCP port; 0: any free port (printed)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--model", default="demo", help="model id reported by /v1/models")
    parser.add_argument(
        "--startup-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before listening (simulates model loading)",
    )
    parser.add_argument(
        "--exit-after",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="exit on its own this long after listening",
    )
    parser.add_argument(
        "--exit-code", type=int, default=0, help="exit status for --exit-after (default 0)"
    )
    parser.add_argument(
        "--spawn-grandchild",
        metavar="PIDFILE",
        default=None,
        help="start a child process that sleeps forever and write its pid to PIDFILE",
    )
    parser.add_argument(
        "--crash-mid-stream",
        action="store_true",
        help=f"exit abruptly (status {CRASH_EXIT_CODE}) after two events of a streamed answer",
    )
    parser.add_argument(
        "--token-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="delay between streamed events",
    )
    parser.add_argument("--fail-health", action="store_true", help="/health answers 503")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    """
    Parse the demo server's command line.

    @param argv: the arguments; C{sys.argv[1:]} when C{None}.
    @raise SystemExit: for C{--help} or a bad command line (argparse has said why).
    """
    args = _parser().parse_args(argv)
    return DemoOptions(
        port=args.port,
        host=args.host,
        model=args.model,
        startup_delay=args.startup_delay,
        exit_after=args.exit_after,
        exit_code=args.exit_code,
        spawn_grandchild=args.spawn_grandchild,
        crash_mid_stream=args.crash_mid_stream,
        token_delay=args.token_delay,
        fail_health=args.fail_health,
    )
