"""
CORS on the OpenAI port: the web pages at the origins of
C{OpenAiApi.CorsAllowedOrigins} may call it from the browser.

A browser asks first (a preflight: C{OPTIONS} with C{Origin} and
C{Access-Control-Request-Method}), without the API key, and then reads an
answer only when it carries C{Access-Control-Allow-Origin}.  L{CorsPolicy}
says, from a request's headers, which headers every answer to it carries
(none unless it comes from an allowed page on another origin) and how a
preflight is answered.  The port's requests are L{CorsRequest}s (on a
L{CorsSite}): a preflight is answered C{204} before the key check, and
every answer, the early refusals included, carries the policy's headers.
The hot path (L{lmproxy.listen.leanforward}) adds them too; of a
forwarded answer, the backend's own C{Access-Control-*} headers give way to
lmproxy's (L{forwarded}, L{backend_headers}): a browser refuses two
C{Access-Control-Allow-Origin}s.  Requests without C{Origin}, or from the
port's own origin, get no headers of lmproxy's: a backend's pass unchanged.

Other origins are refused by the gate (L{lmproxy.listen.guard.origin_refusal}),
preflights included.  Credentials (cookies) are never allowed: the key
travels in a header, which the preflight allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from lmproxy.config import normalize_origin
from lmproxy.listen.backendconn import HeaderPairs
from lmproxy.listen.guard import (
    GatedRequest,
    GatedSite,
    HeaderLookup,
    Refusal,
    cross_site,
    last_value,
    origin_refusal,
)

ALLOW_ORIGIN = b"Access-Control-Allow-Origin"
"""The header that lets a page read an answer: lmproxy's, or the backend's, never both."""

METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
"""What a preflight allows: every method the port serves."""

EXPOSED = b"Retry-After, x-should-retry, x-request-id, request-id"
"""The headers of an answer that a page may read besides the simple ones."""

DEFAULT_ALLOWED_HEADERS = (
    b"Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta,"
    b" x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version,"
    b" x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version,"
    b" x-stainless-timeout"
)
"""What a preflight allows when the headers it asks for are too long to echo."""

MAX_AGE = b"600"
"""How long a browser may keep a preflight's answer, in seconds."""

MAX_REQUESTED_HEADERS_BYTES = 2048
"""A longer C{Access-Control-Request-Headers} is not echoed."""

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_LIST = re.compile(_TOKEN + rb"(?:[ \t]*,[ \t]*" + _TOKEN + rb")*")


class CorsPolicy:
    """
    Which pages may call the port from another origin, and the headers that
    say so.  It is changed in place on a reload (L{allow}): the site, the
    hot path and the gate share it.

    @ivar origins: the allowed origins, normalized; C{"*"} is any.
    """

    def __init__(self, origins: Iterable[str] = ()) -> None:
        """
        @param origins: see L{origins}.
        """
        self.allow(origins)

    def allow(self, origins: Iterable[str]) -> None:
        """From the next request on, allow C{origins} (C{OpenAiApi.CorsAllowedOrigins})."""
        self.origins = frozenset(origins)
        self._any = "*" in self.origins

    def refusal(self, headers: HeaderLookup) -> Refusal | None:
        """The 403 for a browser request whose page is not allowed, or C{None}."""
        return origin_refusal(
            last_value(headers, b"origin"), last_value(headers, b"host"), self.origins
        )

    def headers_for(self, headers: HeaderLookup) -> HeaderPairs:
        """
        The headers that every answer to a request carries: C{[]} unless it
        comes from an allowed page on another origin; else its origin
        (echoed, so that C{["*"]} works as a list does), C{Vary: Origin},
        and the headers the page may read.

        @param headers: the request's headers.
        """
        origin = last_value(headers, b"origin")
        if origin is None or not cross_site(origin, last_value(headers, b"host")):
            return []
        if not self._any and normalize_origin(origin.decode("latin-1")) not in self.origins:
            return []
        return [
            (ALLOW_ORIGIN, origin),
            (b"Vary", b"Origin"),
            (b"Access-Control-Expose-Headers", EXPOSED),
        ]

    def preflight(self, headers: HeaderLookup) -> HeaderPairs | None:
        """
        The headers that the C{204} answering a preflight from an allowed
        page adds to L{headers_for}'s, or C{None} when the request is none: no
        C{Access-Control-Request-Method}, or no allowed page on another
        origin.  The headers it asks for are allowed as asked, unless they
        are too long or malformed (then L{DEFAULT_ALLOWED_HEADERS}).

        @param headers: the request's headers (its method is the caller's to check).
        """
        if last_value(headers, b"access-control-request-method") is None:
            return None
        if not self.headers_for(headers):
            return None
        asked = last_value(headers, b"access-control-request-headers")
        allowed = DEFAULT_ALLOWED_HEADERS
        if (
            asked is not None
            and len(asked) <= MAX_REQUESTED_HEADERS_BYTES
            and _HEADER_LIST.fullmatch(asked.strip()) is not None
        ):
            allowed = asked.strip()
        answer = [
            (b"Access-Control-Allow-Methods", METHODS),
            (b"Access-Control-Allow-Headers", allowed),
            (b"Access-Control-Max-Age", MAX_AGE),
        ]
        if last_value(headers, b"access-control-request-private-network") == b"true":
            # Chromium asks this of a public page calling a private address.
            answer.append((b"Access-Control-Allow-Private-Network", b"true"))
        return answer

    def answers(self, method: bytes, headers: HeaderLookup) -> bool:
        """
        Whether lmproxy answers this request itself, as a preflight: the
        passthrough (L{lmproxy.listen.upstream}) must not take it.

        @param method: the request's method.
        @param headers: its headers.
        """
        return method == b"OPTIONS" and self.preflight(headers) is not None


