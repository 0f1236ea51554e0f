"""
The OpenAI port's hot path: a JSON request whose model names a service,
forwarded on a pooled backend connection, its answer written straight to
the client's connection (L{lmproxy.listen.front}).

It does what the twisted.web route does (L{lmproxy.listen.openai}), without
its C{Request}, C{Agent} and Deferred chains: a L{LeanExchange} holds an
C{ILease} from the moment its backend is running until its answer is over
(waiting, it counts as a waiting connection of its service; forwarded, its
service is never evicted), reconnects once when the lease allows it, and
relays the answer with the backend's own framing where it can (a sized
body stays sized; a chunked or connection-delimited one is chunked), the
hop-by-hop headers filtered both ways.  A client that reads slowly pauses
the backend's connection; a client that leaves closes it, which cancels the
generation, and drops the lease.  An answer its backend cuts short ends as
an error: the client's connection closes without the rest of the body.
Whatever the route would answer with an
error of its own (a body that is not a JSON object, no model, an unknown
one) goes to the route instead: L{FrontChannel.fall_back}.  Which requests
take this path is L{lmproxy.listen.leanroutes}'s to say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss
from twisted.web.http import NO_BODY_CODES, RESPONSES

from lmproxy.interfaces import ILease, ServiceUnavailable
from lmproxy.listen import cors, forwarderrors
from lmproxy.listen.backendconn import BackendConnection, HeaderPairs, StaleConnection
from lmproxy.listen.backendpool import authority, request_bytes
from lmproxy.listen.forwarderrors import Answer
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.httpforward import REQUEST_ONLY, connection_named, end_to_end
from lmproxy.listen.limits import QueueFull, Turn
from lmproxy.listen.requesthead import RequestHead
from lmproxy.logs import debugging, log_observer

if TYPE_CHECKING:
    from lmproxy.listen.leanroutes import Forwarding
from lmproxy.requeststats import CLIENT_LEFT, RequestTally

log = Logger(observer=log_observer)

_CONNECT_ERRORS = (ConnectError, DNSLookupError)


def _forwarded_headers(head: RequestHead) -> HeaderPairs:
    named = connection_named(head.fields.get(b"connection", ()))
    return [
        (name, value)
        for name, value in head.headers
        if end_to_end(name.lower(), named, REQUEST_ONLY)
    ]


class LeanExchange:
    """
    One hot request: its lease, its backend connection, and the relay of
    its answer (a L{lmproxy.listen.backendconn.ResponseReceiver}).  It
    starts at once.
    """

    def __init__(
        self,
        forwarding: Forwarding,
        channel: FrontChannel,
        head: RequestHead,
        body: bytes,
        service: str,
        model: str,
    ) -> None:
        """
        @param forwarding: what forwarding takes.
        @param channel: the client's connection.
        @param head: the request's head.
        @param body: its body.
        @param service: the service its model names.
        @param model: the model it names.
        """
        self._connections = forwarding.connections
        self._clock = clock = forwarding.clock
        self._channel = channel
        self._head = head
        self._cors = forwarding.cors.headers_for(head)  # on every answer
        self._body = body
        self._service = service
        self._began = clock.seconds()
        self._keep_alive = b"close" not in connection_named(head.fields.get(b"connection", ()))
        self._lease: ILease | None = None
        self._waiting: Deferred[Any] | None = None  # the lease, or a connection
        self._connection: BackendConnection | None = None
        self._held: list[bytes] = []  # the answer's head, sent with its first bytes
        self._chunked = False
        self._code = 0
        self._over = False
        self._backends = forwarding.backends
        self._turn: Turn | None = None
        limit = forwarding.limits.get(service)
        self._tally = RequestTally(
            forwarding.stats.of(service), model, self._began, queued=limit is not None
        )
        channel.exchange = self
        if limit is None:
            self._turn_taken(None)
            return
        try:
            taking = limit.take()
        except QueueFull as e:
            self._answer(forwarderrors.queue_full(service, e))
            return
        self._wait(taking, self._turn_taken, self._unavailable)

    def _turn_taken(self, turn: Turn | None) -> None:
        if self._over:  # the client left while it came
            if turn is not None:
                turn.done()
            return
        self._turn = turn
        self._tally.turn()
        acquiring = self._backends.acquire(self._service)
        self._wait(acquiring, self._leased, self._unavailable)

    def _wait(
        self,
        waiting: Deferred[Any],
        done: Callable[..., None],
        failed: Callable[[Failure], None],
    ) -> None:
        self._waiting = waiting
        waiting.addCallbacks(
            self._waited, self._waited_failed, callbackArgs=(done,), errbackArgs=(failed,)
        )

    def _waited(self, result: object, done: Callable[..., None]) -> None:
        self._waiting = None
        done(result)

    def _waited_failed(self, failure: Failure, failed: Callable[[Failure], None]) -> None:
        self._waiting = None
        if not self._over:  # else the client left, and cancelled it
            failed(failure)

    # --- Lease and connection -------------------------------------------------

    def _leased(self, lease: ILease) -> None:
        if self._over:  # the client left while it came
            lease.release()
            return
        self._lease = lease
        self._tally.leased(self._clock.seconds())
        connection = self._connections.idle_connection(lease.host, lease.port)
        if connection is not None:
            self._send(connection)
            return
        connecting = self._connections.new_connection(lease.host, lease.port)
        self._wait(connecting, self._send, self._connect_failed)

    def _unavailable(self, failure: Failure) -> None:
        if failure.check(QueueFull):
            self._answer(forwarderrors.queue_full(self._service, failure.value))  # type: ignore[arg-type]
            return
        error = failure.check(ServiceUnavailable)
        if error is None:
            self._internal_error(failure)
            return
        assert isinstance(failure.value, ServiceUnavailable)
        self._answer(forwarderrors.unavailable(self._service, failure.value))

    def _connect_failed(self, failure: Failure) -> None:
        lease = self._lease
        assert lease is not None
        if failure.check(*_CONNECT_ERRORS) is None:
            self._internal_error(failure)
            return
        if lease.may_reconnect:
            log.info(
                "Connecting to {service} at {host}:{port} failed ({why}); reconnecting",
                service=self._service,
                host=lease.host,
                port=lease.port,
                why=failure.getErrorMessage(),
            )
            self._lease = None  # reconnect() releases it
            self._wait(lease.reconnect(), self._leased, self._unavailable)
            return
        self._answer(forwarderrors.connect_failed(self._service, failure.value))  # type: ignore[arg-type]

    def _send(self, connection: BackendConnection) -> None:
        if self._over:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        lease = self._lease
        assert lease is not None
        self._connection = connection
        head = self._head
        data = request_bytes(
            head.method,
            head.target,
            authority(lease.host, lease.port),
            _forwarded_headers(head),
            self._body,
        )
        if self._channel.client_full:
            connection.pauseProducing()
        connection.send(data, self)

    # --- The answer (ResponseReceiver) ------------------------------------------

    def response_head(
        self, code: int, phrase: bytes, headers: HeaderPairs, length: int | None
    ) -> None:
        self._code = code
        self._tally.first_byte(self._clock.seconds())
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, phrase or RESPONSES.get(code, b""))]
        lines.extend(b"%s: %s\r\n" % pair for pair in cors.forwarded(headers, self._cors))
        if code in NO_BODY_CODES:
            pass
        elif length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        else:
            self._chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not self._keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if self._chunked:  # a stream: its client sees the status at once
            self._channel.send(b"".join(lines))
        else:
            self._held = lines

    def response_data(self, data: bytes) -> None:
        if self._chunked:
            self._channel.send(b"%x\r\n%s\r\n" % (len(data), data))
        elif self._held:
            self._held.append(data)
            self._channel.send(b"".join(self._held))
            self._held = []
        else:
            self._channel.send(data)

    def response_end(self, reason: Failure | None) -> None:
        if self._held:  # no body byte came: the head goes alone
            self._channel.send(b"".join(self._held))
            self._held = []
        if reason is not None and reason.check(PotentialDataLoss) is None:
            log.warn(
                "Backend {service} ended its response early: {reason}",
                service=self._service,
                reason=reason.getErrorMessage(),
            )
            # Cut short: closing without the rest of the body (a sized one's
            # missing bytes, a chunked one's last chunk) tells the client so.
            self._tally.cut(self._code)
            self._finish(keep_alive=False)
            return
        if self._chunked:
            self._channel.send(b"0\r\n\r\n")
        self._finish(self._keep_alive)

    def response_never_received(self, reason: Failure) -> None:
        lease = self._lease
        if reason.check(StaleConnection) and lease is not None:
            # The backend closed the kept connection while it was idle: a new one.
            self._connection = None
            connecting = self._connections.new_connection(lease.host, lease.port)
            self._wait(connecting, self._send, self._connect_failed)
            return
        self._answer(forwarderrors.no_response(self._service, reason.value))  # type: ignore[arg-type]

    # --- Flow control and ends (the channel's Exchange) ----------------------------

    def pause(self) -> None:
        """The client reads slower than the backend writes: stop reading the backend."""
        if self._connection is not None:
            self._connection.pauseProducing()

    def resume(self) -> None:
        """The client caught up."""
        if self._connection is not None:
            self._connection.resumeProducing()

    def client_left(self) -> None:
        """The client is gone: drop the wait, or the backend connection (ends the generation)."""
        if self._over:
            return
        self._over = True
        log.info(
            "{method} {path} -> {service}: the client left {when}",
            method=self._head.method.decode("latin-1"),
            path=self._head.path.decode("latin-1"),
            service=self._service,
            when="mid-answer" if self._code else "before the response",
        )
        self._tally.done(CLIENT_LEFT)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()
        self._release()

    def _answer(self, answer: Answer) -> None:
        """Answer with an error of lmproxy's own, in the shape of the request's path."""
        body = answer.body(self._head.path)
        if self._cors:
            answer = replace(answer, headers=[*answer.headers, *self._cors])
        self._channel.send(b"".join([*answer.head_lines(not self._keep_alive, body), body]))
        self._code = answer.status
        self._tally.first_byte(self._clock.seconds())
        self._finish(self._keep_alive)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("Error forwarding {path}", failure, path=self._head.path.decode("latin-1"))
        self._answer(forwarderrors.internal_error())

    def _finish(self, keep_alive: bool) -> None:
        if self._over:
            return
        self._over = True
        self._connection = None
        self._tally.done(self._code)
        self._release()
        if debugging():  # a cheap check: building the event costs more
            log.debug(
                "{method} {path} -> {service}: {code} in {seconds:.3f}s",
                method=self._head.method.decode("latin-1"),
                path=self._head.path.decode("latin-1"),
                service=self._service,
                code=self._code,
                seconds=self._clock.seconds() - self._began,
            )
        self._channel.answered(keep_alive)

    def _release(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.done()
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
