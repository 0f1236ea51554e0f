"""
The heads of the OpenAI port's passthrough (L{lmproxy.listen.upstream}):
which model and path a C{/upstream/} target names (L{resolve}), the head
its backend gets (L{rewritten_head}), and the heads of the backend's answer
as the client gets them (L{AnswerHeads}).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from lmproxy.listen import cors
from lmproxy.listen.backendconn import HeaderPairs
from lmproxy.listen.forwarderrors import Answer
from lmproxy.listen.httpforward import connection_named, end_to_end
from lmproxy.listen.jsonerrors import unknown_model
from lmproxy.listen.requesthead import MAX_HEAD_BYTES, RequestHead, head_end
from lmproxy.openai_errors import retry_headers

PREFIX = b"/upstream/"
"""The paths of the passthrough start with it."""

_KEPT = frozenset({b"transfer-encoding"})  # the body passes framed as it came
_NO_HOP = frozenset({b"host"})  # the backend's own is written


def resolve(target: bytes, models: Mapping[str, object]) -> tuple[str, bytes] | None:
    """
    The model and the backend's target of an C{/upstream/} request target:
    the longest known model id (percent-decoded) that the path after
    L{PREFIX} starts with, followed by C{/} or its end; the rest of the path
    (C{/} when none), then the query, as sent.

    @param target: the request target, which starts with L{PREFIX}.
    @param models: the known model ids.
    @return: C{(model, target)}, or C{None} when no model id fits.
    """
    path, question, query = target[len(PREFIX) :].partition(b"?")
    ends = [i for i, byte in enumerate(path) if byte == 0x2F]
    for end in reversed([*ends, len(path)]):
        try:
            model = unquote_to_bytes(path[:end]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if model in models:
            return model, (path[end:] or b"/") + question + query
    return None


def not_found(target: bytes) -> Answer:
    """OpenAI's 404 for an C{/upstream/} target that names no known model (its first segment)."""
    first = target[len(PREFIX) :].partition(b"?")[0].partition(b"/")[0]
    model = unquote_to_bytes(first).decode("utf-8", "replace")
    return Answer(
        404, unknown_model(model), "invalid_request_error", "model_not_found", retry_headers(404)
    )


def rewritten_head(head: RequestHead, target: bytes, backend: bytes) -> bytes:
    """
    The head the backend gets: C{target}, C{Host: backend}, the client's
    end-to-end headers and its body's framing, and C{Connection: close}
    (C{Connection: upgrade} and the C{Upgrade} header for an upgrade).
    """
    named = connection_named(head.fields.get(b"connection", ()))
    upgrade = b"upgrade" in named and b"upgrade" in head.fields
    kept = _KEPT | {b"upgrade"} if upgrade else _KEPT
    lines = [b"%s %s %s\r\nHost: %s\r\n" % (head.method, target, head.version, backend)]
    lines.extend(
        b"%s: %s\r\n" % (name, value)
        for name, value in head.headers
        if name.lower() in kept or end_to_end(name.lower(), named, _NO_HOP)
    )
    lines.append(b"Connection: upgrade\r\n\r\n" if upgrade else b"Connection: close\r\n\r\n")
    return b"".join(lines)


def _status(line: bytes) -> int | None:
    """The status of an answer's status line, or C{None} if it is not one."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not line.startswith(b"HTTP/") or len(parts[1]) != 3:
        return None
    return int(parts[1]) if parts[1].isdigit() else None


class AnswerHeads:
    """
    Reads the heads at the start of a backend's answer as they come: its
    interim ones (C{100 Continue}) pass, its final one gives the answer's
    status (L{code}) and gets lmproxy's CORS headers in place of the
    backend's (L{lmproxy.listen.cors.forwarded}); then the rest passes as
    it comes.  An answer that is not HTTP passes as it is (a 502).

    @ivar code: the final status, once known; else 0.
    """

    def __init__(self, own: HeaderPairs) -> None:
        """
        @param own: lmproxy's CORS headers for the request (none: the heads
            pass byte for byte).
        """
        self._own = own
        self._held = b""
        self.code = 0

    def feed(self, data: bytes) -> bytes:
        """What of the answer to send now, given its next bytes C{data}."""
        if self.code:
            return data
        self._held += data
        sent: list[bytes] = []
        while True:
            line, crlf, _ = self._held.partition(b"\r\n")
            code = _status(line) if crlf else 0
            end = head_end(self._held)
            if code is None or (end < 0 and len(self._held) > MAX_HEAD_BYTES):
                self.code = 502  # not HTTP: counted as a bad answer
                return b"".join([*sent, self.rest()])
            if end < 0:
                return b"".join(sent)
            assert code is not None
            head, self._held = self._held[:end], self._held[end:]
            if 100 <= code < 200 and code != 101:
                sent.append(head)  # interim: the final head follows
                continue
            self.code = code
            return b"".join([*sent, self._with_own(head), self.rest()])

    def rest(self) -> bytes:
        """What is held (and forgets it): at the answer's end, it goes as it came."""
        held, self._held = self._held, b""
        return held

    def _with_own(self, head: bytes) -> bytes:
        if not self._own:
            return head
        status_line, *lines = head[:-4].split(b"\r\n")
        pairs = [line.partition(b":") for line in lines]
        if not all(colon for _, colon, _ in pairs):
            return head  # folded lines: left as they are
        headers = [(name.strip(), value.strip()) for name, _, value in pairs]
        kept = cors.forwarded(headers, self._own)
        return b"".join([status_line, *(b"\r\n%s: %s" % pair for pair in kept), b"\r\n\r\n"])
