"""
The OpenAI port's passthrough: C{/upstream/{model}/{path}} reaches the
service of C{model} as C{/{path}}, with any method, query, headers and
body, streamed both ways (L{UpstreamRoutes}, L{UpstreamExchange}).

It lives on the port's front channel (L{lmproxy.listen.front}): once a
request's head is in and its path starts with C{/upstream/}, the channel
hands the connection over.  The request takes a turn and a lease as any
forwarded request does (L{lmproxy.listen.leanforward.LeanExchange}, whose
waits, reconnect and error answers it shares), then its backend gets the
head rewritten (the new target, C{Host} set to the backend's, hop-by-hop
headers dropped, C{Connection: close}) and, from then on, the bytes both
ways as they come, each side pausing the other when it is full.  The body
is never parsed nor bounded (its framing passes as the client sent it), and
the answer is the backend's own, byte for byte but for lmproxy's CORS
headers (L{lmproxy.listen.upstreamheads.AnswerHeads}): its end is the
backend closing, and the client's connection closes with it.  A WebSocket upgrade
keeps its C{Upgrade} header and C{Connection: upgrade}, and then carries
the protocol until either side closes.

Not a L{lmproxy.listen.relay.Relay}: the connection may still hold earlier
answers that its transport has not sent, which a relay writing on the
socket would overtake; and the answer's status is read for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from lmproxy.interfaces import ILease
from lmproxy.listen import forwarderrors
from lmproxy.listen.backendpool import authority
from lmproxy.listen.forwarderrors import Answer
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.guard import HeaderLookup, Refusal
from lmproxy.listen.leanforward import LeanExchange
from lmproxy.listen.requesthead import RequestHead
from lmproxy.listen.upstreamheads import PREFIX, AnswerHeads, not_found, resolve, rewritten_head

if TYPE_CHECKING:
    from lmproxy.listen.leanroutes import Forwarding

HELD_BYTES = 64 * 1024
"""Body bytes held while the service starts; past this, the client is not read."""


class UpstreamRoutes:
    """
    Which requests the passthrough takes, and where each goes.

    @param forwarding: what forwarding takes.
    @param services: the service of each model id (changed in place on reload).
    @param gate: the port's gate: a request it refuses is left to twisted.web,
        which refuses it as every other.
    """

    def __init__(
        self,
        forwarding: Forwarding,
        services: Mapping[str, str],
        gate: Callable[[HeaderLookup], Refusal | None],
    ) -> None:
        self._forwarding = forwarding
        self._services = services
        self._gate = gate

    def takes(self, head: RequestHead) -> bool:
        """Whether C{head} is a passthrough request the gate lets in."""
        return (
            head.path.startswith(PREFIX)
            and self._gate(head) is None
            and not self._forwarding.cors.answers(head.method, head)  # twisted.web answers it
        )

    def open(
        self, channel: FrontChannel, head: RequestHead, body: bytes
    ) -> UpstreamExchange | None:
        """
        Pass the request through, or answer OpenAI's 404 for a model that
        is not known (nothing starts) and close.

        @param body: what came of its body so far.
        @return: the exchange that takes the rest of the connection's bytes.
        """
        resolved = resolve(head.target, self._services)
        if resolved is None:
            answer = not_found(head.target)
            own = self._forwarding.cors.headers_for(head)
            answer = replace(answer, headers=[*answer.headers, *own])
            document = answer.body(head.path)
            channel.send(b"".join([*answer.head_lines(True, document), document]))
            channel.answered(keep_alive=False)
            return None
        model, target = resolved
        service = self._services[model]
        return UpstreamExchange(self._forwarding, channel, head, body, service, model, target)


@implementer(IPushProducer)
class _BackendSide(Protocol):
    """
    The backend's end of a passthrough: hands its bytes to its exchange, and
    pauses the client while the backend's connection is full (its producer).
    """

    def __init__(self, exchange: UpstreamExchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:
        self._exchange.backend_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.backend_closed(reason)

    def pauseProducing(self) -> None:
        self._exchange.read_client(False)

    def resumeProducing(self) -> None:
        self._exchange.read_client(True)

    def stopProducing(self) -> None:
        """The backend's connection is going: its C{connectionLost} follows."""


