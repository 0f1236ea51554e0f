"""
Tests for L{lmproxy.compat.writes}: what L{Sender} assumes of Twisted's TCP
transports, on real connections over 127.0.0.1.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lmproxy.compat.tcp import socket_of
from lmproxy.compat.writes import Sender
from tests.harness import connected_pair, wait_for


class Collector(Protocol):
    """Keeps what it receives."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class SendNowTests(TestCase):
    """Assumptions 1 and 2 of L{lmproxy.compat.writes}, on a real connection."""

    async def connect(self) -> tuple[Protocol, Collector]:
        return await connected_pair(self, Collector)

    async def test_sent_at_once(self) -> None:
        """With nothing unsent, the bytes go on the socket at once: the transport holds none."""
        client, server = await self.connect()
        Sender(client.transport).send(b"hello")
        transport = client.transport
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        self.assertNotIn(transport, reactor.getWriters())
        await wait_for(lambda: server.data == b"hello", 30, "the bytes")

    async def test_order_kept_when_the_socket_is_full(self) -> None:
        """What the socket does not take waits in the transport, before anything sent later."""
        client, server = await self.connect()
        server.transport.pauseProducing()  # the peer stops reading: the socket fills
        sock = socket_of(client.transport)
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pieces = [bytes([65 + i % 26]) * 65536 for i in range(64)]
        sender = Sender(client.transport)
        for piece in pieces:
            sender.send(piece)
        transport = client.transport
        self.assertTrue(transport.dataBuffer or transport._tempDataBuffer)  # assumption 1
        # Make room in the socket while the transport still holds bytes: a
        # send straight on the socket now would overtake them.
        peer = socket_of(server.transport)
        assert peer is not None
        early = peer.recv(1 << 20)
        sender.send(b"last")
        server.transport.resumeProducing()
        everything = b"".join(pieces) + b"last"
        await wait_for(lambda: len(early + server.data) == len(everything), 30, "every byte")
        self.assertEqual(early + server.data, everything)

    async def test_closing_transport_is_left_alone(self) -> None:
        """A transport that is closing gets the bytes (and drops them): assumption 2."""
        client, _ = await self.connect()
        client.transport.loseConnection()
        self.assertTrue(client.transport.disconnecting)
        Sender(client.transport).send(b"late")
        self.assertIn(b"late", [client.transport.dataBuffer, *client.transport._tempDataBuffer])


class OtherTransportTests(SynchronousTestCase):
    def test_string_transport(self) -> None:
        """A transport without a socket of its own gets a plain write."""
        transport = StringTransport()
        Sender(transport).send(b"x")
        self.assertEqual(transport.value(), b"x")
