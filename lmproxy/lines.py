"""
Split bytes into lines as model servers write them: a line ends at C{\\n},
C{\\r\\n} or a lone C{\\r} (progress bars redraw with it).  The echo of a
service's output into lmproxy's log and the log tails of the management API
both split here; lines are decoded as UTF-8, bad bytes replaced.
"""

from __future__ import annotations

import re

MAX_LINE_BYTES = 64 * 1024
"""
An unterminated line longer than this is handed out as it is, so that a
writer that never ends its line cannot make lmproxy buffer without bound.
"""

LINE_END = re.compile(rb"\r\n|\n|\r")
"""What ends a line."""


def decode(line: bytes) -> str:
    """A line as text: UTF-8, with bad bytes replaced."""
    return line.decode("utf-8", errors="replace")


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """
    Split C{data} into complete lines and the unterminated rest.  A C{\\r} at
    the very end stays in the rest: it may be the first half of C{\\r\\n}.
    """
    lines = []
    start = 0
    for match in LINE_END.finditer(data):
        if match.group() == b"\r" and match.end() == len(data):
            break
        lines.append(data[start : match.start()])
        start = match.end()
    return lines, data[start:]


class LineSplitter:
    """
    Feed it bytes as they come; get back the lines they complete.  What follows
    the last complete line waits for the next feed, up to L{MAX_LINE_BYTES}.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """The lines that C{data} completes."""
        lines, self._pending = split_lines(self._pending + data)
        if len(self._pending) > self._max:
            lines.append(self._pending.rstrip(b"\r"))
            self._pending = b""
        return [decode(line) for line in lines]

    def flush(self) -> list[str]:
        """The stream ended: its unterminated last line, if it has one."""
        rest, self._pending = self._pending.rstrip(b"\r"), b""
        return [decode(rest)] if rest else []
