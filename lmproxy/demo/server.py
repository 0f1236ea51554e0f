"""
A small OpenAI-compatible model server: lmproxy's demo config, integration tests and
benchmarks start it as the "model server" behind the proxy.

Run it as ``python -m lmproxy.demo --port N`` (``--port 0``: the OS picks a port, and the
listening line tells which).  Its answers are deterministic: a chat or text completion
echoes the requested model, the server's pid and the last user message (or the prompt),
streamed one word per Server-Sent Event when asked to; an embedding is a small vector
derived from a hash of its input.  ``/echo`` and ``/bytes`` move bulk data with flow
control for benchmarks, and every answer carries ``X-Demo-Pid`` so that tests can see
which process answered.  Flags make it misbehave on purpose: load slowly
(``--startup-delay``), exit on its own (``--exit-after``), die in the middle of a stream
(``--crash-mid-stream``), fail its health check (``--fail-health``) or leave a grandchild
process behind (``--spawn-grandchild``).

Start-up time matters (the proxy and the tests connect right after the launch), so this
module uses plain ``twisted.web`` (no Klein, no treq) and keeps pyOpenSSL out of the
process: it listens about 0.2 s after ``exec`` on a 2-core machine.  Only L{main} imports
the global reactor; every class takes the reactor (or a clock) as an argument.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

__all__ = [
    "CRASH_EXIT_CODE",
    "DemoAPI",
    "DemoOptions",
    "DemoServer",
    "DemoSite",
    "IDemoReactor",
    "embedding_vector",
    "main",
    "parse_args",
]

#: The status the process exits with when C{--crash-mid-stream} kills it.
CRASH_EXIT_CODE = 70

#: Size of the vectors that C{/v1/embeddings} answers (unless C{dimensions} is given).
EMBEDDING_DIMENSIONS = 8

#: Bytes per write for C{/echo} and C{/bytes}.
CHUNK_SIZE = 64 * 1024

_JSON = b"application/json"
# /bytes answers this pattern, repeated: deterministic and not trivially compressible.
_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256)

Output = Callable[[str], None]


class IDemoReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorProcess):
    """
    The reactor features that L{DemoServer} uses (the real reactor provides them all).
    """


@dataclass(frozen=True)
class DemoOptions:
    """
    The command line of the demo server, parsed; see L{parse_args}.
    """

    port: int
    host: str = "127.0.0.1"
    model: str = "demo"
    startup_delay: float = 0.0
    exit_after: float | None = None
    exit_code: int = 0
    spawn_grandchild: str | None = None
    crash_mid_stream: bool = False
    token_delay: float = 0.0
    fail_health: bool = False


class _BadRequest(Exception):
    """
    A request that the API rejects with an OpenAI-shaped 400 error.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _sse(obj: object) -> bytes:
    return b"data: " + _json_bytes(obj) + b"\n\n"


