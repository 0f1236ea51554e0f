"""
Who may use lmproxy's HTTP ports: strangers are refused before anything
starts.

Three checks, each a function of the request's headers that gives a
L{Refusal} or C{None}; each port answers a refusal in its own error shape:

  - L{KeyCheck}: the request brings one of the port's API keys, as
    C{Authorization: Bearer <key>} or C{x-api-key: <key>} (Anthropic's
    clients send the latter); compared in constant time, with every key.
  - L{host_refusal}: the management API answers only a C{Host} that is an IP
    address, C{localhost} (or a name under it), or a name the config allows:
    a page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding) sends
    its own name there, and is refused.
  - L{cross_site} and L{origin_refusal}: a browser request sent by another
    site's page (its C{Origin}), which could otherwise start models or stop
    services with a plain form or a no-cors C{fetch}.  Requests without
    C{Origin} (curl, SDKs) are never refused by them.

L{GatedSite} runs a port's checks once the headers are in, before the body
is read (the OpenAI port); L{ManagementGate} runs them before the management
API renders (which of its routes need a key depends on the path, which
twisted.web gives only with the whole request; its site reads no more than a
small body).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from lmproxy.config import Config, Secret, normalize_origin
from lmproxy.listen.jsonerrors import JSON_CONTENT_TYPE, encode
from lmproxy.listen.sites import BodyLimitedRequest, BodyLimitedSite


class HeaderLookup(Protocol):
    """
    A request's headers as the checks read them: twisted.web's C{Headers},
    or the hot path's L{lmproxy.listen.requesthead.RequestHead}.
    """

    def getRawHeaders(self, name: bytes) -> Sequence[bytes] | None:
        """Every value of header C{name} (any case), or C{None}."""


def last_value(headers: HeaderLookup, name: bytes) -> bytes | None:
    """The last value of header C{name}, as twisted.web's C{getHeader} gives it."""
    values = headers.getRawHeaders(name)
    return values[-1] if values else None


