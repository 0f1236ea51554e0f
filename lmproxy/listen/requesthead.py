"""
The head of an HTTP/1.x request, parsed only as far as the OpenAI port's
hot path (L{lmproxy.listen.front}) can be sure of it.

L{parse_head} is strict where twisted.web is lenient: it takes a head only
when every line of it is plain (a request line of three parts, C{name:
value} lines with a token for a name, no folding, no bare CR or LF), so
that where it says a request ends, twisted.web says so too.  Anything
else, it leaves to twisted.web, which answers it as it always did.  A
request whose body is framed by anything but one C{Content-Length} is left
to twisted.web as well: L{RequestHead.plain_framing} says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 16 * 1024
"""twisted.web's limit on a request's headers: a longer head is its to refuse."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"/[!-~]*\Z")  # origin-form, visible ASCII
_VALUE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A host name whose every label IDNA accepts as it is (werkzeug encodes the
# Host with IDNA; anything else is left to the routes' own check), or an
# IPv6 literal; an optional port.
_PLAIN_HOST = re.compile(
    rb"(?:(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z"
)


@dataclass(slots=True)
class RequestHead:
    """
    A request's head, as L{parse_head} understood it.

    @ivar method: the method, as sent.
    @ivar target: the request target (path and query), as sent.
    @ivar path: the target without its query.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar size: the head's length in bytes, its blank line included.
    @ivar headers: every header, in order, its name as sent.
    @ivar fields: the values of each header, by lowercase name.
    @ivar content_length: the body's length when one C{Content-Length} says
        it, C{0} when nothing frames a body, else C{None}.
    """

    method: bytes
    target: bytes
    path: bytes
    version: bytes
    size: int
    headers: list[tuple[bytes, bytes]]
    fields: dict[bytes, list[bytes]] = field(default_factory=dict)
    content_length: int | None = 0

    @property
    def plain_framing(self) -> bool:
        """Whether the body's end is known from the head alone (L{content_length})."""
        return self.content_length is not None

    def getRawHeaders(self, name: bytes, default: list[bytes] | None = None) -> list[bytes] | None:
        """The values of header C{name} (any case), as twisted.web's C{Headers} gives them."""
        return self.fields.get(name.lower(), default)

    def one(self, name: bytes) -> bytes | None:
        """The value of header C{name} (lowercase) when it came once, else C{None}."""
        values = self.fields.get(name)
        return values[0] if values is not None and len(values) == 1 else None

    def plain_host(self) -> bool:
        """Whether it has one C{Host}, which any route can take as it is."""
        host = self.one(b"host")
        return host is not None and _PLAIN_HOST.match(host) is not None


def head_end(buffer: bytes | bytearray) -> int:
    """
    Where the head at the start of C{buffer} ends (after its blank line), or
    C{-1} when it is not all in yet.
    """
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(data: bytes) -> RequestHead | None:
    """
    The head that is C{data} (up to and with its blank line), or C{None}
    when it is not plain enough to be sure of (leave it to twisted.web).

    @param data: a whole head, as L{head_end} finds it.
    """
    if len(data) > MAX_HEAD_BYTES:
        return None
    request_line, *lines = data[:-4].split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or _TOKEN.match(method) is None
        or _TARGET.match(target) is None
    ):
        return None
    headers: list[tuple[bytes, bytes]] = []
    fields: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.match(name) is None:
            return None  # folding, a bad name, a missing colon
        value = value.strip(b" \t")
        if _VALUE_FORBIDDEN.search(value) is not None:
            return None  # a bare CR or LF, or another control character
        headers.append((name, value))
        lower = name.lower()
        values = fields.get(lower)
        if values is None:
            fields[lower] = [value]
        else:
            values.append(value)
    content_length: int | None = 0
    if b"transfer-encoding" in fields:
        content_length = None
    elif b"content-length" in fields:
        lengths = fields[b"content-length"]
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            content_length = None
        else:
            content_length = int(lengths[0])
    return RequestHead(
        method,
        target,
        target.partition(b"?")[0],
        version,
        len(data),
        headers,
        fields,
        content_length,
    )
