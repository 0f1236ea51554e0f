"""
Tests of L{lmproxy.compat}: one test per assumption it makes of Twisted
beyond its public API (numbered as in the docstrings of its modules), so that
a Twisted upgrade that breaks one fails here.  For L{lmproxy.compat.web}, a
real C{Site} and C{HTTPChannel} over a C{StringTransport}: no sockets, no
time; for L{lmproxy.compat.process}, a real child process.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lmproxy.compat.process import can_spawn_in_session, spawn_in_session, twisted_children
from lmproxy.compat.tcp import socket_of
from lmproxy.compat.web import EarlyAnswerRequest, reading_path
from tests.harness import ProcessOutput, connected_pair

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)


class Rendered(Resource):
    """Records each request it renders."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b"rendered"


class EarlyAnswerTests(SynchronousTestCase):
    """What HTTPChannel tells an L{EarlyAnswerRequest}, and when."""

    def setUp(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.answer_on: str | None = None  # "length" or "chunk": answer early then
        test = self

        class Recording(EarlyAnswerRequest):
            def body_length(self, length: int | None) -> None:
                test.events.append(("length", length))
                if test.answer_on == "length":
                    self.answer_early(413, Headers({b"Content-Length": [b"2"]}), b"no")

            def body_chunk(self, data: bytes) -> None:
                test.events.append(("chunk", data))
                if test.answer_on == "chunk":
                    self.answer_early(413, Headers({b"Content-Length": [b"2"]}), b"no")

        self.resource = Rendered()
        # A fake clock: the channels' timeouts must not reach the global reactor.
        self.site = Site(self.resource, reactor=Clock())
        self.site.requestFactory = Recording
        self.connect()

    def connect(self) -> None:
        """A new client connection to the site."""
        self.transport = StringTransport(peerAddress=CLIENT)
        self.channel = self.site.buildProtocol(CLIENT)
        assert self.channel is not None
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def test_1_length_first(self) -> None:
        """C{gotLength}: the declared length (None when chunked) before any body byte."""
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.events, [("length", 5)])
        self.send(b"hello")
        self.assertEqual(self.events, [("length", 5), ("chunk", b"hello")])
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(self.events[2:], [("length", None)])

    def test_2_expect_read_after_length(self) -> None:
        """Removing C{Expect} in C{gotLength} means no C{100 Continue}."""
        head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        self.send(head)
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.answer_on = "length"
        self.connect()
        self.send(head)
        self.assertEqual(
            self.transport.value(),
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 2\r\n\r\nno",
        )

    def test_3_chunks_decoded_in_order(self) -> None:
        """C{handleContentChunk}: the body without its chunked framing, in order."""
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.send(b"3\r\nabc\r\n")
        self.send(b"2\r\nde\r\n0\r\n\r\n")
        chunks = [data for kind, data in self.events if kind == "chunk"]
        self.assertEqual(chunks, [b"abc", b"de"])
        self.assertEqual(self.resource.bodies, [b"abcde"])

    def test_4_request_received_starts_processing(self) -> None:
        """Not passing C{requestReceived} on leaves the resource unrendered."""
        self.answer_on = "chunk"
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(self.events, [("length", 5), ("chunk", b"hello")])
        self.assertEqual(self.resource.bodies, [])
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))

    def test_5_nothing_written_after_an_early_answer(self) -> None:
        """Once closed early, the channel takes the client's bytes and writes nothing."""
        self.answer_on = "length"
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.transport.clear()
        self.send(b"0123456789")
        self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.events, [("length", 10)])
        self.assertEqual(self.resource.bodies, [])
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_6_path_known_from_the_request_line(self) -> None:
        """C{_path}: the target from the request line on, gone once the request is complete."""
        self.site.protocol = HTTPChannel  # as lmproxy's sites: no HTTP/2 wrapper around it
        self.connect()
        self.assertIsNone(reading_path(self.channel))
        self.send(b"POST /v1/messages?beta=true HTTP/1.1\r\n")
        self.assertEqual(reading_path(self.channel), b"/v1/messages")
        self.send(b"Host: x\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.events, [("length", 5)])
        self.assertEqual(reading_path(self.channel), b"/v1/messages")
        self.send(b"hello")
        self.assertEqual(self.resource.bodies, [b"hello"])
        self.assertIsNone(reading_path(self.channel))


class _Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class TwistedAssumptionTests(TestCase):
    """What L{twisted_children} assumes of Twisted's process support (a real child)."""

    async def test_spawned_child_is_known_until_reaped(self) -> None:
        protocol = _Ended()
        transport = reactor.spawnProcess(protocol, "/bin/sleep", ["sleep", "600"], env={})
        pid = transport.pid
        self.assertIn(pid, twisted_children())
        os.kill(pid, signal.SIGKILL)
        await protocol.ended
        self.assertNotIn(pid, twisted_children())


class SessionSpawnTests(TestCase):
    """What L{spawn_in_session} assumes of Twisted's C{Process} (real children)."""

    # The child's pid, process group and session (fields 1, 5 and 6 of its stat), and cwd.
    SCRIPT = "read -r a b c d e f g < /proc/$$/stat; echo $$ $e $f; pwd"

    async def _script(self, path: str | None) -> list[str]:
        protocol = ProcessOutput()
        devnull = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, devnull)
        spawn_in_session(
            reactor,
            protocol,
            "sh",
            ["sh", "-c", self.SCRIPT],
            {"PATH": os.environ["PATH"]},
            path,
            {0: devnull, 1: "r", 2: "r"},
        )
        await protocol.ended
        return protocol.data.decode().split()

    def test_posix_reactor(self) -> None:
        self.assertTrue(can_spawn_in_session(reactor))
        self.assertFalse(can_spawn_in_session(Clock()))

    async def test_spawned_with_setsid(self) -> None:
        """In lmproxy's directory: posix_spawn, asked for setsid."""
        calls: list[dict[str, object]] = []
        spawn = os.posix_spawnp

        def recording(*args: Any, **kwargs: Any) -> int:
            calls.append(kwargs)
            return spawn(*args, **kwargs)

        self.patch(os, "posix_spawnp", recording)
        pid, group, session, cwd = await self._script(None)
        self.assertEqual((group, session, cwd), (pid, pid, os.getcwd()))
        self.assertEqual([call["setsid"] for call in calls], [True])

    async def test_forked_elsewhere(self) -> None:
        """In another directory, Twisted forks: setsid in the child."""
        elsewhere = os.path.realpath(self.mktemp())
        os.makedirs(elsewhere)
        pid, group, session, cwd = await self._script(elsewhere)
        self.assertEqual((group, session, cwd), (pid, pid, elsewhere))


class PausedTransportTests(TestCase):
    """What L{lmproxy.compat.tcp} assumes of Twisted's TCP transports (a real connection)."""

    async def test_paused_transport_is_not_watched(self) -> None:
        client, server = await connected_pair(self, Protocol)
        for protocol in (client, server):
            transport = protocol.transport
            self.assertIsNotNone(socket_of(transport))
            transport.pauseProducing()
        watched = reactor.getReaders() + reactor.getWriters()
        self.assertFalse(any(p.transport in watched for p in (client, server)))
        for protocol in (client, server):
            protocol.transport.resumeProducing()
        self.assertTrue(all(p.transport in reactor.getReaders() for p in (client, server)))
        for protocol in (client, server):
            protocol.transport.loseConnection()
