"""
The answers of the OpenAI port when forwarding a request fails, as values
(L{Answer}) that both of its paths send: the twisted.web routes
(L{lmproxy.listen.openai}) and the hot path (L{lmproxy.listen.leanforward}).
Each failure is logged here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from http import HTTPStatus

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from lmproxy.interfaces import ServiceUnavailable
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE, encode
from lmproxy.logs import log_observer
from lmproxy.openai_errors import error_document

log = Logger(observer=log_observer)


@dataclass(frozen=True, slots=True)
class Answer:
    """
    A whole JSON answer.

    @ivar status: the HTTP status.
    @ivar body: the JSON body.
    @ivar headers: the headers besides Content-Type and Content-Length.
    """

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def head_lines(self, close: bool) -> list[bytes]:
        """
        Its status line and headers, for a raw HTTP/1.1 connection.

        @param close: whether the connection closes after it (says so).
        """
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (self.status, HTTPStatus(self.status).phrase.encode("ascii")),
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (JSON_CONTENT_TYPE, len(self.body)),
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
        return self.body


def _server_error(
    status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]
) -> Answer:
    return Answer(status, encode(error_document(message, "server_error", None, code)), headers)


def unavailable(service: str, error: ServiceUnavailable) -> Answer:
    """
    OpenAI's 503 for a service that cannot serve now: the reason and the last
    lines its server wrote, when to retry (C{Retry-After}, the back-off after a
    failed start), and C{x-should-retry: false} when retrying cannot help (the
    header OpenAI's SDKs obey), so that they do not retry a broken model.
    """
    log.info("Request for {service} failed: {why}", service=service, why=str(error))
    message = str(error)
    if error.output_tail:
        message += "\nLast output of the server:\n" + "\n".join(error.output_tail)
    headers = []
    if error.retry_after is not None:
        headers.append((b"retry-after", b"%d" % max(1, math.ceil(error.retry_after))))
    if not error.retryable:
        headers.append((b"x-should-retry", b"false"))
    return _server_error(503, message, "service_unavailable", headers)


def connect_failed(service: str, error: Exception) -> Answer:
    """The 503 for a backend that could not be connected to, even after a reconnect."""
    message = f"Could not connect to service {service!r}: {error}"
    log.info("{message}", message=message)
    return _server_error(503, message, "service_unavailable", [])


def queue_full(service: str, error: Exception) -> Answer:
    """
    OpenAI's 429 for a service whose every turn is taken and whose queue is
    full (L{lmproxy.listen.limits}): worth retrying in a moment.
    """
    message = f"Service {service!r} is busy: {error}; retry later."
    log.info("{message}", message=message)
    document = error_document(message, "requests", None, "rate_limit_exceeded")
    return Answer(429, encode(document), [(b"retry-after", b"1")])


def internal_error() -> Answer:
    """The 500 for a bug of lmproxy's (its traceback is logged by the caller)."""
    return Answer(500, encode(error_document("Internal error in lmproxy.", "server_error")))


def no_response(service: str, error: Exception) -> Answer:
    """The 502 for a backend that closed the connection without an answer."""
    message = f"Service {service!r} closed the connection without a response."
    log.warn("{message} ({why})", message=message, why=str(error))
    return _server_error(502, message, "bad_gateway", [])
