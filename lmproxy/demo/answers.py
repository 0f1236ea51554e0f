"""
What the demo "model" answers, as OpenAI-shaped JSON documents: chat
completions, text completions and embeddings, checked the way OpenAI checks
them (L{BadRequest} otherwise).

Everything here is deterministic and knows nothing of HTTP or time: a
completion echoes the requested model, the server's pid and the last user
message (or the prompt), one "token" per word; an embedding is a unit vector
derived from SHA-256 of its input.  L{lmproxy.demo.api} puts these documents
on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from attrs import define, field, frozen

#: Size of the vectors that C{/v1/embeddings} answers (unless C{dimensions} is given).
EMBEDDING_DIMENSIONS = 8

#: The largest C{dimensions} that C{/v1/embeddings} accepts.
MAX_EMBEDDING_DIMENSIONS = 4096

JSONObject = dict[str, Any]
"""A JSON object, decoded: a request body, an answer, an event."""


class BadRequest(Exception):
    """
    A request that the API rejects with an OpenAI-shaped 400 error.

    @ivar message: the error's C{message}.
    @ivar param: the error's C{param}: the request field at fault, if one is.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@frozen
class Reply:
    """
    A whole answer: one JSON document.
    """

    document: JSONObject


@frozen
class StreamedReply:
    """
    An answer to send as Server-Sent Events, one per item of C{events}; the
    final C{[DONE]} of OpenAI's streams is not among them.

    @ivar named: each event goes as C{event: <its type>} with no C{[DONE]}
        after them (Anthropic's streams), not as bare C{data} (OpenAI's).
    """

    events: list[JSONObject]
    named: bool = False


def json_bytes(obj: object) -> bytes:
    """
    C{obj} as compact UTF-8 JSON, the way the demo sends every document.
    """
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_body(raw: bytes) -> JSONObject:
    """
    A request's JSON body: an object with a string C{model}.

    @raise BadRequest: if it is not.
    """
    try:
        body = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise BadRequest(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter", "model")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    return body


def words(text: str) -> list[str]:
    """
    Split C{text} into "tokens": words, each but the first with its leading
    space, so that joining them gives C{text} back exactly.
    """
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def count_words(text: str) -> int:
    """
    The number of "tokens" that C{text} counts for in C{usage}.
    """
    return len(text.split())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """
    An answer's C{usage} object.
    """
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message_text(content: object) -> str:
    """
    The text of a chat message's C{content}: a string, or a list of content
    parts (C{{"type": "text", "text": ...}}) whose texts are joined.
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


def optional_bool(body: JSONObject, key: str) -> bool:
    """
    C{body[key]}, a boolean that defaults to C{False}; else L{BadRequest}.
    """
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be a boolean", key)
    return value


def optional_positive_int(body: JSONObject, key: str) -> int | None:
    """
    C{body[key]}, a positive integer or absent (C{None}); else L{BadRequest}.
    """
    value = body.get(key)
    if value is None:
        return None
    # bool is an int to Python, not to JSON Schema.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{key!r} must be a positive integer", key)
    return value


def include_usage(body: JSONObject) -> bool:
    """
    Does a streamed answer end with a C{usage} event (C{stream_options})?
    """
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


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


def _embedding_inputs(raw: object) -> list[bytes]:
    """
    The items of an embeddings request's C{input}, each as the bytes to hash:
    a string, a list of strings, a token list or a list of token lists.
    """
    if isinstance(raw, str):
        return [raw.encode("utf-8")]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return [x.encode("utf-8") for x in raw]
        # type() rather than isinstance(): True is not a token.
        if all(type(x) is int for x in raw):
            return [json_bytes(raw)]
        if all(isinstance(x, list) and all(type(t) is int for t in x) for x in raw):
            return [json_bytes(x) for x in raw]
    raise BadRequest("'input' must be a string, a list of strings or of token lists", "input")


def embeddings(body: JSONObject) -> Reply:
    """
    The answer to C{POST /v1/embeddings} with the (parsed) C{body}.

    @raise BadRequest: if C{body} asks for something this server cannot give.
    """
    inputs = _embedding_inputs(body.get("input"))
    dimensions = optional_positive_int(body, "dimensions") or EMBEDDING_DIMENSIONS
    if dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise BadRequest(f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        embedding: list[float] | str = vector
        if encoding == "base64":
            packed = struct.pack(f"<{dimensions}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(count_words(item.decode("utf-8", "replace")) for item in inputs)
    return Reply(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@define
class Completions:
    """
    The demo model's completions: the same request always gets the same text,
    and every answer has an id of its own.

    @ivar pid: the server's pid, part of every answer's text and id.
    """

    pid: int
    _answered: int = field(default=0, init=False)

    def next_id(self, prefix: str) -> str:
        """A new answer id: C{prefix}, the pid, a count."""
        self._answered += 1
        return f"{prefix}-demo{self.pid}-{self._answered}"

    def tokens(self, body: JSONObject, text: str) -> tuple[list[str], str]:
        """
        The reply's tokens and its finish reason, honouring C{max_tokens}.
        """
        limit = optional_positive_int(body, "max_tokens")
        if limit is None:
            limit = optional_positive_int(body, "max_completion_tokens")
        tokens = words(f"demo({body['model']}) pid {self.pid}: {text}")
        if limit is not None and len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    def chat(self, body: JSONObject, created: int) -> Reply | StreamedReply:
        """
        The answer to C{POST /v1/chat/completions} with the (parsed) C{body}.

        @param created: the answer's C{created} time, in POSIX seconds.
        @raise BadRequest: if C{body} is not a chat completion request.
        """
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("'messages' must be a list of message objects", "messages")
        stream = optional_bool(body, "stream")
        user = [m.get("content") for m in messages if m.get("role") == "user"]
        last = message_text(user[-1]) if user else ""
        tokens, finish = self.tokens(body, last)
        counted = usage(
            sum(count_words(message_text(m.get("content"))) for m in messages), len(tokens)
        )
        base = {
            "id": self.next_id("chatcmpl"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": created,
            "model": body["model"],
        }
        if not stream:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": None,
                "finish_reason": finish,
            }
            return Reply({**base, "choices": [choice], "usage": counted})

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> JSONObject:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice]}

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": token}) for token in tokens]
        events.append(chunk({}, finish))
        if include_usage(body):
            events.append({**base, "choices": [], "usage": counted})
        return StreamedReply(events)

    def text(self, body: JSONObject, created: int) -> Reply | StreamedReply:
        """
        The answer to C{POST /v1/completions} with the (parsed) C{body}.

        @param created: the answer's C{created} time, in POSIX seconds.
        @raise BadRequest: if C{body} is not a completion request.
        """
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = prompt[-1]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string or a list of strings", "prompt")
        stream = optional_bool(body, "stream")
        tokens, finish = self.tokens(body, prompt)
        counted = usage(count_words(prompt), len(tokens))
        base = {
            "id": self.next_id("cmpl"),
            "object": "text_completion",
            "created": created,
            "model": body["model"],
        }

        def choice(text: str, finish_reason: str | None) -> JSONObject:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        if not stream:
            return Reply({**base, "choices": [choice("".join(tokens), finish)], "usage": counted})
        events = [{**base, "choices": [choice(token, None)]} for token in tokens]
        events.append({**base, "choices": [choice("", finish)]})
        if include_usage(body):
            events.append({**base, "choices": [], "usage": counted})
        return StreamedReply(events)
