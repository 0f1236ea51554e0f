"""
The errors of lmproxy's OpenAI-compatible port, and of the demo model
server: in OpenAI's shape, C{{"error": {"message", "type", "param",
"code"}}} (OpenAI's SDKs read C{message} and C{code} from there), except on
Anthropic's Messages paths (L{ANTHROPIC_PATHS}), where they have Anthropic's,
C{{"type": "error", "error": {"type", "message"}}}.  L{error_body} picks
the shape by the request's path; L{retry_headers} tells the clients' SDKs
whether, and when, to retry.
"""

from __future__ import annotations

import math
from typing import Any

ANTHROPIC_PATHS = frozenset({b"/v1/messages", b"/v1/messages/count_tokens"})
"""The paths (without query) whose errors have Anthropic's shape."""

# Anthropic's error types by status (its API's documented list).  The SDKs
# pick their exception by the status alone: the type is for people and logs.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_document(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body: C{kind} is its C{type}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_type(status: int) -> str:
    """Anthropic's error type for an HTTP C{status}: C{api_error} for any other 5xx."""
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    return _ANTHROPIC_TYPES.get(status, fallback)


def error_body(
    path: bytes | None,
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """
    The body of an error lmproxy answers itself, in the shape of the API
    that C{path} belongs to.

    @param path: the request's path without its query, or C{None} when it
        is not known yet (OpenAI's shape).
    @param status: the HTTP status, which gives Anthropic's error type.
    @param message: what went wrong, fit to show a user.
    @param kind: OpenAI's error C{type}.
    @param param: the request parameter at fault (OpenAI's shape carries it).
    @param code: a machine-readable code (OpenAI's shape carries it).
    """
    if path in ANTHROPIC_PATHS:
        return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
    return error_document(message, kind, param, code)


def retry_headers(
    status: int, retry_after: float | None = None, retryable: bool | None = None
) -> list[tuple[bytes, bytes]]:
    """
    The headers that tell OpenAI's and Anthropic's SDKs what to do with an
    error lmproxy answers: C{Retry-After} (whole seconds, rounded up) when
    waiting that long may help, and C{x-should-retry: false} when retrying
    cannot (the SDKs obey it; by default they retry 408, 409, 429 and every
    5xx).

    @param status: the HTTP status.
    @param retry_after: seconds after which asking again may succeed, if known.
    @param retryable: whether asking again may help; by default, for a 408
        (the client sent too slowly: the next try may be faster), a 409 (busy
        now), a 429 or a 5xx but a 500 (a bug of lmproxy's stays one).
    """
    if retryable is None:
        retryable = status in (408, 409, 429) or status > 500
    headers = []
    if retry_after is not None:
        headers.append((b"Retry-After", b"%d" % max(1, math.ceil(retry_after))))
    if not retryable:
        headers.append((b"x-should-retry", b"false"))
    return headers
