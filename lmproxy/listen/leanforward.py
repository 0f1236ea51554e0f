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
generation, and drops the lease.  Whatever the route would answer with an
error of its own (a body that is not a JSON object, no model, an unknown
one) goes to the route instead: L{FrontChannel.fall_back}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http import NO_BODY_CODES, RESPONSES

from lmproxy.interfaces import IBackends, ILease, ServiceUnavailable
from lmproxy.listen import forwarderrors
from lmproxy.listen.backendconn import BackendConnection, HeaderPairs
from lmproxy.listen.backendpool import IBackendConnections, authority, request_bytes
from lmproxy.listen.forwarderrors import Answer
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.guard import HeaderLookup, Refusal
from lmproxy.listen.httpforward import REQUEST_ONLY, connection_named, end_to_end
from lmproxy.listen.requesthead import RequestHead
from lmproxy.logs import debugging, log_observer
from lmproxy.requeststats import CLIENT_LEFT, RequestStats, RequestTally

log = Logger(observer=log_observer)

_CONNECT_ERRORS = (ConnectError, DNSLookupError)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """
    What every forwarded request of the port uses.

    @ivar backends: hands out running backends.
    @ivar connections: the pooled backend connections.
    @ivar clock: times requests.
    @ivar stats: counts them.
    """

    backends: IBackends
    connections: IBackendConnections
    clock: IReactorTime
    stats: RequestStats


class LeanRoutes:
    """
    The hot routes of the OpenAI port: C{POST}s of a JSON object to
    C{paths}, over HTTP/1.1, with a plain C{Host}, a C{Content-Length}
    within the port's limit, and nothing the gate refuses.  Everything else
    is twisted.web's.

    @param forwarding: what forwarding takes.
    @param paths: the hot paths.
    @param services: the service of each model id.
    @param gate: the port's gate (L{lmproxy.listen.openai.OpenAiApi.gate}).
    @param max_body_bytes: the port's body limit.
    """

    def __init__(
        self,
        forwarding: Forwarding,
        paths: frozenset[bytes],
        services: dict[str, str],
        gate: Callable[[HeaderLookup], Refusal | None],
        max_body_bytes: int,
    ) -> None:
        self._forwarding = forwarding
        self._paths = paths
        self._services = services
        self._gate = gate
        self._max_body_bytes = max_body_bytes

    def takes(self, head: RequestHead) -> bool:
        """Whether C{head} is a hot request (see the class)."""
        expect = head.fields.get(b"expect")
        return (
            head.method == b"POST"
            and head.path in self._paths
            and head.version == b"HTTP/1.1"
            and (head.content_length or 0) <= self._max_body_bytes
            and (expect is None or expect == [b"100-continue"])
            and head.plain_host()
            and self._gate(head) is None
        )

    def forward(self, channel: FrontChannel, head: RequestHead, body: bytes, raw: bytes) -> None:
        """Forward a request whose model names a service; give back any other."""
        model = self._model(body)
        service = None if model is None else self._services.get(model)
        if model is None or service is None:
            channel.fall_back(raw)
            return
        LeanExchange(self._forwarding, channel, head, body, service, model)

    def _model(self, body: bytes) -> str | None:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        model = document.get("model")
        return model if isinstance(model, str) else None


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
        self._body = body
        self._service = service
        self._began = clock.seconds()
        self._keep_alive = b"close" not in connection_named(head.fields.get(b"connection", ()))
        self._lease: ILease | None = None
        self._waiting: Deferred[Any] | None = None  # the lease, or a connection
        self._connection: BackendConnection | None = None
        self._held: list[bytes] = []  # the answer's head, sent with its first bytes
        self._chunked = False
        self._sized = False
        self._code = 0
        self._over = False
        self._tally = RequestTally(forwarding.stats.of(service), model, self._began)
        channel.exchange = self
        acquiring = forwarding.backends.acquire(service)
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
        lines.extend(b"%s: %s\r\n" % pair for pair in headers)
        if code in NO_BODY_CODES:
            pass
        elif length is not None:
            self._sized = True
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

    def response_end(self, reason: Failure) -> None:
        complete = reason.check(ResponseDone, PotentialDataLoss) is not None
        if not complete:
            log.warn(
                "Backend {service} ended its response early: {reason}",
                service=self._service,
                reason=reason.getErrorMessage(),
            )
            if self._sized:
                # The client was promised Content-Length bytes that will never
                # come: only closing its connection ends its wait.
                self._finish(keep_alive=False)
                return
        # Complete, or a chunked stream cut short: end it cleanly with what was sent.
        if self._chunked:
            self._channel.send(b"0\r\n\r\n")
        elif self._held:
            self._channel.send(b"".join(self._held))
            self._held = []
        self._finish(self._keep_alive)

    def response_never_received(self, reason: Failure) -> None:
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
            "{method} {path} -> {service}: the client left before the response",
            method=self._head.method.decode("latin-1"),
            path=self._head.path.decode("latin-1"),
            service=self._service,
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
        """Answer with an error of lmproxy's own."""
        self._channel.send(b"".join([*answer.head_lines(not self._keep_alive), answer.body]))
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
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
