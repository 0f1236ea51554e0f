"""
Something to show while a model loads (C{OpenAiApi.LoadingFeedback}): a
streaming request whose service is not running, or that waits for a turn
(C{MaxConcurrentRequests}), gets its answer's head at once, an SSE comment
at once and every second while it waits, and, with
progress text and for chat completions, a C{chat.completion.chunk} whose
C{delta.reasoning_content} says how far the start has come; then the model's
own stream.  Its head can no longer be sent, so an error (a failed start, a
model that answers with an error or with no stream) becomes one SSE
C{data: {"error": ...}} event that ends the stream.

The twisted.web routes do this (L{lmproxy.listen.routeforward}); the hot
path gives such requests back to them (L{LoadingFeedback.wanted}).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import PartialDownloadError, readBody
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from lmproxy.config import LOADING_FEEDBACK_OFF, LOADING_FEEDBACK_PROGRESS
from lmproxy.interfaces import (
    IBackends,
    ServiceState,
    ServiceStatus,
    UnknownService,
    WaitingFor,
)
from lmproxy.listen.httpforward import relay, relay_body
from lmproxy.listen.jsonerrors import encode
from lmproxy.listen.limits import RequestLimit
from lmproxy.openai_errors import error_body
from lmproxy.timers import Timer

TICK = 1.0
"""Seconds between two comments (and progress chunks) while a request waits."""

PROGRESS_PATHS = frozenset({b"/v1/chat/completions"})
"""The paths whose streams carry progress text (their chunks have C{delta})."""

EVENT_STREAM = b"text/event-stream"

_T = TypeVar("_T")

# How much of a model's answer that is no stream an error event quotes.
_QUOTED = 500


def is_streaming(document: dict[str, Any]) -> bool:
    """Whether a request's JSON body asks for a stream (C{"stream": true})."""
    return document.get("stream") is True


class LoadingFeedback:
    """
    The port's loading feedback: its mode (changed in place on a reload), and
    the per-request L{FeedbackStream}s.

    @ivar mode: C{LOADING_FEEDBACK_OFF}, C{_COMMENTS} or C{_PROGRESS}.
    """

    def __init__(
        self,
        backends: IBackends,
        clock: IReactorTime,
        mode: str,
        limits: Mapping[str, RequestLimit],
    ) -> None:
        """
        @param backends: tell whether a service runs, and how far its start is.
        @param clock: paces the comments.
        @param mode: the initial L{mode}.
        @param limits: the turns of the services that have them (the port's,
            changed in place on a reload).
        """
        self._backends = backends
        self._clock = clock
        self.mode = mode
        self._limits = limits

    def wanted(self, service: str, streaming: bool) -> bool:
        """
        Whether a request for C{service} may get feedback: it streams, the
        feedback is on, and it would wait: for a turn, or for its service to
        run (a hint: the twisted.web route decides as it waits).
        """
        if not streaming or self.mode == LOADING_FEEDBACK_OFF:
            return False
        limit = self._limits.get(service)
        if limit is not None and limit.taken >= limit.concurrent:
            return True
        try:
            return self._backends.service_status(service).status != ServiceState.RUNNING
        except UnknownService:  # a reload removed it: the route answers that
            return False

    def stream(self, request: Request, service: str, model: str, streaming: bool) -> FeedbackStream:
        """The feedback of one request (opened only if its wait is not over at once)."""
        progress = self.mode == LOADING_FEEDBACK_PROGRESS and request.path in PROGRESS_PATHS
        on = streaming and self.mode != LOADING_FEEDBACK_OFF
        return FeedbackStream(self._backends, self._clock, request, service, model, on, progress)


