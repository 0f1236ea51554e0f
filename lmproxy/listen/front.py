"""
The OpenAI port's connections: a hot path for the requests that are
forwarded, and twisted.web for everything else.

twisted.web's C{HTTPChannel} and C{Request} cost most of the port's CPU per
forwarded request.  A L{FrontChannel} reads each request's head itself
(L{lmproxy.listen.requesthead}); a request that its site's hot routes
take (a plain C{POST} of a JSON body to an inference endpoint, from a client
the port's gate lets in) is read whole and handed to them
(L{lmproxy.listen.frontsite}), which forward
it on a pooled backend connection and write the answer straight to the
client (L{lmproxy.listen.leanforward}).  Every other request, and every one
the routes give back (its body is not JSON, its model unknown: answers that
the twisted.web routes give), is passed, byte for byte, to a twisted.web
channel of the port's own site (a L{lmproxy.listen.timeouts.GuardedChannel})
behind the same connection, and the next request is read once that one is
answered.  A head the channel is not sure of (not plain, or a body framed by
chunks) hands the rest of the connection to twisted.web.  So the answers,
errors and limits of the port stay twisted.web's; only the hot path is new.
A request that the site's tunnels take (C{/upstream/...}, whatever its
framing) gets the rest of the connection: its body is not read here.

The channel bounds its own requests as the guarded channel does: the headers
within L{HEADERS_SECONDS}, the body moving, a kept connection idle for
L{IDLE_SECONDS} at most.  It is the transport's one producer, and passes
pauses on to whoever writes: the forwarded answer's backend, or twisted.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from lmproxy.compat.writes import Sender
from lmproxy.listen.innertransport import InnerTransport
from lmproxy.listen.requesthead import MAX_HEAD_BYTES, RequestHead, head_end, parse_head
from lmproxy.listen.timeouts import (
    BODY_LATE,
    BODY_STALL_SECONDS,
    HEADERS_LATE,
    HEADERS_SECONDS,
    IDLE_SECONDS,
    GuardedChannel,
    body_deadline,
    timeout_answer,
)
from lmproxy.timers import Timer

if TYPE_CHECKING:
    from lmproxy.listen.frontsite import Exchange, FrontSite, Tunnel

_PIPELINED_BYTES = 64 * 1024
"""Bytes of later requests held while one is answered; past this, reading pauses."""

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@implementer(IPushProducer)
class FrontChannel(Protocol):
    """
    One client connection of the OpenAI port (see the module).

    Its phase: C{"idle"} between requests, C{"head"} while a head comes,
    C{"body"} while the body of a hot request comes, C{"forwarding"} while
    one is answered, C{"inner"} while twisted.web has a request,
    C{"inner_all"} once twisted.web has the connection, C{"tunnel"} once a
    passthrough has it (L{lmproxy.listen.upstream}), C{"closed"}.
    """

    def __init__(self, site: FrontSite, addr: IAddress | None) -> None:
        """
        @param site: its site.
        @param addr: the client's address.
        """
        self._site = site
        self._addr = addr
        self._clock: IReactorTime = site.reactor
        self._timer = Timer(self._clock)
        self._phase = "idle"
        self._buffer = b""
        self._head: RequestHead | None = None
        self._since = 0.0  # the phase's start: idle, head or body
        self._last_byte = 0.0
        self._inner: GuardedChannel | None = None
        self._inner_left = 0  # body bytes of twisted.web's request still to pass on
        self._inner_transport: InnerTransport | None = None
        self.exchange: Exchange | None = None
        self._tunnel: Tunnel | None = None  # takes every byte in the "tunnel" phase
        self._reading_paused = False
        self._client_full = False

    @property
    def client_full(self) -> bool:
        """Whether the client's connection holds more than it takes: a new answer waits."""
        return self._client_full

    # --- The connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._sender = Sender(transport)
        self._since = self._clock.seconds()
        self._timer.push(IDLE_SECONDS, self._check)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._phase = "closed"
        self._timer.cancel()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_left()
        if self._inner is not None:
            self._inner.connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase == "closed":
            return
        if phase == "inner_all":
            self._pass(data)
            return
        if phase == "tunnel" and self._tunnel is not None:
            self._tunnel.data_received(data)
            return
        if phase == "inner" and self._inner_left:
            taken = data[: self._inner_left]
            self._inner_left -= len(taken)
            data = data[len(taken) :]
            self._pass(taken)
        if not data:
            return
        if phase == "body":
            self._last_byte = self._clock.seconds()
        self._buffer = self._buffer + data if self._buffer else data
        if phase in ("idle", "head", "body"):
            self._read()
        elif len(self._buffer) > _PIPELINED_BYTES:
            self._pause_reading()

    def _read(self) -> None:
        """Take the requests that are in, one at a time."""
        while self._phase in ("idle", "head") and self._buffer:
            if self.transport.disconnecting:  # type: ignore[union-attr]
                return
            end = head_end(self._buffer)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._hand_over_all()
                elif self._phase == "idle":
                    self._phase = "head"
                    self._since = self._clock.seconds()
                    self._timer.push(HEADERS_SECONDS, self._check)
                return
            head = parse_head(self._buffer[:end])
            if head is not None and self._site.tunnels.takes(head):
                self._phase = "tunnel"  # the connection is the tunnel's
                self._timer.cancel()
                body, self._buffer = self._buffer[head.size :], b""
                self._tunnel = self._site.tunnels.open(self, head, body)
                return
            if head is None or not head.plain_framing:
                self._hand_over_all()
                return
            if not self._site.routes.takes(head):
                self._hand_over(head)
                return
            self._head = head
            self._phase = "body"
            self._since = self._last_byte = self._clock.seconds()
        if self._phase == "body":
            self._body()

    def _body(self) -> None:
        head = self._head
        assert head is not None
        whole = head.size + (head.content_length or 0)
        if len(self._buffer) < whole:
            if len(self._buffer) == head.size and head.one(b"expect") is not None:
                self._sender.send(_CONTINUE)  # once: the body follows it
            self._timer.push(BODY_STALL_SECONDS, self._check)
            return
        raw, self._buffer = self._buffer[:whole], self._buffer[whole:]
        self._phase = "forwarding"
        if len(self._buffer) > _PIPELINED_BYTES:
            self._pause_reading()
        self._site.routes.forward(self, head, raw[head.size :], raw)

    # --- What the hot path's routes call ------------------------------------------

    def send(self, data: bytes) -> None:
        """Write C{data} to the client, at once when nothing waits before it."""
        self._sender.send(data)

    def answered(self, keep_alive: bool) -> None:
        """
        The forwarded request is answered: read the next one, or close.

        @param keep_alive: whether the connection may take another request.
        """
        self.exchange = None
        if self._phase == "closed":
            return
        if not keep_alive:
            self._phase = "closed"
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._next()

    def fall_back(self, raw: bytes) -> None:
        """
        Give the whole request C{raw} (head and body) to twisted.web, as it came.
        """
        self._phase = "inner"
        self._inner_left = 0
        self._pass(raw)

    # --- twisted.web's requests ---------------------------------------------------

    def _inner_channel(self) -> GuardedChannel:
        if self._inner is None:
            inner = self._site.inner_channel(self._addr)
            inner.on_answered = self._inner_answered
            self._inner_transport = InnerTransport(self.transport)
            inner.makeConnection(self._inner_transport)
            self._inner = inner
        return self._inner

    def _pass(self, data: bytes) -> None:
        self._inner_channel().dataReceived(data)

    def _hand_over(self, head: RequestHead) -> None:
        """Give twisted.web this request, whose length its head says."""
        self._phase = "inner"
        whole = head.size + (head.content_length or 0)
        taken, self._buffer = self._buffer[:whole], self._buffer[whole:]
        self._inner_left = whole - len(taken)
        self._pass(taken)

    def _hand_over_all(self) -> None:
        """Give twisted.web the rest of the connection."""
        self._phase = "inner_all"
        self._timer.cancel()
        data, self._buffer = self._buffer, b""
        self._resume_reading()
        self._pass(data)

    def _inner_answered(self) -> None:
        if self._phase != "inner":
            return
        if self._inner_left:
            # Answered before its whole body came (and closing): what comes
            # is still its request's, never a new one.
            self._phase = "inner_all"
            return
        self._next()

    # --- Between requests ---------------------------------------------------------

    def _next(self) -> None:
        self._phase = "idle"
        self._since = self._clock.seconds()
        self._timer.push(IDLE_SECONDS, self._check)
        self._resume_reading()
        if self._buffer:
            self._read()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _check(self) -> None:
        """A deadline may have passed: act on it, or wait for the phase's own."""
        now = self._clock.seconds()
        phase = self._phase
        if phase == "idle":
            ends = self._since + IDLE_SECONDS
        elif phase == "head":
            ends = self._since + HEADERS_SECONDS
        elif phase == "body":
            head = self._head
            assert head is not None
            ends = body_deadline(self._since, self._last_byte, len(self._buffer) - head.size)
        else:
            return  # answering, or twisted.web's: no deadline of ours
        if now < ends:
            self._timer.push(ends - now, self._check)
            return
        self._phase = "closed"
        if phase == "idle":
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        message = HEADERS_LATE if phase == "head" else BODY_LATE
        cors = self._site.cors.headers_for(self._head) if phase == "body" and self._head else []
        answer = timeout_answer(self._site, message, self._reading_path(phase), cors)
        self.transport.writeSequence(answer)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _reading_path(self, phase: str) -> bytes | None:
        """
        The path of the request being read in C{phase} (C{"head"} or
        C{"body"}), once its request line is in, as twisted.web's channel
        knows it (L{lmproxy.compat.web.reading_path}).
        """
        if phase == "body" and self._head is not None:
            return self._head.path
        line, end, _ = self._buffer.partition(b"\r\n")
        parts = line.split(b" ")
        return parts[1].partition(b"?")[0] if end and len(parts) == 3 else None

    # --- IPushProducer: the client's connection ------------------------------------

    def pauseProducing(self) -> None:
        """The client's connection is full: pause whoever writes to it."""
        self._client_full = True
        if self.exchange is not None:
            self.exchange.pause()
        inner = self._inner_producer()
        if inner is not None:
            inner.pauseProducing()

    def resumeProducing(self) -> None:
        """The client's connection has room again."""
        self._client_full = False
        if self.exchange is not None:
            self.exchange.resume()
        inner = self._inner_producer()
        if inner is not None:
            inner.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is going: C{connectionLost} follows."""
        inner = self._inner_producer()
        if inner is not None:
            inner.stopProducing()

    def _inner_producer(self) -> IPushProducer | None:
        """What writes twisted.web's answers, while one is written."""
        return None if self._inner_transport is None else self._inner_transport.producer