def _error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _words(text: str) -> list[str]:
    """
    Split C{text} into "tokens": words, each but the first with its leading space, so
    that joining them gives C{text} back exactly.
    """
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def _count_words(text: str) -> int:
    return len(text.split())


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message_text(content: object) -> str:
    """
    The text of a chat message's C{content}: a string, or a list of content parts
    (C{{"type": "text", "text": ...}}) whose texts are joined.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _optional_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _BadRequest(f"{key!r} must be a boolean", key)
    return value


def _optional_positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"{key!r} must be a positive integer", key)
    return value


def embedding_vector(data: bytes, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """
    A deterministic unit vector of C{dimensions} floats derived from SHA-256 of C{data}.
    """
    digest = b""
    block = 0
    while len(digest) < 4 * dimensions:
        digest += hashlib.sha256(b"%d:" % block + data).digest()
        block += 1
    raw = [n / 2**31 - 1.0 for n in struct.unpack(f"<{dimensions}I", digest[: 4 * dimensions])]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


@implementer(IPushProducer)
class _BodyProducer:
    """
    Writes C{length} bytes read from C{read} to a request in chunks, pausing while the
    connection's buffer is full, then finishes the request.
    """

    def __init__(self, request: Request, read: Callable[[int], bytes], length: int) -> None:
        self._request = request
        self._read = read
        self._remaining = length
        self._paused = False
        self._done = False

    def start(self) -> None:
        self._request.notifyFinish().addErrback(self._gone)
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        # write() can call pauseProducing() (buffer full) or stopProducing() at once.
        while not self._paused and not self._done and self._remaining > 0:
            data = self._read(min(CHUNK_SIZE, self._remaining))
            if not data:  # the source ended early: send what there is.
                self._remaining = 0
                break
            self._remaining -= len(data)
            self._request.write(data)
        if not self._done and self._remaining <= 0:
            self._done = True
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._done = True

    def _gone(self, reason: Failure) -> None:
        self._done = True


class _EventStream:
    """
    Writes prepared Server-Sent Events to a request one at a time, C{delay} seconds
    apart, each as its own write (so its own HTTP chunk), then finishes the request.
    With C{crash_after}, calls C{crash(request)} instead of writing more once that many
    events are written.
    """

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        events: list[bytes],
        delay: float,
        output: Output,
        crash_after: int | None = None,
        crash: Callable[[Request], None] | None = None,
    ) -> None:
        self._clock = clock
        self._request = request
        self._events = events
        self._delay = delay
        self._output = output
        self._crash_after = crash_after
        self._crash = crash
        self._sent = 0
        self._call: IDelayedCall | None = None
        self._gone = False
        self._crashed = False

    def start(self) -> None:
        self._request.notifyFinish().addErrback(self._clientGone)
        self._writeNext()

    def _writeNext(self) -> None:
        self._call = None
        if self._gone:
            return
        self._request.write(self._events[self._sent])
        self._sent += 1
        if self._crash is not None and self._sent == self._crash_after:
            self._crashed = True
            self._output(f"crashing on purpose after {self._sent} events (--crash-mid-stream)")
            self._crash(self._request)
        elif self._sent == len(self._events):
            self._request.finish()
        else:
            self._call = self._clock.callLater(self._delay, self._writeNext)

    def _clientGone(self, reason: Failure) -> None:
        self._gone = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._crashed:
            return
        self._output(
            f"stream of {self._request.uri.decode('utf-8', 'replace')} ended by the client"
            f" after {self._sent} of {len(self._events)} events"
        )


Handler = Callable[[Request], bytes | int]


class DemoAPI(Resource):
    """
    The demo server's HTTP API: a leaf resource that routes on the whole path.

    @param clock: schedules the events of streamed answers (C{--token-delay}).
    @param model: the model id reported by C{/v1/models}.
    @param output: receives one line of text per notable event.
    @param pid: reported in answers and in C{X-Demo-Pid}; default: this process's.
    @param crash: called with the request when C{crash_mid_stream} strikes; default:
        flush what was written, close the connection and C{os._exit(CRASH_EXIT_CODE)}.
    """

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime,
        model: str = "demo",
        output: Output = print,
        pid: int | None = None,
        token_delay: float = 0.0,
        crash_mid_stream: bool = False,
        fail_health: bool = False,
        crash: Callable[[Request], None] | None = None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.model = model
        self._output = output
        self.pid = os.getpid() if pid is None else pid
        self._token_delay = token_delay
        self._crash_mid_stream = crash_mid_stream
        self._fail_health = fail_health
        self._crash = self._crashAfterFlush if crash is None else crash
        self.created = int(clock.seconds())
        self._counter = 0
        self._routes: dict[str, dict[bytes, Handler]] = {
            "/health": {b"GET": self._health},
            "/v1/models": {b"GET": self._models},
            "/v1/chat/completions": {b"POST": self._chatCompletions},
            "/v1/completions": {b"POST": self._completions},
            "/v1/embeddings": {b"POST": self._embeddings},
            "/echo": {b"POST": self._echo},
            "/bytes": {b"GET": self._bytes},
        }

    # -- plumbing -------------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"x-demo-pid", b"%d" % self.pid)
        path = "/" + "/".join(s.decode("utf-8", "replace") for s in request.postpath or [])
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = {b"GET": self._model}
        method = request.method
        if methods is None:
            return self._json(
                request,
                _error_body(f"Invalid URL ({method.decode('ascii', 'replace')} {path})"),
                404,
            )
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
            return self._json(request, _error_body(message, code="method_not_allowed"), 405)
        try:
            return handler(request)
        except _BadRequest as e:
            return self._json(request, _error_body(e.message, param=e.param), 400)

    def _json(self, request: Request, obj: object, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", _JSON)
        return _json_bytes(obj)

    def _body(self, request: Request) -> dict[str, Any]:
        """
        The request's JSON object, with a string C{model}; else L{_BadRequest}.
        """
        content = request.content
        raw = b""
        if content is not None:
            content.seek(0)
            raw = content.read()
        try:
            body = json.loads(raw)
        except ValueError as e:  # UnicodeDecodeError is a ValueError too
            raise _BadRequest(f"The request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise _BadRequest("You must provide a model parameter", "model")
        if not isinstance(model, str):
            raise _BadRequest("'model' must be a string", "model")
        return body

    def _nextId(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-demo{self.pid}-{self._counter}"

    def _reply(self, model: str, text: str) -> str:
        return f"demo({model}) pid {self.pid}: {text}"

    def _stream(self, request: Request, events: list[dict[str, Any]]) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        stream = _EventStream(
            self._clock,
            request,
            [*map(_sse, events), b"data: [DONE]\n\n"],
            self._token_delay,
            self._output,
            crash_after=2 if self._crash_mid_stream else None,
            crash=self._crash if self._crash_mid_stream else None,
        )
        stream.start()
        return NOT_DONE_YET

    def _crashAfterFlush(self, request: Request) -> None:
        """
        Die the way a crashing model server does, but only after the events written so
        far have reached the client: close the connection (which first sends what is
        buffered), and exit once it is closed (or after 2 s at the latest).
        """

        def die(_: object = None) -> None:
            os._exit(CRASH_EXIT_CODE)

        request.notifyFinish().addBoth(die)
        self._clock.callLater(2.0, die)
        request.loseConnection()

    # -- routes ---------------------------------------------------------------------

    def _health(self, request: Request) -> bytes:
        if self._fail_health:
            body = _error_body(
                "unhealthy on purpose (--fail-health)", "unavailable_error", code="unavailable"
            )
            return self._json(request, body, 503)
        return self._json(request, {"status": "ok"})

    def _modelEntry(self) -> dict[str, Any]:
        return {
            "id": self.model,
            "object": "model",
            "created": self.created,
            "owned_by": "lmproxy-demo",
        }

    def _models(self, request: Request) -> bytes:
        return self._json(request, {"object": "list", "data": [self._modelEntry()]})

    def _model(self, request: Request) -> bytes:
        segments = (request.postpath or [])[2:]
        try:
            model_id = "/".join(s.decode("utf-8") for s in segments)
        except UnicodeDecodeError:
            model_id = None
        if model_id != self.model:
            body = _error_body(
                f"The model {model_id!r} does not exist", param="model", code="model_not_found"
            )
            return self._json(request, body, 404)
        return self._json(request, self._modelEntry())

    def _replyTokens(self, body: dict[str, Any], text: str) -> tuple[list[str], str]:
        """
        The reply's tokens and its finish reason, honouring C{max_tokens}.
        """
        limit = _optional_positive_int(body, "max_tokens")
        if limit is None:
            limit = _optional_positive_int(body, "max_completion_tokens")
        tokens = _words(self._reply(body["model"], text))
        if limit is not None and len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    def _chatCompletions(self, request: Request) -> bytes | int:
        body = self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _BadRequest("'messages' must be a list of message objects", "messages")
        stream = _optional_bool(body, "stream")
        user = [m.get("content") for m in messages if m.get("role") == "user"]
        last = _message_text(user[-1]) if user else ""
        tokens, finish = self._replyTokens(body, last)
        usage = _usage(
            sum(_count_words(_message_text(m.get("content"))) for m in messages), len(tokens)
        )
        model = body["model"]
        base = {
            "id": self._nextId("chatcmpl"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(self._clock.seconds()),
            "model": model,
        }
        if not stream:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": None,
                "finish_reason": finish,
            }
            return self._json(
                request,
                {**base, "choices": [choice], "usage": usage},
            )

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice]}

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": token}) for token in tokens]
        events.append(chunk({}, finish))
        if self._includeUsage(body):
            events.append({**base, "choices": [], "usage": usage})
        return self._stream(request, events)

    def _includeUsage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _completions(self, request: Request) -> bytes | int:
        body = self._body(request)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = prompt[-1]
        if not isinstance(prompt, str):
            raise _BadRequest("'prompt' must be a string or a list of strings", "prompt")
        stream = _optional_bool(body, "stream")
        tokens, finish = self._replyTokens(body, prompt)
        usage = _usage(_count_words(prompt), len(tokens))
        model = body["model"]
        base = {
            "id": self._nextId("cmpl"),
            "object": "text_completion",
            "created": int(self._clock.seconds()),
            "model": model,
        }

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        if not stream:
            return self._json(
                request, {**base, "choices": [choice("".join(tokens), finish)], "usage": usage}
            )
        events = [{**base, "choices": [choice(token, None)]} for token in tokens]
        events.append({**base, "choices": [choice("", finish)]})
        if self._includeUsage(body):
            events.append({**base, "choices": [], "usage": usage})
        return self._stream(request, events)

    def _embeddings(self, request: Request) -> bytes:
        body = self._body(request)
        raw = body.get("input")
        inputs: list[bytes]
        if isinstance(raw, str):
            inputs = [raw.encode("utf-8")]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = [x.encode("utf-8") for x in raw]
        elif isinstance(raw, list) and raw and all(type(x) is int for x in raw):
            inputs = [_json_bytes(raw)]
        elif (
            isinstance(raw, list)
            and raw
            and all(isinstance(x, list) and all(type(t) is int for t in x) for x in raw)
        ):
            inputs = [_json_bytes(x) for x in raw]
        else:
            raise _BadRequest(
                "'input' must be a string, a list of strings or of token lists", "input"
            )
        dimensions = _optional_positive_int(body, "dimensions") or EMBEDDING_DIMENSIONS
        if dimensions > 4096:
            raise _BadRequest("'dimensions' must be at most 4096", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            embedding: list[float] | str = vector
            if encoding == "base64":
                packed = struct.pack(f"<{dimensions}f", *vector)
                embedding = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_count_words(item.decode("utf-8", "replace")) for item in inputs)
        return self._json(
            request,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _echo(self, request: Request) -> int:
        content = cast(IO[bytes], request.content or io.BytesIO())
        length = content.seek(0, os.SEEK_END)
        content.seek(0)
        request.setHeader(
            b"content-type", request.getHeader(b"content-type") or b"application/octet-stream"
        )
        request.setHeader(b"content-length", b"%d" % length)
        _BodyProducer(request, content.read, length).start()
        return NOT_DONE_YET

    def _bytes(self, request: Request) -> bytes | int:
        values = request.args.get(b"n", [])
        try:
            n = int(values[-1])
        except (IndexError, ValueError):
            n = -1
        if n < 0:
            raise _BadRequest("/bytes needs ?n=N with N a non-negative integer", "n")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % n)
        _BodyProducer(request, lambda size: _PATTERN[:size], n).start()
        return NOT_DONE_YET


class DemoSite(Site):
    """
    A L{Site} that logs each finished request as one line to C{output}.
    """

    noisy = False

    def __init__(
        self, resource: Resource, output: Output, reactor: IReactorTime | None = None
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self._output = output

    def log(self, request: Request) -> None:  # type: ignore[override]
        client = request.getClientAddress()
        host = getattr(client, "host", "-")
        self._output(
            f'{host} "{request.method.decode("ascii", "replace")}'
            f" {request.uri.decode('utf-8', 'replace')}"
            f' {request.clientproto.decode("ascii", "replace")}"'
            f" {request.code} {request.sentLength}"
        )


class _Grandchild(ProcessProtocol):
    """
    The C{--spawn-grandchild} process: reaped (no zombie) and reported when it ends.
    """

    def __init__(self, output: Output) -> None:
        self._output = output

    def processEnded(self, reason: Failure) -> None:
        self._output(f"grandchild ended: {reason.getErrorMessage()}")


class DemoServer:
    """
    The demo server process: listens after C{startup_delay}, prints the listening line,
    and exits on schedule with C{--exit-after}.  Read L{exit_code} after the reactor
    stops.

    @param output: receives the lines for standard output, the listening line among them.
    @param errors: receives error lines (standard error).
    """

    def __init__(
        self,
        reactor: IDemoReactor,
        options: DemoOptions,
        output: Output,
        errors: Output,
        pid: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._options = options
        self._output = output
        self._errors = errors
        self.pid = os.getpid() if pid is None else pid
        self.exit_code = 0
        self.port: IListeningPort | None = None
        self.api = DemoAPI(
            reactor,
            model=options.model,
            output=output,
            pid=self.pid,
            token_delay=options.token_delay,
            crash_mid_stream=options.crash_mid_stream,
            fail_health=options.fail_health,
        )
        self.site = DemoSite(self.api, output, reactor)

    def start(self) -> None:
        """
        Spawn the grandchild if asked, then listen once the startup delay is over.
        """
        if self._options.spawn_grandchild is not None:
            self._spawnGrandchild(self._options.spawn_grandchild)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._stopping)
        self._reactor.callLater(self._options.startup_delay, self._listen)

    def _listen(self) -> None:
        options = self._options
        try:
            self.port = self._reactor.listenTCP(
                options.port, cast(ServerFactory, self.site), interface=options.host
            )
        except CannotListenError as e:
            self._errors(f"demo model server cannot listen: {e}")
            self._stop(1)
            return
        host = f"[{options.host}]" if ":" in options.host else options.host
        address = cast(IPv4Address | IPv6Address, self.port.getHost())
        self._output(
            f'demo model server "{options.model}" listening on'
            f" http://{host}:{address.port} pid={self.pid} at={self._reactor.seconds():.6f}"
        )
        if options.exit_after is not None:
            self._reactor.callLater(options.exit_after, self._exitAfter)

    def _exitAfter(self) -> None:
        self._output(
            f"exiting on schedule (--exit-after {self._options.exit_after}),"
            f" status {self._options.exit_code}"
        )
        self._stop(self._options.exit_code)

    def _stop(self, code: int) -> None:
        self.exit_code = code
        self._reactor.stop()

    def _stopping(self) -> None:
        self._output(f"demo model server pid={self.pid} stopping")

    def _spawnGrandchild(self, pidfile: str) -> None:
        sleep = shutil.which("sleep")
        argv = (
            [sleep, "100000"]
            if sleep
            else [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]
        )
        # Same process group, same stdout/stderr: like a launcher script's real server.
        transport = self._reactor.spawnProcess(
            _Grandchild(self._output),
            argv[0],
            argv,
            env=dict(os.environ),
            childFDs={0: 0, 1: 1, 2: 2},
        )
        pid = cast(int, transport.pid)
        temporary = f"{pidfile}.{self.pid}.tmp"
        with open(temporary, "w") as f:
            f.write(f"{pid}\n")
        os.replace(temporary, pidfile)
        self._output(f"spawned grandchild pid={pid} (pid written to {pidfile})")


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535: {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    """
    Parse the demo server's command line (C{sys.argv[1:]} by default).
    """
    parser = argparse.ArgumentParser(
        prog="python -m lmproxy.demo",
        description="A small deterministic OpenAI-compatible model server for lmproxy demos"
        " and tests.",
    )
    parser.add_argument(
        "--port", type=_port, required=True, help="TCP port; 0: any free port (printed)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--model", default="demo", help="model id reported by /v1/models")
    parser.add_argument(
        "--startup-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before listening (simulates model loading)",
    )
    parser.add_argument(
        "--exit-after",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="exit on its own this long after listening",
    )
    parser.add_argument(
        "--exit-code", type=int, default=0, help="exit status for --exit-after (default 0)"
    )
    parser.add_argument(
        "--spawn-grandchild",
        metavar="PIDFILE",
        default=None,
        help="start a child process that sleeps forever and write its pid to PIDFILE",
    )
    parser.add_argument(
        "--crash-mid-stream",
        action="store_true",
        help=f"exit abruptly (status {CRASH_EXIT_CODE}) after two events of a streamed answer",
    )
    parser.add_argument(
        "--token-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="delay between streamed events",
    )
    parser.add_argument("--fail-health", action="store_true", help="/health answers 503")
    args = parser.parse_args(argv)
    return DemoOptions(
        port=args.port,
        host=args.host,
        model=args.model,
        startup_delay=args.startup_delay,
        exit_after=args.exit_after,
        exit_code=args.exit_code,
        spawn_grandchild=args.spawn_grandchild,
        crash_mid_stream=args.crash_mid_stream,
        token_delay=args.token_delay,
        fail_health=args.fail_health,
    )


def _line_writer(stream: IO[str]) -> Output:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return write


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the demo server until SIGTERM/SIGINT (status 0) or C{--exit-after}.
    """
    options = parse_args(argv)
    # The demo never speaks TLS.  Without pyOpenSSL the reactor import skips
    # twisted.internet.ssl and cryptography: about 60 ms less before listening.
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Twisted's own warnings and errors (unhandled failures) go to stderr; its chatter
    # ("Site starting on ...") is dropped, so stdout holds this server's lines only.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    server = DemoServer(
        cast(IDemoReactor, reactor), options, _line_writer(sys.stdout), _line_writer(sys.stderr)
    )
    server.start()
    reactor.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
