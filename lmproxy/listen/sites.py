"""
The twisted.web sites lmproxy serves, both L{BodyLimitedSite}s: the OpenAI
port's, whose errors have the shape of the request's path (OpenAI's, or
Anthropic's on its Messages paths: L{lmproxy.openai_errors.error_body}), and
the management port's (L{ManagementSite}), whose errors are C{{"error":
message}}.  Neither keeps
an access log.

Each bounds what a client may send (and never the answer): a request body
over the site's limit is refused with 413 before it is read, a client too
slow to send its request gets a 408 (L{lmproxy.listen.timeouts}), and a path
or host that cannot be routed (not UTF-8, say) a 400, before any resource
sees it: never a traceback in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Site

from lmproxy.compat.web import EarlyAnswerRequest, reading_path
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE, encode, unroutable
from lmproxy.listen.timeouts import IDLE_SECONDS, GuardedChannel
from lmproxy.openai_errors import error_body, retry_headers

MANAGEMENT_MAX_BODY_BYTES = 64 * 1024
"""The management API's routes take no body: larger ones are refused."""

ErrorShape = Callable[[bytes | None, int, str, str | None], object]
"""
Builds a port's JSON error document from the request's path (C{None} when
not known yet), the status, a message and a machine-readable code.
"""


def openai_error(path: bytes | None, status: int, message: str, code: str | None) -> object:
    """An error of the OpenAI port: in OpenAI's shape, or Anthropic's on its paths."""
    return error_body(path, status, message, code=code)


def plain_error(path: bytes | None, status: int, message: str, code: str | None) -> object:
    """An error as the management API gives them: C{{"error": message}}."""
    return {"error": message}


class BodyLimitedRequest(EarlyAnswerRequest):
    """
    A request that answers 413 and closes the connection as soon as its body
    is known to be over its site's C{max_body_bytes}: at once from
    Content-Length (no C{100 Continue} is sent, so such clients never upload
    it), else when a chunked body grows past it.  The routes behind it can
    read C{request.content} whole: it is never over the limit.  It tells its
    L{GuardedChannel} when its headers and its body are in, and when it is
    answered.
    """

    channel: Any  # a GuardedChannel whose site is a BodyLimitedSite
    _body_bytes_received = 0

    def _limit(self) -> int:
        limit: int = self.channel.site.max_body_bytes
        return limit

    def body_length(self, length: int | None) -> None:
        """Refuse a declared length over the limit before reading the body."""
        self.channel.headers_received(length)
        if length is not None and length > self._limit():
            self._refuse()

    def body_chunk(self, data: bytes) -> None:
        """Refuse a body whose length was not declared once it grows past the limit."""
        self._body_bytes_received += len(data)
        if self._body_bytes_received > self._limit():
            self._refuse()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The request is complete: no more timeouts until it is answered."""
        if not self.answered_early:
            channel = self.channel
            channel.request_received()
            self.notifyFinish().addBoth(lambda _: channel.request_answered())
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Answer a path or host that cannot be routed with a 400, else render."""
        problem = unroutable(self)
        if problem is None:
            super().process()
            return
        headers, body = self.channel.site.error_answer(400, problem, None, self.path, close=False)
        self.setResponseCode(400)
        for name, value in headers:
            self.setHeader(name, value)
        self.write(body)
        self.finish()

    def refuse(
        self,
        status: int,
        message: str,
        code: str | None,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """
        Answer an error in the site's shape at once, before the body is
        read, and close the connection (see
        L{EarlyAnswerRequest.answer_early}).

        @param status: the HTTP status.
        @param message: what went wrong, fit to show a user.
        @param code: a machine-readable code, if any.
        @param extra: more headers to answer with.
        """
        self.channel.request_received()  # answered: its clock stops
        path = reading_path(self.channel)  # self.path comes with the whole request
        headers, body = self.channel.site.error_answer(status, message, code, path)
        headers.extend(extra)
        self.answer_early(status, Headers({name: [value] for name, value in headers}), body)

    def _refuse(self) -> None:
        message = f"The request body is larger than the limit of {self._limit()} bytes."
        self.refuse(413, message, "request_too_large")


class BodyLimitedSite(Site):
    """
    A site whose connections are L{GuardedChannel}s and whose requests are
    L{BodyLimitedRequest}s, and which leaves multipart bodies unparsed: a
    plain C{Site} parses every upload into C{request.args}, and answers a
    malformed one with a bare 400.  It keeps no access log: upstream logs
    nothing per request, and twisted.web's line cost a tenth of the OpenAI
    port's CPU (the forwarded requests have a debug line of their own).

    @ivar max_body_bytes: larger request bodies are refused with 413.
    """

    # Twisted types this as its wrapper that can also speak HTTP/2 (over TLS
    # only, which lmproxy does not serve): a plain HTTPChannel is what it wraps.
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = BodyLimitedRequest

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        clock: IReactorTime,
        errors: ErrorShape = openai_error,
    ) -> None:
        """
        @param resource: the root resource.
        @param max_body_bytes: larger request bodies are refused with 413.
        @param clock: drives the site's timeouts.
        @param errors: the shape of the site's own errors (400, 401, 403, 408, 413).
        """
        super().__init__(
            resource, parsePOSTFormSubmission=False, reactor=clock, timeout=IDLE_SECONDS
        )
        self.max_body_bytes = max_body_bytes
        self._errors = errors

    def error_answer(
        self,
        status: int,
        message: str,
        code: str | None,
        path: bytes | None,
        close: bool = True,
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """
        The headers and body of an error the site answers itself, with the
        headers that say whether to retry
        (L{lmproxy.openai_errors.retry_headers}).

        @param status: the HTTP status.
        @param message: what went wrong, fit to show a user.
        @param code: a machine-readable code, if any (OpenAI's shape carries it).
        @param path: the request's path without its query, if known: it
            picks the shape of the OpenAI port's errors.
        @param close: whether the answer closes the connection (says so).
        """
        body = encode(self._errors(path, status, message, code))
        headers = [(b"Content-Type", JSON_CONTENT_TYPE), (b"Content-Length", b"%d" % len(body))]
        headers.extend(retry_headers(status))
        if close:
            headers.append((b"Connection", b"close"))
        return headers, body

    def log(self, request: Any) -> None:
        """Log nothing."""


class ManagementSite(BodyLimitedSite):
    """The management port's site: small bodies, plain errors."""

    def __init__(self, resource: IResource, clock: IReactorTime) -> None:
        """
        @param resource: the management API's resource.
        @param clock: drives the site's timeouts.
        """
        super().__init__(resource, MANAGEMENT_MAX_BODY_BYTES, clock, plain_error)