@frozen
class Refusal:
    """
    Why a request is refused.

    @ivar status: 401 (no key, or a wrong one) or 403 (a Host or Origin
        that is not allowed).
    @ivar message: what was refused, and which config key would allow it;
        never a key.
    @ivar code: a machine-readable code (OpenAI's error shape carries it).
    """

    status: int
    message: str
    code: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The headers a refusal adds: a 401 says which scheme it wants."""
        return [(b"WWW-Authenticate", b"Bearer")] if self.status == 401 else []


def _shown(value: bytes) -> str:
    """A header value from a stranger, fit for a message: short, and decoded whatever it is."""
    text = value.decode("latin-1")
    return repr(text if len(text) <= 80 else text[:77] + "...")


class KeyCheck:
    """
    Whether a request brings one of a port's API keys.

    Each key is kept as its SHA-256 digest: comparing digests takes the same
    time whatever the key's length, and the key given is compared with every
    key (no early exit), so timing tells nothing about the keys.
    """

    def __init__(self, keys: Iterable[Secret], config_key: str) -> None:
        """
        @param keys: the keys; none means that no key is needed.
        @param config_key: the config key that holds them, for messages
            (C{OpenAiApi.ApiKeys}).
        """
        self._digests = [_digest(key.value.encode("utf-8")) for key in keys]
        self._config_key = config_key

    def refusal(self, headers: HeaderLookup) -> Refusal | None:
        """
        @param headers: the request's headers.
        @return: a 401 unless no key is needed or the request brings one.
        """
        if not self._digests:
            return None
        given = [key for key in _given_keys(headers) if key]
        if not given:
            return Refusal(
                401,
                "This port needs an API key: send it as 'Authorization: Bearer <key>'"
                f" (or 'x-api-key: <key>'); the keys are in {self._config_key}.",
                "invalid_api_key",
            )
        accepted = False
        for key in given:
            digest = _digest(key)
            for known in self._digests:
                accepted |= hmac.compare_digest(digest, known)
        if not accepted:
            message = f"Incorrect API key provided: it is not in {self._config_key}."
            return Refusal(401, message, "invalid_api_key")
        return None


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _given_keys(headers: HeaderLookup) -> list[bytes]:
    """The keys a request brings: its last C{Authorization: Bearer} and C{x-api-key}."""
    keys = []
    authorization = headers.getRawHeaders(b"authorization")
    if authorization:
        scheme, _, credentials = authorization[-1].strip().partition(b" ")
        if scheme.lower() == b"bearer":
            keys.append(credentials.strip())
    api_key = headers.getRawHeaders(b"x-api-key")
    if api_key:
        keys.append(api_key[-1].strip())
    return keys


def _host_name(host: bytes) -> str | None:
    """
    The name in a C{Host} header: C{name}, C{name:port} or C{[v6]:port}
    gives C{name} (lowercase) or C{v6}; C{None} when it is not one.
    """
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        inside, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
        try:
            return str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None
    name, colon, port = text.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def host_refusal(host: bytes | None, allowed: Iterable[str]) -> Refusal | None:
    """
    The Host check of the management API, against DNS rebinding.

    @param host: the request's C{Host} header, or C{None} when it has none
        (only tools send none: a browser always sends one).
    @param allowed: host names allowed besides IP addresses and
        C{localhost}, lowercase (C{ManagementApi.AllowedHosts}).
    @return: a 403, or C{None} for an allowed host.
    """
    if host is None:
        return None
    name = _host_name(host)
    if name is not None:
        if name == "localhost" or name.endswith(".localhost") or name in allowed:
            # Browsers resolve localhost and *.localhost to loopback themselves.
            return None
        try:
            ipaddress.IPv4Address(name)
            return None
        except ValueError:
            if ":" in name:  # an IPv6 address, from between brackets
                return None
    return Refusal(
        403,
        f"Host {_shown(host)} is not allowed: the management API answers requests for an"
        " IP address or localhost, and for the names in ManagementApi.AllowedHosts"
        " (a defence against DNS rebinding).",
        "host_not_allowed",
    )


def _origin_netloc(origin: bytes) -> str | None:
    """The host and port of an C{Origin}, lowercase; C{None} when it is malformed."""
    try:
        return urlsplit(origin.decode("ascii")).netloc.lower()
    except (UnicodeDecodeError, ValueError):  # "http://[" is a ValueError
        return None


def cross_site(origin: bytes | None, host: bytes | None) -> bool:
    """
    Whether a request comes from another site's page: it has an C{Origin}
    that is not the site C{Host} names (a malformed one included).

    @param origin: the request's C{Origin} header, or C{None}.
    @param host: its C{Host} header, which the caller has checked, or C{None}.
    """
    if origin is None:
        return False
    netloc = _origin_netloc(origin)
    return netloc is None or host is None or netloc != host.decode("latin-1").lower()


CROSS_SITE = Refusal(403, "cross-origin request refused", "cross_origin")
"""The management API's refusal of a L{cross_site} request."""


def origin_refusal(
    origin: bytes | None, host: bytes | None, allowed: Iterable[str]
) -> Refusal | None:
    """
    The Origin check of the OpenAI port: a browser request is served when its
    page is at an allowed origin, or at this port itself (by IP address or
    localhost: a name could be rebound).

    @param origin: the request's C{Origin} header, or C{None}.
    @param host: its C{Host} header, or C{None}.
    @param allowed: C{OpenAiApi.CorsAllowedOrigins}, normalized; C{"*"} is any.
    @return: a 403, or C{None}.
    """
    if origin is None or "*" in allowed:
        return None
    normalized = normalize_origin(origin.decode("latin-1"))
    if normalized is not None and normalized in allowed:
        return None
    if host_refusal(host, ()) is None and not cross_site(origin, host):
        return None
    return Refusal(
        403,
        f"Requests from web pages at {_shown(origin)} are not allowed on this port:"
        " add the origin to OpenAiApi.CorsAllowedOrigins to allow them.",
        "origin_not_allowed",
    )


