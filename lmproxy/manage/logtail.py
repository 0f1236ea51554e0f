"""
Read the end of a service's log file, and follow it as it grows.

A model server's log can be gigabytes, so nothing here reads a whole file: the
tail is read backwards from the end in bounded blocks, up to L{MAX_TAIL_BYTES},
and following reads at most L{FOLLOW_CHUNK} bytes per reactor turn.  Lines end
at C{\\n}, C{\\r\\n} or a lone C{\\r} (progress bars), as lmproxy's own log
echo splits them; bytes are decoded as UTF-8 with replacement.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lmproxy.lines import LINE_END, LineSplitter, decode, split_lines
from lmproxy.logs import log_observer
from lmproxy.timers import Timer

MAX_TAIL_LINES = 10_000
MAX_TAIL_BYTES = 2 * 1024 * 1024
TAIL_BLOCK = 64 * 1024
FOLLOW_CHUNK = 256 * 1024

_log = Logger(observer=log_observer)


Opener = Callable[[str], BinaryIO]
FileIdentity = tuple[int, int]


def _open(path: str) -> BinaryIO:
    return open(path, "rb", buffering=0)


@frozen
class Tail:
    """The end of a log file, and where following it should go on."""

    lines: list[str]  # complete lines, oldest first
    partial: str  # the last line when it has no terminator yet
    offset: int  # file position right after the last complete line
    identity: FileIdentity | None  # (st_dev, st_ino), None when there is no file


def read_tail(
    path: str,
    lines: int,
    max_bytes: int = MAX_TAIL_BYTES,
    block_size: int = TAIL_BLOCK,
    opener: Opener = _open,
) -> Tail:
    """
    The last C{lines} complete lines of the file at C{path} (and its
    unterminated last line), reading at most C{max_bytes} from its end.  A
    missing file has an empty tail.
    """
    try:
        f = opener(path)
    except FileNotFoundError:
        return Tail([], "", 0, None)
    with f:
        stat = os.fstat(f.fileno())
        size = stat.st_size
        pos = size
        data = b""
        # lines + 1 terminators: the extra one bounds the oldest wanted line.
        while pos > 0 and len(data) < max_bytes:
            step = min(block_size, pos, max_bytes - len(data))
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            if len(LINE_END.findall(data)) > lines:
                break
    if pos > 0:
        # The window starts inside a line: drop that fragment, unless the
        # window holds no line end at all (one huge line).
        first = LINE_END.search(data)
        if first is not None:
            data = data[first.end() :]
    complete, rest = split_lines(data)
    wanted = complete[-lines:] if lines > 0 else []
    return Tail(
        [decode(line) for line in wanted],
        decode(rest),
        size - len(rest),
        (stat.st_dev, stat.st_ino),
    )


@define(eq=False)
class LogFollower:
    """
    Polls a log file with C{clock} and hands out the lines appended to it.

    Starts at C{tail.offset} (so the tail's unterminated line comes out once it
    is complete).  When the file is replaced (rotation) or shrinks
    (truncation), calls C{reset} and reads the new content from its start; a
    missing file is waited for.  A file truncated and refilled past the old
    offset between two polls cannot be told from one that grew.
    """

    path: str
    clock: IReactorTime
    tail: Tail
    deliver: Callable[[list[str]], None]
    reset: Callable[[], None]
    interval: float = 0.5
    opener: Opener = _open
    _offset: int = field(init=False, default=0)
    _identity: FileIdentity | None = field(init=False, default=None)
    _splitter: LineSplitter = field(init=False, factory=LineSplitter)
    _poller: Timer = field(init=False)
    _paused: bool = field(init=False, default=False)
    _stopped: bool = field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._offset = self.tail.offset
        self._identity = self.tail.identity
        self._poller = Timer(self.clock)

    def start(self) -> None:
        """Begin polling."""
        self._schedule(self.interval)

    def pause(self) -> None:
        """Read nothing until L{resume} (the client is not keeping up)."""
        self._paused = True
        self._poller.cancel()

    def resume(self) -> None:
        """Go on after L{pause}."""
        if self._paused and not self._stopped:
            self._paused = False
            self._schedule(0)

    def stop(self) -> None:
        """Stop for good: the client left."""
        self._stopped = True
        self._poller.cancel()

    def _schedule(self, delay: float) -> None:
        if not (self._paused or self._stopped):
            self._poller.arm(delay, self._poll)

    def _restart_from_beginning(self, identity: FileIdentity) -> None:
        self._identity = identity
        self._offset = 0
        self._splitter = LineSplitter()

    def _poll(self) -> None:
        more = False
        try:
            more = self._read()
        except FileNotFoundError:
            pass  # rotated away and not re-created yet, or never written
        except OSError as e:
            _log.warn("Cannot read log {path}: {error}", path=self.path, error=e)
        self._schedule(0 if more else self.interval)

    def _read(self) -> bool:
        """Read what was appended since the last poll; True if more is waiting."""
        with self.opener(self.path) as f:
            stat = os.fstat(f.fileno())
            identity = (stat.st_dev, stat.st_ino)
            if self._identity is None:
                self._restart_from_beginning(identity)
            elif identity != self._identity or stat.st_size < self._offset:
                self._restart_from_beginning(identity)
                self.reset()
            if stat.st_size <= self._offset:
                return False
            f.seek(self._offset)
            data = f.read(min(FOLLOW_CHUNK, stat.st_size - self._offset))
        self._offset += len(data)
        lines = self._splitter.feed(data)
        if lines:
            self.deliver(lines)
        return self._offset < stat.st_size