class UpstreamExchange(LeanExchange):
    """
    One passthrough request (see the module): a L{LeanExchange} until its
    backend is connected, then the bytes of both ways.  Its answers of its
    own close the connection: the rest of the body is not read.
    """

    def __init__(
        self,
        forwarding: Forwarding,
        channel: FrontChannel,
        head: RequestHead,
        body: bytes,
        service: str,
        model: str,
        target: bytes,
    ) -> None:
        """
        @param forwarding: what forwarding takes.
        @param channel: the client's connection.
        @param head: the request's head.
        @param body: what came of its body so far.
        @param service: the service of C{model}.
        @param model: the model the path names.
        @param target: the backend's request target.
        """
        self._target = target
        self._body_held = [body] if body else []
        self._held_bytes = len(body)
        self._side: _BackendSide | None = None
        self._answered = False  # a byte of the answer came
        super().__init__(forwarding, channel, head, b"", service, model)
        self._heads = AnswerHeads(self._cors)
        if not self._over and self._held_bytes > HELD_BYTES:
            self.read_client(False)

    # --- The client ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """More of the client's bytes: to the backend, or held until it is connected."""
        if self._over:
            return
        if self._side is not None:
            self._side.transport.write(data)  # type: ignore[union-attr]
            return
        self._body_held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > HELD_BYTES:
            self.read_client(False)

    def read_client(self, reading: bool) -> None:
        """
        Read the client, or stop (while the backend's connection is full, or
        too much is held): its transport's own pause, which its channel
        leaves to the tunnel.
        """
        transport = self._channel.transport
        if reading:
            transport.resumeProducing()  # type: ignore[union-attr]
        else:
            transport.pauseProducing()  # type: ignore[union-attr]

    def pause(self) -> None:
        """The client reads slower than the backend writes: stop reading the backend."""
        if self._side is not None:
            self._side.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        """The client caught up."""
        if self._side is not None:
            self._side.transport.resumeProducing()  # type: ignore[union-attr]

    def client_left(self) -> None:
        """The client is gone: drop the wait, or close the backend's connection."""
        side, self._side = self._side, None
        super().client_left()
        if side is not None:
            side.transport.abortConnection()  # type: ignore[union-attr]

    def _answer(self, answer: Answer) -> None:
        self._keep_alive = False  # the rest of the body may still come
        super()._answer(answer)

    # --- The backend ---------------------------------------------------------------

    def _leased(self, lease: ILease) -> None:
        if self._over:  # the client left while it came
            lease.release()
            return
        self._lease = lease
        self._tally.leased(self._clock.seconds())
        connecting = self._connections.own_connection(lease.host, lease.port, _BackendSide(self))
        self._wait(connecting, self._connected, self._connect_failed)

    def _connected(self, side: _BackendSide) -> None:
        if self._over:
            side.transport.loseConnection()  # type: ignore[union-attr]
            return
        lease = self._lease
        assert lease is not None and side.transport is not None
        self._side = side
        self.read_client(True)  # the held bytes go now
        side.transport.registerProducer(side, True)  # type: ignore[attr-defined]
        head = rewritten_head(self._head, self._target, authority(lease.host, lease.port))
        held, self._body_held = self._body_held, []
        side.transport.writeSequence([head, *held])
        if self._channel.client_full:
            side.transport.pauseProducing()  # type: ignore[attr-defined]

    def backend_data(self, data: bytes) -> None:
        """The backend's answer, as it comes: to the client (L{AnswerHeads})."""
        if self._over:
            return
        if not self._answered:
            self._answered = True
            self._tally.first_byte(self._clock.seconds())
        sent = self._heads.feed(data)
        self._code = self._heads.code
        if sent:
            self._channel.send(sent)

    def backend_closed(self, reason: Failure) -> None:
        """The backend closed: the answer is over (or never came: a 502)."""
        self._side = None
        if self._over:
            return
        if not self._answered:
            self._answer(forwarderrors.no_response(self._service, reason.value))  # type: ignore[arg-type]
            return
        held = self._heads.rest()  # a head cut short
        if held:
            self._channel.send(held)
        self._code = self._heads.code or 502
        self._finish(keep_alive=False)
