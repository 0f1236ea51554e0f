"""
Forwarding one request of the OpenAI port's twisted.web routes to the
service of its model (L{RequestForwarder}): its turn when the service has a
request limit, a lease of a running backend, the request sent through an
C{IAgent} and its answer relayed (L{lmproxy.listen.httpforward}), and the
answers of lmproxy's own when that fails (L{lmproxy.listen.forwarderrors});
while a stream waits for its service, the loading feedback
(L{lmproxy.listen.loadingfeedback}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IAgent
from twisted.web.server import Request

from lmproxy.config import LOADING_FEEDBACK_OFF
from lmproxy.interfaces import IBackends, ServiceUnavailable
from lmproxy.listen import forwarderrors
from lmproxy.listen.httpforward import send
from lmproxy.listen.limits import QueueFull, RequestLimit, Turn
from lmproxy.listen.loadingfeedback import FeedbackStream, LoadingFeedback
from lmproxy.logs import debugging, log_observer
from lmproxy.requeststats import CLIENT_LEFT, RequestStats, RequestTally

# Through log_observer: the per-request debug line only with LogLevel Debug.
log = Logger(observer=log_observer)

# Connecting to the backend failed: the lease may let us reconnect (ILease.may_reconnect).
_CONNECT_ERRORS = (ConnectError, DNSLookupError)
# The backend was reached but gave no usable response.
_EXCHANGE_ERRORS = (ResponseFailed, RequestTransmissionFailed, RequestNotSent)


class RequestForwarder:
    """
    Forwards the requests of the twisted.web routes, each to the service
    its model names.

    @param backends: hands out running backends.
    @param agent: sends the forwarded requests.
    @param clock: times them.
    @param stats: counts them.
    @param limits: the turns of the services that have
        C{MaxConcurrentRequests} (shared with the port, which changes it in
        place on a reload).
    """

    def __init__(
        self,
        backends: IBackends,
        agent: IAgent,
        clock: IReactorTime,
        stats: RequestStats,
        limits: dict[str, RequestLimit],
    ) -> None:
        self._backends = backends
        self._agent = agent
        self._clock = clock
        self._stats = stats
        self._limits = limits
        # Off until the port's reconfigure sets its mode.
        self.feedback = LoadingFeedback(backends, clock, LOADING_FEEDBACK_OFF, limits)

    async def route(
        self, request: Request, service: str, model: str, body: bytes, streaming: bool = False
    ) -> bytes | None:
        """
        Forward C{request} with C{body} to C{service}, in its turn; answer
        it, or give the body of lmproxy's own error answer.

        @param request: the client's request.
        @param service: the service its model names.
        @param model: the model it names, for the metrics.
        @param body: the body to forward.
        @param streaming: whether it asks for a stream (see L{LoadingFeedback}).
        """
        feedback = self.feedback.stream(request, service, model, streaming)
        limit = self._limits.get(service)
        tally = RequestTally(
            self._stats.of(service), model, self._clock.seconds(), queued=limit is not None
        )
        turn: Turn | None = None

        def cut() -> None:
            # The backend cut its answer: counted and its turn given back
            # now, not once the client's connection is gone (which cancels us).
            tally.cut(request.code)
            if turn is not None:
                turn.done()

        try:
            if limit is not None:
                turn = await feedback.wait(limit.take(), for_turn=True)
                tally.turn()
            answer = await self._forward(request, service, body, tally, feedback, cut)
        except QueueFull as e:
            answer = forwarderrors.queue_full(service, e).render(request)
        except CancelledError:
            tally.done(CLIENT_LEFT)
            raise
        finally:
            if turn is not None:
                turn.done()
        if feedback.opened and answer is not None:
            answer = feedback.error_event(answer)  # its head is sent: the stream ends
        tally.done(request.code)
        return answer

    async def _forward(
        self,
        request: Request,
        service: str,
        body: bytes,
        tally: RequestTally,
        feedback: FeedbackStream,
        cut: Callable[[], None],
    ) -> bytes | None:
        """
        Get a running backend of C{service} and forward the request to it.
        A client that leaves makes Klein cancel this coroutine, which cancels
        whatever it awaits: the wait for the backend, the backend request, or
        the response relay.

        A failed connection is retried after C{lease.reconnect()} as long as
        the lease allows it (C{ILease.may_reconnect}: once per client), as the
        TCP listener does.  C{cut} is called if the backend cuts its answer
        short; the lease is released then too.
        """
        began = self._clock.seconds()
        try:
            lease = await feedback.wait(self._backends.acquire(service))
        except ServiceUnavailable as e:
            return forwarderrors.unavailable(service, e).render(request)
        tally.leased(self._clock.seconds())
        released = False  # at a cut, before the client's connection is gone

        def cut_short() -> None:
            nonlocal released
            cut()
            lease.release()  # its service may go: the backend is done with it
            released = True

        try:
            while True:
                try:
                    response = await send(self._agent, request, lease.host, lease.port, body)
                    break
                except _CONNECT_ERRORS as e:
                    if not lease.may_reconnect:
                        raise
                    log.info(
                        "Connecting to {service} at {host}:{port} failed ({why}); reconnecting",
                        service=service,
                        host=lease.host,
                        port=lease.port,
                        why=str(e),
                    )
                    lease = await lease.reconnect()
            tally.first_byte(self._clock.seconds())
            await feedback.relay(response, cut_short)
        except ServiceUnavailable as e:
            return forwarderrors.unavailable(service, e).render(request)
        except _CONNECT_ERRORS as e:
            return forwarderrors.connect_failed(service, e).render(request)
        except _EXCHANGE_ERRORS as e:
            if _cancelled(e):
                # The client left (Klein cancelled us): nobody to answer.
                log.info(
                    "{method} {path} -> {service}: the client left before the response",
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1"),
                    service=service,
                )
                raise CancelledError() from None
            return forwarderrors.no_response(service, e).render(request)
        finally:
            # The lease of a failed reconnect() was released by it; release is idempotent.
            if not released:
                lease.release()
        if debugging():  # a cheap check: building the event costs more
            log.debug(
                "{method} {path} -> {service}: {code} in {seconds:.3f}s",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                service=service,
                code=request.code,
                seconds=self._clock.seconds() - began,
            )
        return None


def _cancelled(error: Exception) -> bool:
    """Whether C{error} is the backend exchange ending because we cancelled it."""
    reasons = getattr(error, "reasons", None) or []
    return bool(reasons) and all(reason.check(CancelledError) for reason in reasons)
