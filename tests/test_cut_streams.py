"""
Tests of answers that their model server cuts short (issue 12): on both
paths of the OpenAI port, the hot one (L{lmproxy.listen.leanforward}) and
twisted.web's routes (L{lmproxy.listen.httpforward}), a body cut short ends
as an error (the client's connection closes without the rest of the body),
is logged once, and is counted on C{/metrics} with the code that was sent.
Both connections are C{StringTransport}s (L{tests.test_openai.Wire}); the
clock is a fake one.  The real thing, with the C{openai} package, is
L{tests.test_integration_openai.OpenAiPortTests.test_backend_crash_mid_stream}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lmproxy.config import Config
from lmproxy.interfaces import ILease, ServiceState
from lmproxy.manage.metrics import Metrics
from lmproxy.requeststats import CLIENT_LEFT, RequestStats, RequestTally
from tests.test_front import CHAT, post
from tests.test_openai import CONFIG, RecordingBackends, Wire
from tests.test_request_metrics import scrape

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENT = b"9\r\ndata: 1\n\n\r\n"
CUT_LINE = "Backend chat ended its response early"
CUT_SERIES = ("lmproxy_openai_responses_cut_total", (("model", "llama-3"), ("service", "chat")))


def answered(code: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of the C{lmproxy_openai_requests_total} sample of chat's llama-3 and C{code}."""
    labels = (("code", str(code)), ("model", "llama-3"), ("service", "chat"))
    return "lmproxy_openai_requests_total", labels


@implementer(ILease)
class CountedLease:
    """A lease that counts the calls of L{release} (a FakeLease heeds only the first)."""

    def __init__(self, lease: ILease) -> None:
        self._lease = lease
        self.host = lease.host
        self.port = lease.port
        self.service = lease.service
        self.may_reconnect = lease.may_reconnect
        self.releases = 0

    def release(self) -> None:
        self.releases += 1
        self._lease.release()

    def take_connection(self) -> None:
        """Never connected to in advance."""

    def reconnect(self) -> Deferred[ILease]:
        return self._lease.reconnect()


class CountingBackends(RecordingBackends):
    """RecordingBackends whose leases count their releases."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.leases: list[CountedLease] = []

    def acquire(self, service: str) -> Deferred[ILease]:
        def counted(lease: ILease) -> ILease:
            self.leases.append(CountedLease(lease))
            return self.leases[-1]

        return super().acquire(service).addCallback(counted)


class CutTests:
    """
    What both paths do; a subclass says how its requests are sent
    (L{request}).  Chat allows one request at a time, so its turn shows too.
    """

    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertNotIn: Callable[..., None]
    patch: Callable[..., None]

    def request(self) -> bytes:
        """A chat request, as the client sends it."""
        raise NotImplementedError

    def setUp(self) -> None:
        chat = evolve(CONFIG.services[0], max_concurrent_requests=1)
        config = evolve(CONFIG, services=(chat, *CONFIG.services[1:]))
        self.backends = CountingBackends(config)
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends, config=config)
        self.metrics = Metrics(self.backends, requests=self.wire.api.stats)
        self.closes: list[str] = []
        client = self.wire.client
        for name in ("loseConnection", "abortConnection"):
            self.patch(client, name, lambda name=name: self.closes.append(name))
        self.wire.channel.dataReceived(self.request())
        self.protocol, self.backend = self.wire.backend()

    def lose_backend(self, reason: Failure) -> list[str]:
        """The backend's connection is lost: the lines logged at warn and above."""
        with capturedLogs() as events:
            self.protocol.connectionLost(reason)
        return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]

    def client_closes(self) -> None:
        """The client's connection closes, as the transport does once asked to."""
        self.wire.channel.connectionLost(Failure(ConnectionDone()))

    def assertOver(self, code: int, cut: bool) -> None:
        """The lease and the turn given back once; the answer counted as C{code}, cut or not."""
        self.assertEqual([lease.releases for lease in self.backends.leases], [1])
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.assertEqual(self.wire.api.limits["chat"].taken, 0)
        samples = scrape(self.metrics)
        self.assertEqual(samples[answered(code)], 1)
        self.assertEqual(samples.get(CUT_SERIES, 0), 1 if cut else 0)

    def assertCut(self, body: bytes, warnings: list[str]) -> None:
        """The client got C{body} (raw) and its connection is closing; one warning line."""
        self.assertEqual(self.wire.response(raw=True)[2], body)
        self.assertEqual(self.closes, ["loseConnection"])
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith(CUT_LINE), warnings)

    def test_cut_after_the_last_event(self) -> None:
        """The backend closes before its last chunk: the client's does too, without it."""
        self.protocol.dataReceived(CHUNKED + EVENT)
        self.assertCut(EVENT, self.lose_backend(Failure(ConnectionDone())))
        # Given back at the cut, before the client's connection is gone.
        self.assertEqual([lease.releases for lease in self.backends.leases], [1])
        self.assertEqual(self.wire.api.limits["chat"].taken, 0)
        self.client_closes()
        self.assertEqual(self.closes, ["loseConnection"])
        self.assertOver(200, cut=True)

    def test_cut_before_any_body_byte(self) -> None:
        """The status and headers still go, then the close."""
        self.protocol.dataReceived(CHUNKED)
        warnings = self.lose_backend(Failure(ConnectionLost()))
        status, headers, _ = self.wire.response(raw=True)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], [b"text/event-stream"])
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        self.assertEqual(self.closes, ["loseConnection"])
        self.assertEqual(len(warnings), 1, warnings)
        self.client_closes()
        self.assertOver(200, cut=True)

    def test_sized_cut(self) -> None:
        """Content-Length promised and not delivered: closed, and counted with its code."""
        self.protocol.dataReceived(b"HTTP/1.1 201 Made\r\nContent-Length: 100\r\n\r\n0123456789")
        self.assertCut(b"0123456789", self.lose_backend(Failure(ConnectionLost())))
        self.client_closes()
        self.assertOver(201, cut=True)

    def test_broken_framing_is_a_cut(self) -> None:
        """
        A chunk size that is no number: the backend connection is dropped,
        never reused; the next request opens another.
        """
        self.protocol.dataReceived(CHUNKED + EVENT)
        with capturedLogs() as events:
            self.protocol.dataReceived(b"zz\r\n")
        warnings = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertCut(EVENT, warnings)
        self.assertTrue(self.backend.disconnecting)
        self.client_closes()
        self.assertOver(200, cut=True)
        other = self.wire.api.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
        other.makeConnection(StringTransport())
        other.dataReceived(self.request())
        self.assertEqual(len(self.wire.reactor.tcpClients), 2)

    def test_ends_that_are_no_cut(self) -> None:
        """A body that ends with its connection, as it said it would: a clean end."""
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
        self.assertEqual(self.lose_backend(Failure(ConnectionDone())), [])
        self.assertEqual(self.wire.response(raw=True)[2], b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(self.closes, [])
        self.assertOver(200, cut=False)

    def test_client_leaves_then_backend_dies(self) -> None:
        """Both at once, the client first: the client left; nothing cut, nothing logged."""
        self.protocol.dataReceived(CHUNKED + EVENT)
        self.wire.client.clear()
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.lose_backend(Failure(ConnectionLost())), [])
        self.assertEqual(self.wire.client.value(), b"")
        self.assertNotIn("loseConnection", self.closes)
        self.assertOver(499, cut=False)

    def test_backend_dies_then_client_leaves(self) -> None:
        """Both at once, the backend first: cut, closed once, counted once."""
        self.protocol.dataReceived(CHUNKED + EVENT)
        self.assertCut(EVENT, self.lose_backend(Failure(ConnectionLost())))
        self.wire.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.closes, ["loseConnection"])
        self.assertOver(200, cut=True)