class FeedbackStream:
    """
    The feedback of one request: L{wait} opens it if the backend is not
    there at once; L{relay} then relays the model's stream into it, and
    L{error_event} turns an error answer into an event.

    @ivar opened: whether the head was sent (the answer is this stream now).
    """

    def __init__(
        self,
        backends: IBackends,
        clock: IReactorTime,
        request: Request,
        service: str,
        model: str,
        on: bool,
        progress: bool,
    ) -> None:
        self._backends = backends
        self._clock = clock
        self._request = request
        self._service = service
        self._model = model
        self._on = on
        self._progress = progress
        self._began = 0.0
        self._tick = Timer(clock)
        self._for_turn = False
        self.opened = False

    async def wait(self, pending: Deferred[_T], for_turn: bool = False) -> _T:
        """
        Wait for C{pending} (the request's turn, or its C{IBackends.acquire}),
        with feedback if it is not there at once.  Cancelling the wait
        cancels C{pending} and stops the feedback.

        @param for_turn: whether C{pending} is a turn (L{RequestLimit.take}).
        """
        if self._on and not pending.called:
            self._for_turn = for_turn
            if self.opened:
                self._send()  # a wait of another kind: say so at once
            else:
                self._open()
        try:
            return await pending
        finally:
            self._tick.cancel()

    def _open(self) -> None:
        self.opened = True
        self._began = self._clock.seconds()
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", EVENT_STREAM)
        request.setHeader(b"Cache-Control", b"no-cache")
        # Reverse proxies (nginx) would otherwise hold the comments back.
        request.setHeader(b"X-Accel-Buffering", b"no")
        self._send()

    def _send(self) -> None:
        try:
            status = self._backends.service_status(self._service)
        except UnknownService:  # removed by a reload: its wait ends with the reason
            return
        now = self._clock.seconds()
        if self._for_turn:
            text = _so_far(f"waiting for a turn of {status.name}", now, self._began)
        else:
            text = progress_text(status, now, self._began)
        data = b": lmproxy: %s\n\n" % text.encode("utf-8")
        if self._progress:
            data += b"data: %s\n\n" % encode(self._chunk(text + "\n"))
        self._request.write(data)
        self._tick.arm(TICK, self._send)

    def _chunk(self, text: str) -> dict[str, Any]:
        return {
            "id": "lmproxy-loading",
            "object": "chat.completion.chunk",
            "created": int(self._clock.seconds()),
            "model": self._model,
            "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
        }

    async def relay(self, response: IResponse, cut: Callable[[], None]) -> None:
        """
        Relay the model's C{response}: as it is when the stream is not
        opened; else its body alone, if it is a stream, or one error event.

        @param response: the model's answer.
        @param cut: called if the model cuts its body short (see
            L{lmproxy.listen.httpforward.relay}).
        """
        if not self.opened:
            await relay(response, self._request, self._service, cut)
            return
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if response.code == 200 and content_type.split(b";")[0].strip().lower() == EVENT_STREAM:
            await relay_body(response, self._request, self._service, cut)
            return
        try:
            body = await readBody(response)
        except PartialDownloadError as e:  # a body that ends with its connection
            body = e.response or b""
        # The head went out as 200: the metrics count what the model answered.
        self._request.setResponseCode(response.code)
        error = model_error(self._request.path, self._service, response, body)
        self._request.write(self.error_event(encode(error)))

    def error_event(self, answer: bytes) -> bytes:
        """
        The JSON error C{answer} (a whole body) as the event that ends the
        stream; one in Anthropic's shape is an C{error} event, as Anthropic's
        SDKs read them.
        """
        try:
            anthropic = json.loads(answer).get("type") == "error"
        except (ValueError, AttributeError):
            anthropic = False
        return b"%sdata: %s\n\n" % (b"event: error\n" if anthropic else b"", answer)


def model_error(path: bytes, service: str, response: IResponse, body: bytes) -> dict[str, Any]:
    """
    The error to stream for a model's C{response} that is no stream: its
    own, when it is a JSON error (OpenAI's shape, or Anthropic's); else
    one that quotes it, in the shape of the request's C{path}.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return document
    text = body[:_QUOTED].decode("utf-8", "replace")
    if response.code == 200:
        message = f"Service {service!r} answered without a stream: {text}"
    else:
        message = f"Service {service!r} answered {response.code}: {text}"
    return error_body(path, 502, message, "server_error", None, "upstream_error")


def progress_text(status: ServiceStatus, now: float, began: float) -> str:
    """
    A short line on how far C{status}'s start has come, e.g. C{starting
    Gemma-27B, about 12 s (learned), 4 s so far}.

    @param status: the service's status now.
    @param now: the time now.
    @param began: when the request began to wait (the start's own beginning
        is used when known).
    """
    waiting = status.waiting_for
    if status.status == ServiceState.WAITING_FOR_RESOURCES and waiting is not None:
        return _so_far(f"waiting for resources: {_why(waiting)}", now, min(began, waiting.since))
    words = f"starting {status.name}"
    if status.start_estimate is not None:
        words += f", about {round(status.start_estimate)} s (learned)"
    if status.status == ServiceState.STARTING and status.starting_since is not None:
        began = min(began, status.starting_since)
    return _so_far(words, now, began)


def _so_far(words: str, now: float, began: float) -> str:
    seconds = int(now - began)
    return f"{words}, {seconds} s so far" if seconds >= 1 else words


def _why(waiting: WaitingFor) -> str:
    """Why a service waits, in few words: what it lacks and who holds it."""
    reasons = []
    for shortage in waiting.shortages:
        free = "unknown" if shortage.available is None else str(shortage.available)
        reason = f"{shortage.resource} (needs {shortage.needed}, {free} free"
        if shortage.held_by:
            reason += f", held by {', '.join(shortage.held_by)}"
        reasons.append(reason + ")")
    if waiting.behind:
        reasons.append(f"behind {', '.join(waiting.behind)}")
    return "; ".join(reasons) or "a measurement"
