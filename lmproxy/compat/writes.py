"""
Sending on a TCP transport's socket at once, for the OpenAI port's hot path
(see L{lmproxy.compat}).

A transport's C{write} sends nothing itself: it buffers the bytes and asks
the reactor to tell it when the socket is writable, so every message costs
a turn of the loop and two changes of the reactor's interest in the socket
(a tenth of the OpenAI port's CPU per request).  L{send_now} sends on the
socket at once when the transport holds nothing unsent, and gives the
transport only what the socket did not take, so the bytes keep their order
and the transport's own flow control (pausing its producer once its buffer
is full) still holds.

The assumptions, each tested in C{tests.test_compat}:

 1. A TCP transport (C{twisted.internet.abstract.FileDescriptor}) holds its
    unsent bytes in C{dataBuffer} (from C{offset} on) and C{_tempDataBuffer},
    and both are empty once everything was sent.
 2. While it is C{disconnecting} or not C{connected}, its socket is not ours
    to write to.

This module imports only the standard library and L{lmproxy.compat.tcp}.
"""

from __future__ import annotations

from typing import Any

from lmproxy.compat.tcp import socket_of


def send_now(transport: Any, data: bytes) -> None:
    """
    Send C{data} on C{transport}: straight on its socket when it holds
    nothing unsent, the rest (or all of it) through C{transport.write}.

    @param transport: a connection's transport (any C{ITransport}; those
        without a socket of their own, such as tests' C{StringTransport},
        get a plain C{write}).
    @param data: the bytes to send.
    """
    if (
        getattr(transport, "dataBuffer", True)  # assumption 1; others have none
        or getattr(transport, "_tempDataBuffer", True)
        or transport.disconnecting  # assumption 2
        or not transport.connected
    ):
        transport.write(data)
        return
    sock = socket_of(transport)
    if sock is None:
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Reset or broken: the transport finds out itself and closes as it
        # always does.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
