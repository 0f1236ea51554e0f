"""
What lmproxy assumes of Twisted's TCP transports beyond their public API (see
L{lmproxy.compat}).

The per-service relay (L{lmproxy.listen.relay}) watches a connection's socket
with a descriptor of its own while the connection's transport is paused, and
gives the socket back by resuming the transport.  The socket itself comes
from C{ISystemHandle.getHandle}, which is public; that the reactor then
watches the socket for nobody else is not documented.  The assumption,
tested: a TCP transport that is paused (C{pauseProducing}) and has nothing
left to write is neither among the reactor's readers nor its writers, and
C{resumeProducing} makes it a reader again.

This module imports only Twisted's interfaces.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ISystemHandle


def socket_of(transport: object) -> socket.socket | None:
    """
    The stream socket under C{transport}, if it has one that is still open.

    @param transport: a connection's transport.
    """
    if not ISystemHandle.providedBy(transport):
        return None
    handle = ISystemHandle(transport).getHandle()
    if not isinstance(handle, socket.socket) or handle.type != socket.SOCK_STREAM:
        return None
    # Closed already (the client left while the backend connection was made).
    return handle if handle.fileno() >= 0 else None
