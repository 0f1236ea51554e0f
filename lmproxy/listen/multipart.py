"""
The one field of a multipart/form-data body that the OpenAI port routes by
(the C{model} of an audio transcription or translation), found without
parsing the rest.
"""

from __future__ import annotations

from itertools import chain

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
