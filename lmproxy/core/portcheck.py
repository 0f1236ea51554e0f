"""
Before a service's process is spawned: is its target port taken already?

Nothing of the service runs yet, so a process listening on the port is a
stray (a server started by hand, one left by an earlier lmproxy): the start
would only wait until its startup timeout, then proxy nobody's server, or
worse, the stray.  The check binds the target address and port, as a server
would (with C{SO_REUSEADDR}, so that connections of an earlier run still in
C{TIME_WAIT} do not count), and closes the socket at once.

Only an address of this machine can be checked so: a ProxyTargetHost that is
a name other than C{localhost}, or an address that is not this machine's (the
bind fails with C{EADDRNOTAVAIL}), is not checked, as upstream checks none.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from twisted.internet import abstract

PortCheck = Callable[[str, int], str | None]
"""Why a target host and port cannot be a new server's (C{None}: they can)."""


def _local_address(host: str) -> str | None:
    if host == "localhost":
        return "127.0.0.1"  # as the readiness probe resolves it
    if abstract.isIPAddress(host) or abstract.isIPv6Address(host):
        return host
    return None  # a name: resolving it here would block the reactor


def port_taken(host: str, port: int) -> str | None:
    """
    Whether a process listens on C{host:port} already.

    @param host: the service's ProxyTargetHost.
    @param port: its ProxyTargetPort.
    @return: the reason a start must fail, or C{None} (free, or not checked).
    """
    address = _local_address(host)
    if address is None:
        return None
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is already in use by another process"
        # Not this machine's address, a privileged port, no descriptor left:
        # the server will meet the same, and say it better.
        return None
    return None
