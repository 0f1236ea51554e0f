"""
The byte path of a per-service TCP connection once both of its ends are
connected: a L{Relay} moves bytes between the two sockets itself, with two
descriptors of its own in the reactor, instead of Twisted's transports.

Twisted's transports cost, per message, a fresh read buffer, a
C{dataReceived} call, and a write that waits for the next turn of the loop
(write interest added, then removed).  The relay reads into one buffer shared
by every connection (C{recv_into}) and sends at once; it registers for
writing only when the peer's socket is full, and then stops reading the side
that feeds it until the peer drains (flow control, as the transports'
producers do): at most one unsent chunk is held per direction.  No pipes nor
other descriptors are needed: 1,000 connections take 2,000 descriptors, as
with Twisted's transports.  (C{os.splice} through a pipe per direction was
tried: no faster here, bulk transfers included, for two more descriptors per
direction.)

The transports are paused (not in the reactor) while the relay runs, and
given back when it ends: on end of file, an error, or the reactor dropping
one of its descriptors, the relay removes its own descriptors, hands any
unsent bytes to the transport they were for, and resumes the transport that
saw the event, which sees it again and closes as it always did (and its
protocol closes the other side: C{twisted.protocols.portforward}).  So
closing, half-close (not supported: either side closing closes both), and
the protocols' C{connectionLost} stay Twisted's.

Each socket comes from C{ISystemHandle.getHandle}, a public Twisted API;
transports that have none (tests' C{StringTransport}s) are not relayed.  That
a paused transport leaves its socket to the relay is an assumption about
Twisted, tested with L{lmproxy.compat.tcp}.
"""

from __future__ import annotations

import socket
from typing import Protocol, cast

from twisted.internet.interfaces import (
    IReactorFDSet,
    IReadDescriptor,
    IReadWriteDescriptor,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from lmproxy.compat.tcp import socket_of

CHUNK_SIZE = 256 * 1024
"""Bytes read at most per readable event (one buffer for every connection)."""

_buffer = bytearray(CHUNK_SIZE)
_view = memoryview(_buffer)


class RelayedTransport(Protocol):
    """What a relay needs of a transport (Twisted's TCP transports have it)."""

    def write(self, data: bytes) -> None:
        """Send C{data} (after what it holds)."""

    def pauseProducing(self) -> None:
        """Stop reading."""

    def resumeProducing(self) -> None:
        """Read again."""


@implementer(IReadWriteDescriptor)
class _Side:
    """
    One end of a relay: reads its socket into the peer's, and writes to its
    socket what the peer's side could not send at once.
    """

    peer: _Side

    def __init__(self, relay: Relay, sock: socket.socket, transport: RelayedTransport) -> None:
        self._relay = relay
        self.socket = sock
        self.transport = transport
        self._fd = sock.fileno()
        self.unsent = b""
        """Bytes for this side's socket that it did not take yet."""

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """What the reactor's log lines about this side start with."""
        return "Relay"

    def doRead(self) -> None:
        """Read a chunk and send it to the peer at once; hold what it did not take."""
        if self.peer.unsent:
            # Not read while the peer is full; an event already polled may still come.
            return
        try:
            n = self.socket.recv_into(_view)
        except BlockingIOError:
            return
        except OSError:
            self._relay.end(self)
            return
        if not n:
            self._relay.end(self)
            return
        self.peer.send(_view[:n])

    def send(self, data: memoryview | bytes) -> None:
        """
        Send C{data} to this side's socket at once; what it does not take
        waits until it is writable, and the peer is not read meanwhile.
        """
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.unsent = bytes(data)
            self._relay.end(self)
            return
        if sent < len(data):
            # Copied out of the shared buffer, which the next read reuses.
            self.unsent = bytes(data[sent:])
            self._relay.hold(self)

    def doWrite(self) -> None:
        """Send what was held; once it is all sent, read the peer again."""
        data, self.unsent = self.unsent, b""
        self.send(data)
        if not self.unsent and not self._relay.ended:
            self._relay.drained(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped this side (a hang-up, or the reactor stops): end
        the relay, and tell this side's transport, as the reactor would have.
        """
        self._relay.end(self, resume=False)
        IReadDescriptor(self.transport).connectionLost(reason)


class Relay:
    """
    Moves bytes between two connected sockets (see the module).

    @ivar ended: whether the relay has given the sockets back.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        client: tuple[socket.socket, RelayedTransport],
        backend: tuple[socket.socket, RelayedTransport],
    ) -> None:
        """
        @param reactor: watches the sockets.
        @param client: the client's socket and transport.
        @param backend: the backend's socket and transport.
        """
        self._reactor = reactor
        self._client = _Side(self, *client)
        self._backend = _Side(self, *backend)
        self._client.peer, self._backend.peer = self._backend, self._client
        self.ended = False

    @classmethod
    def between(cls, reactor: object, client: object, backend: object) -> Relay | None:
        """
        A relay between two transports, or C{None} if one has no socket (or
        the reactor cannot watch descriptors): then they forward as Twisted's
        transports do.
        """
        client_socket, backend_socket = socket_of(client), socket_of(backend)
        if client_socket is None or backend_socket is None:
            return None
        if not IReactorFDSet.providedBy(reactor):
            return None
        return cls(
            IReactorFDSet(reactor),
            (client_socket, cast(RelayedTransport, client)),
            (backend_socket, cast(RelayedTransport, backend)),
        )

    def start(self, held: bytes) -> None:
        """
        Take both sockets from their (paused) transports and relay, after
        sending C{held} (what the client sent before) to the backend.
        """
        self._client.transport.pauseProducing()
        self._backend.transport.pauseProducing()
        self._reactor.addReader(self._client)
        self._reactor.addReader(self._backend)
        if held:
            self._backend.send(held)

    def hold(self, side: _Side) -> None:
        """C{side}'s socket is full: wait until it is writable; do not read its peer."""
        self._reactor.removeReader(side.peer)
        self._reactor.addWriter(side)

    def drained(self, side: _Side) -> None:
        """C{side} took all it was given: read its peer again."""
        self._reactor.removeWriter(side)
        self._reactor.addReader(side.peer)

    def end(self, side: _Side, resume: bool = True) -> None:
        """
        C{side} saw an end of file or an error: give both sockets back to
        their transports, with what they did not take yet, and resume
        C{side}'s transport, which sees the same and closes as Twisted does.

        @param side: the side that saw it.
        @param resume: whether to resume C{side}'s transport (else the
            caller closes it).
        """
        if self.ended:
            return
        self.ended = True
        for each in (self._client, self._backend):
            self._reactor.removeReader(each)
            self._reactor.removeWriter(each)
        for each in (self._client, self._backend):
            if each.unsent:
                each.transport.write(each.unsent)
                each.unsent = b""
        if resume:
            side.transport.resumeProducing()