class HotPathCutTests(CutTests, SynchronousTestCase):
    """A sized JSON request: the hot path forwards it."""

    def request(self) -> bytes:
        return post()

    def test_lease_released_at_the_cut(self) -> None:
        """The hot path gives the lease and the turn back at once, before the client closes."""
        self.protocol.dataReceived(CHUNKED + EVENT)
        self.lose_backend(Failure(ConnectionDone()))
        self.assertOver(200, cut=True)


class TwistedWebCutTests(CutTests, SynchronousTestCase):
    """A chunked request: twisted.web's route forwards it."""

    def request(self) -> bytes:
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: lmproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
        )

    def test_counted_at_the_cut(self) -> None:
        """
        Counted as cut with the backend's code, and the lease and the turn
        given back, at once, though the route waits for the client's
        connection to close (twisted.web would end the body cleanly if the
        route returned before).
        """
        self.protocol.dataReceived(CHUNKED + EVENT)
        self.lose_backend(Failure(ConnectionDone()))
        samples: dict[Any, float] = scrape(self.metrics)
        self.assertEqual((samples[answered(200)], samples[CUT_SERIES]), (1, 1))
        self.assertEqual(self.backends.counts("chat"), (0, 0))
        self.client_closes()
        self.assertOver(200, cut=True)


class TallyCutTests(SynchronousTestCase):
    """L{RequestTally.cut}: one count per answer, and only for an answer not over yet."""

    def test_counts_once(self) -> None:
        requests = RequestStats(["chat"]).of("chat")
        tally = RequestTally(requests, "llama-3", 0.0)
        tally.leased(1.0)
        tally.cut(200)
        tally.cut(200)
        tally.done(CLIENT_LEFT)
        self.assertEqual((requests.cut, requests.answered), ({"llama-3": 1}, {("llama-3", 200): 1}))
        self.assertEqual(requests.in_flight, 0)

    def test_not_after_the_answer_is_over(self) -> None:
        requests = RequestStats(["chat"]).of("chat")
        tally = RequestTally(requests, "llama-3", 0.0)
        tally.done(CLIENT_LEFT)
        tally.cut(200)
        self.assertEqual((requests.cut, requests.answered), ({}, {("llama-3", CLIENT_LEFT): 1}))
