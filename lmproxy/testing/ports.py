"""
Ports for tests and benchmarks that run real servers: chosen by the OS, so
that runs beside each other do not collide.
"""

from __future__ import annotations

import socket
import time


def free_ports(count: int) -> list[int]:
    """C{count} distinct ports on 127.0.0.1 that were free a moment ago (chosen by the OS)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_port(port: int, timeout: float = 30.0) -> None:
    """
    Block until something accepts connections on 127.0.0.1:C{port} (for
    scripts, outside any reactor); exit with a message after C{timeout} s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"port {port} never opened")
