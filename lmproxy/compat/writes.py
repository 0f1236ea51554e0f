"""
Sending on a TCP transport's socket at once, for the OpenAI port's hot path
(see L{lmproxy.compat}).

A transport's C{write} sends nothing itself: it buffers the bytes and asks
the reactor to tell it when the socket is writable, so every message costs
a turn of the loop and two changes of the reactor's interest in the socket
(a tenth of the OpenAI port's CPU per request).  L{Sender} sends on the
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


class Sender:
    """
    Sends on one connection: straight on its socket when its transport holds
    nothing unsent, the rest (or all of it) through C{transport.write}.  The
    socket is looked up once, when the connection is made.
    """

    def __init__(self, transport: Any) -> None:
        """
        @param transport: a connection's transport (any C{ITransport}; those
            without a socket of their own, such as tests' C{StringTransport},
            get a plain C{write}).
        """
        self._transport = transport
        # Assumption 1: only FileDescriptors have dataBuffer.
        tcp = hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataBuffer")
        self._socket = socket_of(transport) if tcp else None

    def send(self, data: bytes) -> None:
        """Send C{data} after what was sent before."""
        transport = self._transport
        sock = self._socket
        if (
            sock is None
            or transport.dataBuffer  # assumption 1
            or transport._tempDataBuffer
            or transport.disconnecting  # assumption 2
            or not transport.connected
        ):
            transport.write(data)
            return
        try:
            sent = sock.send(data)
        except OSError:
            # Full (BlockingIOError), or reset or broken: the transport finds
            # out itself and closes as it always does.
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