def _is_cors(name: bytes) -> bool:
    return name.lower().startswith(b"access-control-")


def _varies_on_origin(values: Iterable[bytes]) -> bool:
    tokens = {token.strip().lower() for value in values for token in value.split(b",")}
    return b"origin" in tokens or b"*" in tokens


def forwarded(backend: HeaderPairs, own: Sequence[tuple[bytes, bytes]]) -> HeaderPairs:
    """
    The headers of a forwarded answer: the backend's as they are when
    lmproxy adds none of its own; else the backend's without its
    C{Access-Control-*} ones, then lmproxy's (its C{Vary: Origin} only when
    the backend's C{Vary} lacks it).

    @param backend: the backend's end-to-end headers.
    @param own: L{CorsPolicy.headers_for} of the request.
    """
    if not own:
        return backend
    kept = [(name, value) for name, value in backend if not _is_cors(name)]
    varies = _varies_on_origin(value for name, value in kept if name.lower() == b"vary")
    kept.extend(pair for pair in own if not (varies and pair[0].lower() == b"vary"))
    return kept


def backend_headers(answer: Headers, backend: Headers) -> Headers:
    """
    What of a backend's headers to copy onto a twisted.web C{answer}: all
    of them, unless C{answer} carries lmproxy's own CORS headers already
    (L{CorsRequest} sets them); then those of L{forwarded}, so that the
    copy replaces none of lmproxy's.

    @param answer: the headers of the client's answer, before the copy.
    @param backend: the backend's headers.
    """
    if not answer.hasHeader(ALLOW_ORIGIN):
        return backend
    pairs = [(name, value) for name, values in backend.getAllRawHeaders() for value in values]
    merged = Headers()
    for name, value in forwarded(pairs, [(b"Vary", b"Origin")]):
        merged.addRawHeader(name, value)
    return merged


class CorsRequest(GatedRequest):
    """
    A request of the OpenAI port: its site's L{CorsPolicy} says, once its
    headers are in, what headers each of its answers carries (they are set
    at once, and added to early refusals), and a preflight is answered
    C{204} before the key check.

    A preflight is known by its headers and its empty body; its method is
    known only once the request is complete: then (L{process}) an
    C{OPTIONS} is answered, and any other method goes through the gate as
    it would have (browsers never send C{Access-Control-Request-Method}
    but in a preflight).

    @ivar cors_headers: the headers each answer carries.
    """

    cors_headers: HeaderPairs = []
    _preflight: HeaderPairs | None = None

    def body_length(self, length: int | None) -> None:
        """The headers are in: the CORS headers, then the body's length and the gate."""
        policy: CorsPolicy = self.channel.site.cors
        self.cors_headers = self.channel.body_headers = policy.headers_for(self.requestHeaders)
        for name, value in self.cors_headers:
            self.responseHeaders.addRawHeader(name, value)
        if length == 0:
            self._preflight = policy.preflight(self.requestHeaders)
        super().body_length(length)

    def gate_later(self, length: int | None) -> bool:
        """A preflight brings no key: the gate waits for its method (L{process})."""
        return self._preflight is not None

    def process(self) -> None:
        """Answer a preflight, or gate a request that only looked like one, or go on."""
        preflight = self._preflight
        if preflight is None:
            super().process()
            return
        if self.method == b"OPTIONS":
            self.setResponseCode(204)
            for name, value in preflight:
                self.setHeader(name, value)
            self.finish()
            return
        refusal = self.channel.site.gate(self.requestHeaders)
        if refusal is None:
            super().process()
        else:
            self.refuse(refusal.status, refusal.message, refusal.code, refusal.headers())

    def refuse(
        self,
        status: int,
        message: str,
        code: str | None,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Refuse as L{GatedRequest} does, with the CORS headers."""
        super().refuse(status, message, code, [*extra, *self.cors_headers])


class CorsSite(GatedSite):
    """
    A L{GatedSite} whose requests are L{CorsRequest}s.

    @ivar cors: the port's policy.
    """

    requestFactory = CorsRequest

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        clock: IReactorTime,
        gate: Callable[[HeaderLookup], Refusal | None],
        cors: CorsPolicy | None = None,
    ) -> None:
        """
        @param resource: the root resource.
        @param max_body_bytes: larger request bodies are refused with 413.
        @param clock: drives the site's timeouts.
        @param gate: see L{GatedSite.gate}.
        @param cors: see L{cors}; none allows no other origin.
        """
        super().__init__(resource, max_body_bytes, clock, gate)
        self.cors = CorsPolicy() if cors is None else cors
