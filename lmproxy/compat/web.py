"""
What lmproxy assumes of twisted.web beyond its public API (see
L{lmproxy.compat}).

twisted.web has no public way to answer a request before its body has
arrived (a body limit must refuse an oversized upload without reading it), so
L{EarlyAnswerRequest} overrides the methods through which C{HTTPChannel}
tells a C{Request} about its body.  Twisted documents them as "not intended
for users"; they belong to its private
C{_IDeprecatedHTTPChannelToRequestInterface}.  The assumptions, each tested:

 1. The channel calls C{gotLength(length)} once the headers are in, with the
    Content-Length (or C{None} for a chunked body), before any body byte.
 2. It reads the C{Expect} header after that call, so a request that removes
    it there gets no C{100 Continue}.
 3. It calls C{handleContentChunk(data)} with each piece of the body, decoded
    from chunked transfer-coding, in order.
 4. It calls C{requestReceived(...)} once the body is complete, and that call
    is what makes the request processed: not passing it on leaves the
    resource unrendered.
 5. Once the connection is closed from within those calls, the channel takes
    the rest of the client's bytes without writing anything.
 6. From the request line of a request until the request is complete, the
    channel holds its target (path and query, as sent) as C{_path}: a
    C{Request} gets its C{path} only with C{requestReceived}, and an answer
    before that (a refusal, a timeout) may depend on it
    (L{reading_path}).

This module imports twisted.web: import it only where a site is built.
"""

from __future__ import annotations

from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request


class EarlyAnswerRequest(Request):
    """
    A twisted.web C{Request} that can answer before its body has arrived.

    Subclasses override L{body_length} and L{body_chunk} to watch the body as
    the channel learns about it, and call L{answer_early} from them to answer
    at once and close the connection.  A request answered early is never
    processed: its resource is not rendered.

    @ivar answered_early: whether L{answer_early} was called.
    """

    answered_early = False

    def body_length(self, length: int | None) -> None:
        """
        The headers are in: the body will be C{length} bytes long (its
        Content-Length), or C{None} when its length is not declared (chunked).
        Called before any body byte arrives and before C{100 Continue} is
        sent.  Does nothing unless overridden.

        @param length: the declared length of the body, or C{None}.
        """

    def body_chunk(self, data: bytes) -> None:
        """
        A piece of the body arrived (decoded from chunked transfer-coding).
        Does nothing unless overridden.

        @param data: the piece.
        """

    def answer_early(self, code: int, headers: Headers, body: bytes) -> None:
        """
        Answer with C{code}, C{headers} and C{body} now, and close the
        connection; no C{100 Continue} is sent, and the rest of the body is
        never read.

        @param code: the HTTP status code (its reason phrase is Twisted's).
        @param headers: the response headers, C{Content-Length} included.
        @param body: the response body.
        """
        self.answered_early = True
        # Assumption 2: the channel answers Expect: 100-continue after
        # gotLength, from the header as it is then.
        self.requestHeaders.removeHeader(b"expect")
        # Request.write needs the request line, which the channel hands over only
        # with the complete request (requestReceived): write the response
        # ourselves.  HTTP/1.1 is what every client that sends a body speaks.
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b""))]
        for name, values in headers.getAllRawHeaders():
            lines.extend(b"%s: %s\r\n" % (name, value) for value in values)
        lines.append(b"\r\n")
        lines.append(body)
        assert self.transport is not None  # set from the channel at construction
        self.transport.writeSequence(lines)
        self.loseConnection()

    # --- The channel's private interface to its requests ----------------------

    def gotLength(self, length: int | None) -> None:
        """Assumption 1: told the declared body length first."""
        self.body_length(length)
        if not self.answered_early:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Assumption 3: each piece of the body; assumption 5: nothing after an answer."""
        if self.answered_early:
            return
        self.body_chunk(data)
        if not self.answered_early:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Assumption 4: the complete request, which processing starts from."""
        if not self.answered_early:
            super().requestReceived(command, path, version)


def reading_path(channel: HTTPChannel) -> bytes | None:
    """
    The path (without its query) of the request whose head or body
    C{channel} is reading, or C{None} when it is between requests or has
    not read a request line yet (assumption 6).

    @param channel: a twisted.web channel.
    """
    target = getattr(channel, "_path", None)
    return target.partition(b"?")[0] if isinstance(target, bytes) else None
