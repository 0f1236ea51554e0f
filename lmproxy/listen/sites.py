"""
The twisted.web sites lmproxy serves: the OpenAI port's, which holds the one
request-body limit of that port, and the management port's, which keeps no
access log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Site

from lmproxy.compat import EarlyAnswerRequest
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE, encode, too_large


class BodyLimitedRequest(EarlyAnswerRequest):
    """
    A request that answers 413 and closes the connection as soon as its body
    is known to be over its site's C{max_body_bytes}: at once from
    Content-Length (no C{100 Continue} is sent, so such clients never upload
    it), else when a chunked body grows past it.  The routes behind it can
    read C{request.content} whole: it is never over the limit.
    """

    channel: Any  # an HTTPChannel whose site is a BodyLimitedSite
    _body_bytes_received = 0

    def _limit(self) -> int:
        limit: int = self.channel.site.max_body_bytes
        return limit

    def body_length(self, length: int | None) -> None:
        """Refuse a declared length over the limit before reading the body."""
        if length is not None and length > self._limit():
            self._refuse()

    def body_chunk(self, data: bytes) -> None:
        """Refuse a body whose length was not declared once it grows past the limit."""
        self._body_bytes_received += len(data)
        if self._body_bytes_received > self._limit():
            self._refuse()

    def _refuse(self) -> None:
        body = encode(too_large(self._limit()))
        headers = Headers(
            {
                b"Content-Type": [JSON_CONTENT_TYPE],
                b"Content-Length": [b"%d" % len(body)],
                b"Connection": [b"close"],
            }
        )
        self.answer_early(413, headers, body)


class BodyLimitedSite(Site):
    """
    A site whose requests are L{BodyLimitedRequest}s, and which leaves
    multipart bodies unparsed: a plain C{Site} parses every upload into
    C{request.args}, and answers a malformed one with a bare 400.

    @ivar max_body_bytes: larger request bodies are refused with 413.
    """

    requestFactory = BodyLimitedRequest

    def __init__(self, resource: IResource, max_body_bytes: int, clock: IReactorTime) -> None:
        """
        @param resource: the root resource.
        @param max_body_bytes: larger request bodies are refused with 413.
        @param clock: drives the site's timeouts.
        """
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=clock)
        self.max_body_bytes = max_body_bytes


class UnloggedSite(Site):
    """A site that keeps no access log (dashboards poll the management port)."""

    def log(self, request: Any) -> None:
        """Log nothing."""