class GatedRequest(BodyLimitedRequest):
    """
    A L{BodyLimitedRequest} that its site's gate may refuse as soon as its
    headers are in: nothing of its body is read, nothing is rendered.
    """

    def body_length(self, length: int | None) -> None:
        """The headers are in: check the body's length, then the gate (unless L{gate_later})."""
        super().body_length(length)
        if self.answered_early or self.gate_later(length):
            return
        site: GatedSite = self.channel.site
        refusal = site.gate(self.requestHeaders)
        if refusal is not None:
            self.refuse(refusal.status, refusal.message, refusal.code, refusal.headers())

    def gate_later(self, length: int | None) -> bool:
        """Whether a subclass runs the gate itself, later; here never."""
        return False


class GatedSite(BodyLimitedSite):
    """
    A L{BodyLimitedSite} whose requests are L{GatedRequest}s.

    @ivar gate: gives, for the headers of a request (once they are in), why
        it is refused, or C{None} to let it through.
    """

    requestFactory = GatedRequest

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        clock: IReactorTime,
        gate: Callable[[HeaderLookup], Refusal | None],
    ) -> None:
        """
        @param resource: the root resource.
        @param max_body_bytes: larger request bodies are refused with 413.
        @param clock: drives the site's timeouts.
        @param gate: see L{gate}.
        """
        super().__init__(resource, max_body_bytes, clock)
        self.gate = gate


def management_resource(inner: IResource, config: Config) -> ManagementGate:
    """
    The management API's resource behind its checks (see L{ManagementGate}).

    @param inner: the API's own resource (a Klein app's: it handles every path).
    @param config: the API's keys and allowed hosts.
    """
    return ManagementGate(inner, config)


class ManagementGate(Resource):
    """
    Renders the management API's resource unless one of its checks refuses
    the request, in this order: the C{Host} (L{host_refusal}), the C{Origin}
    (L{cross_site}), then the key (L{KeyCheck}) for every route but the
    dashboard's own files (C{GET /}, C{GET /dashboard/...}), which hold no
    data: the page loads, then asks for the key.  A refusal is the API's
    C{{"error": message}}.
    """

    isLeaf = True

    def __init__(self, inner: IResource, config: Config) -> None:
        """
        @param inner: the API's own resource.
        @param config: the API's keys and allowed hosts.
        """
        super().__init__()
        self._inner = inner
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config's keys and allowed hosts, from the next request on."""
        self._keys = KeyCheck(config.management_api_keys, "ManagementApi.ApiKeys")
        self._allowed_hosts = frozenset(config.management_allowed_hosts)

    def refusal(self, request: IRequest) -> Refusal | None:
        """
        @param request: a request, before it is rendered.
        @return: why it is refused, or C{None}.
        """
        host = request.getHeader(b"host")
        refused = host_refusal(host, self._allowed_hosts)
        if refused is None and cross_site(request.getHeader(b"origin"), host):
            refused = CROSS_SITE
        if refused is None and not _dashboard_file(request):
            refused = self._keys.refusal(request.requestHeaders)
        return refused

    def render(self, request: IRequest) -> Any:  # Klein's own return type is private
        """Refuse the request, or render it."""
        refusal = self.refusal(request)
        if refusal is None:
            return self._inner.render(request)
        request.setResponseCode(refusal.status)
        for name, value in [*refusal.headers(), *_JSON_HEADERS]:
            request.setHeader(name, value)
        return encode({"error": refusal.message})


_JSON_HEADERS = [(b"Content-Type", JSON_CONTENT_TYPE), (b"Cache-Control", b"no-store")]


def _dashboard_file(request: IRequest) -> bool:
    """Whether C{request} asks for one of the dashboard's own files."""
    path = request.path
    return request.method in (b"GET", b"HEAD") and (path == b"/" or path.startswith(b"/dashboard/"))
