"""
The demo server's HTTP API, one leaf C{twisted.web} resource (Klein
would cost start-up time, see L{lmproxy.demo.main}):

 - C{GET /health}: C{{"status": "ok"}}, or 503 with C{--fail-health};
 - C{GET /v1/models} and C{GET /v1/models/{id}}: the one model;
 - C{POST /v1/chat/completions} and C{POST /v1/completions} (Server-Sent
   Events with C{"stream": true}), C{POST /v1/embeddings}: see
   L{lmproxy.demo.answers};
 - C{POST /v1/messages} (Anthropic's events with C{"stream": true}) and
   C{POST /v1/messages/count_tokens}: see L{lmproxy.demo.anthropic};
 - C{POST /echo}: the request body back; C{GET /bytes?n=N}: N bytes; both
   with flow control, for benchmarks.

Every answer carries C{X-Demo-Pid}, so that tests see which process answered;
errors are OpenAI-shaped, Anthropic-shaped on Anthropic's paths
(L{lmproxy.openai_errors.error_body}); C{HEAD} is answered wherever C{GET} is.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import IO, cast

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lmproxy.demo.answers import (
    BadRequest,
    Completions,
    JSONObject,
    Reply,
    StreamedReply,
    embeddings,
    json_bytes,
    parse_body,
)
from lmproxy.demo.anthropic import Messages
from lmproxy.demo.options import CRASH_EXIT_CODE
from lmproxy.demo.streams import SSE_DONE, BodyProducer, EventStream, read_pattern, sse_event
from lmproxy.openai_errors import error_body, error_document

#: How long a crash waits at most for the events written so far to reach the client.
CRASH_FLUSH_SECONDS = 2.0

#: With C{--crash-mid-stream}, a streamed answer crashes the server after this many events.
CRASH_AFTER_EVENTS = 2

_JSON = b"application/json"

Handler = Callable[[Request], bytes | int]
"""Renders one route: a whole body, or C{NOT_DONE_YET}."""


class DemoAPI(Resource):
    """
    The demo server's HTTP API: a leaf resource that routes on the whole path.

    @param clock: schedules the events of streamed answers (C{--token-delay})
        and dates the answers.
    @param model: the model id reported by C{/v1/models}.
    @param pid: reported in answers and in C{X-Demo-Pid}; default: this process's.
    @param token_delay: seconds between the events of a streamed answer.
    @param crash_mid_stream: crash after L{CRASH_AFTER_EVENTS} events of a
        streamed answer.
    @param fail_health: C{/health} answers 503.
    @param crash: called with the request when C{crash_mid_stream} strikes;
        default: flush what was written, close the connection and
        C{os._exit(CRASH_EXIT_CODE)}.
    """

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime,
        model: str = "demo",
        pid: int | None = None,
        token_delay: float = 0.0,
        crash_mid_stream: bool = False,
        fail_health: bool = False,
        crash: Callable[[Request], None] | None = None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.model = model
        self.pid = os.getpid() if pid is None else pid
        self._token_delay = token_delay
        self._crash_mid_stream = crash_mid_stream
        self._fail_health = fail_health
        self._crash = self._crash_after_flush if crash is None else crash
        self._completions = Completions(self.pid)
        self._messages = Messages(self._completions)
        self.created = int(clock.seconds())
        self._routes: dict[str, dict[bytes, Handler]] = {
            "/health": {b"GET": self._health},
            "/v1/models": {b"GET": self._models},
            "/v1/chat/completions": {b"POST": self._chat_completions},
            "/v1/completions": {b"POST": self._text_completions},
            "/v1/embeddings": {b"POST": self._embeddings},
            "/v1/messages": {b"POST": self._create_message},
            "/v1/messages/count_tokens": {b"POST": self._count_tokens},
            "/echo": {b"POST": self._echo},
            "/bytes": {b"GET": self._bytes},
        }

    # -- plumbing -------------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        """
        Route C{request} on its path and method; answer 404 and 405 in OpenAI's
        shape, and L{BadRequest} as a 400 (in Anthropic's on its paths).
        """
        request.setHeader(b"x-demo-pid", b"%d" % self.pid)
        path = "/" + "/".join(s.decode("utf-8", "replace") for s in request.postpath or [])
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = {b"GET": self._model}
        method = request.method
        if methods is None:
            message = f"Invalid URL ({method.decode('ascii', 'replace')} {path})"
            return self._json(request, error_document(message), 404)
        if method == b"HEAD" and b"GET" in methods:
            method = b"GET"  # twisted.web sends the headers only
        handler = methods.get(method)
        if handler is None:
            allowed = b", ".join(sorted(methods))
            request.setHeader(b"allow", allowed)
            message = (
                f"Method {method.decode('ascii', 'replace')} is not allowed for {path};"
                f" use {allowed.decode('ascii')}"
            )
            return self._json(request, error_document(message, code="method_not_allowed"), 405)
        try:
            return handler(request)
        except BadRequest as e:
            body = error_body(path.encode("utf-8"), 400, e.message, param=e.param)
            return self._json(request, body, 400)

    def _json(self, request: Request, obj: object, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", _JSON)
        return json_bytes(obj)

    def _body(self, request: Request) -> JSONObject:
        content = request.content
        raw = b""
        if content is not None:
            content.seek(0)
            raw = content.read()
        return parse_body(raw)

    def _answer(self, request: Request, reply: Reply | StreamedReply) -> bytes | int:
        if isinstance(reply, Reply):
            return self._json(request, reply.document)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        crash = self._crash_mid_stream
        if reply.named:
            frames = [sse_event(json_bytes(e), e["type"].encode()) for e in reply.events]
        else:
            frames = [*(sse_event(json_bytes(event)) for event in reply.events), SSE_DONE]
        EventStream(
            self._clock,
            request,
            frames,
            self._token_delay,
            crash_after=CRASH_AFTER_EVENTS if crash else None,
            crash=self._crash if crash else None,
        ).start()
        return NOT_DONE_YET

    def _crash_after_flush(self, request: Request) -> None:
        """
        Die the way a crashing model server does, but only after the events
        written so far have reached the client: close the connection (which
        first sends what is buffered), and exit once it is closed (or after
        L{CRASH_FLUSH_SECONDS} at the latest).
        """

        def die(_: object = None) -> None:
            # No reactor shutdown, no cleanup: a crash is abrupt.
            os._exit(CRASH_EXIT_CODE)

        request.notifyFinish().addBoth(die)
        self._clock.callLater(CRASH_FLUSH_SECONDS, die)
        request.loseConnection()

    # -- routes ---------------------------------------------------------------------

    def _health(self, request: Request) -> bytes:
        if self._fail_health:
            body = error_document(
                "unhealthy on purpose (--fail-health)", "unavailable_error", code="unavailable"
            )
            return self._json(request, body, 503)
        return self._json(request, {"status": "ok"})

    def _model_entry(self) -> JSONObject:
        return {
            "id": self.model,
            "object": "model",
            "created": self.created,
            "owned_by": "lmproxy-demo",
        }

    def _models(self, request: Request) -> bytes:
        return self._json(request, {"object": "list", "data": [self._model_entry()]})

    def _model(self, request: Request) -> bytes:
        # The id may hold slashes ("org/name"), encoded or not: join the segments.
        segments = (request.postpath or [])[2:]
        try:
            model_id = "/".join(s.decode("utf-8") for s in segments)
        except UnicodeDecodeError:
            model_id = None
        if model_id != self.model:
            body = error_document(
                f"The model {model_id!r} does not exist", param="model", code="model_not_found"
            )
            return self._json(request, body, 404)
        return self._json(request, self._model_entry())

    def _chat_completions(self, request: Request) -> bytes | int:
        reply = self._completions.chat(self._body(request), int(self._clock.seconds()))
        return self._answer(request, reply)

    def _text_completions(self, request: Request) -> bytes | int:
        reply = self._completions.text(self._body(request), int(self._clock.seconds()))
        return self._answer(request, reply)

    def _embeddings(self, request: Request) -> bytes | int:
        return self._answer(request, embeddings(self._body(request)))

    def _create_message(self, request: Request) -> bytes | int:
        return self._answer(request, self._messages.create(self._body(request)))

    def _count_tokens(self, request: Request) -> bytes | int:
        return self._answer(request, self._messages.count_tokens(self._body(request)))

    def _echo(self, request: Request) -> int:
        # twisted.web keeps a large body in a temporary file: stream it from there.
        content = cast(IO[bytes], request.content or io.BytesIO())
        length = content.seek(0, os.SEEK_END)
        content.seek(0)
        request.setHeader(
            b"content-type", request.getHeader(b"content-type") or b"application/octet-stream"
        )
        request.setHeader(b"content-length", b"%d" % length)
        BodyProducer(request, content.read, length).start()
        return NOT_DONE_YET

    def _bytes(self, request: Request) -> bytes | int:
        values = request.args.get(b"n", [])
        try:
            n = int(values[-1])
        except (IndexError, ValueError):
            n = -1
        if n < 0:
            raise BadRequest("/bytes needs ?n=N with N a non-negative integer", "n")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % n)
        BodyProducer(request, read_pattern, n).start()
        return NOT_DONE_YET
