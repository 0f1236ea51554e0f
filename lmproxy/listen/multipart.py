"""
The one field of a multipart/form-data body that the OpenAI port routes by
(the C{model} of an audio transcription or translation), found without
parsing the rest, and replaced for a service's C{UseModelName}.
"""

from __future__ import annotations

from itertools import chain

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Field, MultipartDecoder

# The multipart body is fed to the decoder in slices, so a big audio file that
# comes before the model field is never copied whole.
_MULTIPART_SLICE = 64 * 1024


def multipart_field(body: bytes, boundary: bytes, name: str) -> str | None:
    """
    The value of the form field C{name} in a multipart/form-data C{body}, or
    C{None} when it has no such field.  Stops reading at that field.

    @param body: the whole body.
    @param boundary: the boundary its Content-Type names.
    @param name: the field to find.
    @raise ValueError: the body is not valid multipart, or the value is not UTF-8.
    """
    decoder = MultipartDecoder(boundary)
    view = memoryview(body)
    slices = (bytes(view[i : i + _MULTIPART_SLICE]) for i in range(0, len(body), _MULTIPART_SLICE))
    value: bytearray | None = None
    for data in chain(slices, [None]):  # None: the end of the body
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not NEED_DATA:
            if isinstance(event, Field):
                value = bytearray() if event.name == name else None
            elif isinstance(event, Data) and value is not None:
                value += event.data
                if not event.more_data:
                    return value.decode("utf-8")
            elif isinstance(event, Epilogue):
                return None
    raise ValueError("it ends before its closing boundary")


def with_field(body: bytes, boundary: bytes, name: str, value: str) -> bytes:
    """
    C{body} with the value of its form field C{name} replaced by C{value},
    every other byte as it was; C{body} itself when it has no such field.

    A boundary never occurs inside a part (RFC 2046), so the parts are found
    by it; the field's headers are those before its first empty line.

    @param body: a whole multipart/form-data body that L{multipart_field} read.
    @param boundary: the boundary its Content-Type names.
    @param name: the field to replace.
    @param value: its new value.
    """
    delimiter = b"--" + boundary
    parts = body.split(delimiter)
    for index, part in enumerate(parts[1:-1], start=1):
        head, blank, _ = part.partition(b"\r\n\r\n")
        if blank and _field_name(head) == name:
            parts[index] = head + blank + value.encode("utf-8") + b"\r\n"
            return delimiter.join(parts)
    return body


def _field_name(head: bytes) -> str | None:
    """The C{name} of a part's Content-Disposition, from its header block."""
    for line in head.split(b"\r\n"):
        header, colon, rest = line.partition(b":")
        if colon and header.strip().lower() == b"content-disposition":
            _, options = parse_options_header(rest.decode("latin-1"))
            return options.get("name")
    return None
