"""
Ports for tests and benchmarks that run real servers: chosen by the OS, so
that runs beside each other do not collide.
"""

from __future__ import annotations

import socket


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
