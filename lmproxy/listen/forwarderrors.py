"""
The answers of the OpenAI port when forwarding a request fails, as values
(L{Answer}) that both of its paths send: the twisted.web routes
(L{lmproxy.listen.openai}) and the hot path (L{lmproxy.listen.leanforward}).
Each failure is logged here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from lmproxy.interfaces import ServiceUnavailable
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE, encode
from lmproxy.logs import log_observer
from lmproxy.openai_errors import error_body, retry_headers

log = Logger(observer=log_observer)


@dataclass(frozen=True, slots=True)
class Answer:
    """
    A whole JSON error answer, whose body takes the shape of the request's
    path (L{lmproxy.openai_errors.error_body}): the same failure is an OpenAI error on
    C{/v1/chat/completions} and an Anthropic one on C{/v1/messages}.

    @ivar status: the HTTP status.
    @ivar message: what went wrong, fit to show a user.
    @ivar kind: the error's C{type} in OpenAI's shape.
    @ivar code: its machine-readable C{code} in OpenAI's shape.
    @ivar headers: the headers besides Content-Type and Content-Length
        (L{lmproxy.openai_errors.retry_headers}).
    """

    status: int
    message: str
    kind: str = "server_error"
    code: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def body(self, path: bytes | None) -> bytes:
        """
        Its body, for a request to C{path}.

        @param path: the request's path without its query.
        """
        return encode(error_body(path, self.status, self.message, self.kind, None, self.code))

    def head_lines(self, close: bool, body: bytes) -> list[bytes]:
        """
        Its status line and headers, for a raw HTTP/1.1 connection.

        @param close: whether the connection closes after it (says so).
        @param body: its L{body}.
        """
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (self.status, HTTPStatus(self.status).phrase.encode("ascii")),
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (JSON_CONTENT_TYPE, len(body)),
        ]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in self.headers)
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return lines

    def render(self, request: IRequest) -> bytes:
        """Set C{request}'s status and headers; its body is the result."""
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        for name, value in self.headers:
            request.setHeader(name, value)
        return self.body(request.path)


def unavailable(service: str, error: ServiceUnavailable) -> Answer:
    """
    The 503 for a service that cannot serve now: the reason and the last
    lines its server wrote, when to retry (C{Retry-After}: the back-off after
    a failed start, or a wait for resources that timed out), and
    C{x-should-retry: false} when retrying cannot help (the header the SDKs
    obey), so that they do not retry a broken model.
    """
    log.info("Request for {service} failed: {why}", service=service, why=str(error))
    message = str(error)
    if error.output_tail:
        message += "\nLast output of the server:\n" + "\n".join(error.output_tail)
    headers = retry_headers(503, error.retry_after, error.retryable)
    return Answer(503, message, code="service_unavailable", headers=headers)


def connect_failed(service: str, error: Exception) -> Answer:
    """The 503 for a backend that could not be connected to, even after a reconnect."""
    message = f"Could not connect to service {service!r}: {error}"
    log.info("{message}", message=message)
    return Answer(503, message, code="service_unavailable", headers=retry_headers(503))


def queue_full(service: str, error: Exception) -> Answer:
    """
    The 429 for a service whose every turn is taken and whose queue is
    full (L{lmproxy.listen.limits}): worth retrying in a moment.
    """
    message = f"Service {service!r} is busy: {error}; retry later."
    log.info("{message}", message=message)
    return Answer(429, message, "requests", "rate_limit_exceeded", retry_headers(429, 1))


def internal_error() -> Answer:
    """
    The 500 for a bug of lmproxy's (its traceback is logged by the caller),
    which retrying does not mend.
    """
    return Answer(500, "Internal error in lmproxy.", headers=retry_headers(500))


def no_response(service: str, error: Exception) -> Answer:
    """The 502 for a backend that closed the connection without an answer."""
    message = f"Service {service!r} closed the connection without a response."
    log.warn("{message} ({why})", message=message, why=str(error))
    return Answer(502, message, code="bad_gateway", headers=retry_headers(502))
