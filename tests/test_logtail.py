"""
Tests for L{lmproxy.manage.logtail}: reading the end of a log without reading the
whole file, and following it through growth, truncation and rotation.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.lines import MAX_LINE_BYTES, split_lines
from lmproxy.manage.logtail import (
    FOLLOW_CHUNK,
    TAIL_BLOCK,
    LogFollower,
    Tail,
    read_tail,
)


class CountingFile(io.FileIO):
    """A file that records the size of every read."""

    reads: list[int]

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.reads.append(len(data))
        return data


class Reads:
    """An opener that counts what is read through it."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.opens = 0

    def __call__(self, path: str) -> BinaryIO:
        f = CountingFile(path, "rb")
        f.reads = self.sizes
        self.opens += 1
        return f

    @property
    def total(self) -> int:
        return sum(self.sizes)


class SplitLinesTests(SynchronousTestCase):
    """Lines end at \\n, \\r\\n or a lone \\r."""

    def test_terminators(self) -> None:
        self.assertEqual(split_lines(b"a\nb\r\nc\rd"), ([b"a", b"b", b"c"], b"d"))

    def test_trailing_carriage_return_waits(self) -> None:
        self.assertEqual(split_lines(b"a\r"), ([], b"a\r"))
        self.assertEqual(split_lines(b"a\r" + b"\nb\n"), ([b"a", b"b"], b""))

    def test_empty_lines(self) -> None:
        self.assertEqual(split_lines(b"\n\n"), ([b"", b""], b""))


class ReadTailTests(SynchronousTestCase):
    """L{read_tail}."""

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_last_lines(self) -> None:
        path = self.write(b"".join(b"line %d\n" % i for i in range(10)))
        tail = read_tail(path, 3)
        self.assertEqual(tail.lines, ["line 7", "line 8", "line 9"])
        self.assertEqual(tail.partial, "")
        self.assertEqual(tail.offset, os.path.getsize(path))
        stat = os.stat(path)
        self.assertEqual(tail.identity, (stat.st_dev, stat.st_ino))

    def test_unterminated_last_line(self) -> None:
        path = self.write(b"one\ntwo\nthr")
        tail = read_tail(path, 1)
        self.assertEqual((tail.lines, tail.partial, tail.offset), (["two"], "thr", 8))

    def test_fewer_lines_than_asked(self) -> None:
        path = self.write(b"one\r\ntwo\rthree\n")
        self.assertEqual(read_tail(path, 100).lines, ["one", "two", "three"])

    def test_zero_lines(self) -> None:
        path = self.write(b"one\ntwo\n")
        tail = read_tail(path, 0)
        self.assertEqual((tail.lines, tail.offset), ([], 8))

    def test_empty_and_missing(self) -> None:
        self.assertEqual(read_tail(self.write(b""), 5).lines, [])
        missing = read_tail(self.mktemp(), 5)
        self.assertEqual(missing, Tail([], "", 0, None))

    def test_invalid_utf8_is_replaced(self) -> None:
        path = self.write(b"caf\xc3\xa9 \xff\n")
        self.assertEqual(read_tail(path, 1).lines, ["café \ufffd"])

    def test_lines_across_blocks(self) -> None:
        lines = [b"%05d" % i + b"x" * 100 for i in range(2000)]
        path = self.write(b"\n".join(lines) + b"\n")
        tail = read_tail(path, 1500, block_size=4096)
        self.assertEqual(tail.lines, [line.decode() for line in lines[-1500:]])

    def test_huge_file_reads_only_its_end(self) -> None:
        """A 50 MB log: the tail costs one block, not the file."""
        path = self.mktemp()
        block = b"".join(b"%07d llama_model_loader: loaded tensor\n" % i for i in range(25_000))
        with open(path, "wb") as f:
            for _ in range(50):
                f.write(block)
        self.assertGreater(os.path.getsize(path), 50_000_000)
        reads = Reads()
        tail = read_tail(path, 100, opener=reads)
        self.assertEqual(len(tail.lines), 100)
        self.assertEqual(tail.lines[-1], "0024999 llama_model_loader: loaded tensor")
        self.assertEqual(reads.sizes, [TAIL_BLOCK])

    def test_bounded_by_max_bytes(self) -> None:
        """A file of one endless line: never more than max_bytes read."""
        path = self.write(b"x" * 5_000_000)
        reads = Reads()
        tail = read_tail(path, 10, max_bytes=1_000_000, opener=reads)
        self.assertEqual(reads.total, 1_000_000)
        self.assertEqual((tail.lines, len(tail.partial)), ([], 1_000_000))

    def test_many_lines_bounded_by_max_bytes(self) -> None:
        path = self.write(b"".join(b"%09d\n" % i for i in range(200_000)))
        reads = Reads()
        tail = read_tail(path, 10_000, max_bytes=20_000, opener=reads)
        self.assertEqual(reads.total, 20_000)
        self.assertEqual(len(tail.lines), 1999)  # the window's first fragment is dropped
        self.assertEqual(tail.lines[-1], "000199999")


class LogFollowerTests(SynchronousTestCase):
    """L{LogFollower}, driven by a L{Clock}."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.clock = Clock()
        self.delivered: list[str] = []
        self.resets = 0

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def follow(self, tail: Tail | None = None) -> LogFollower:
        def reset() -> None:
            self.resets += 1

        follower = LogFollower(
            self.path,
            self.clock,
            tail or read_tail(self.path, 10),
            self.delivered.extend,
            reset,
            interval=0.5,
        )
        follower.start()
        self.addCleanup(follower.stop)
        return follower

    def test_new_lines(self) -> None:
        self.append(b"old\n")
        self.follow()
        self.append(b"new 1\nnew 2\n")
        self.clock.advance(0.49)
        self.assertEqual(self.delivered, [])
        self.clock.advance(0.01)
        self.assertEqual(self.delivered, ["new 1", "new 2"])
        self.append(b"new 3\n")
        self.clock.advance(0.5)
        self.assertEqual(self.delivered, ["new 1", "new 2", "new 3"])

    def test_partial_line_waits_for_its_end(self) -> None:
        self.append(b"old\nhalf")
        self.follow()
        self.clock.advance(0.5)
        self.assertEqual(self.delivered, [])
        self.append(b" done\r")
        self.clock.advance(0.5)
        self.assertEqual(self.delivered, [])  # \r could be the start of \r\n
        self.append(b"\nnext\n")
        self.clock.advance(0.5)
        self.assertEqual(self.delivered, ["half done", "next"])

    def test_endless_line_is_handed_out_in_pieces(self) -> None:
        self.follow(Tail([], "", 0, None))
        self.append(b"y" * (MAX_LINE_BYTES + 1))
        self.clock.advance(0.5)
        self.assertEqual([len(line) for line in self.delivered], [MAX_LINE_BYTES + 1])

    def test_missing_file_is_waited_for(self) -> None:
        self.follow()
        self.clock.advance(1.5)
        self.assertEqual(self.delivered, [])
        self.append(b"first\n")
        self.clock.advance(0.5)
        self.assertEqual((self.delivered, self.resets), (["first"], 0))

    def test_truncation(self) -> None:
        self.append(b"a\nb\n")
        self.follow()
        with open(self.path, "wb") as f:
            f.write(b"c\n")
        self.clock.advance(0.5)
        self.assertEqual((self.delivered, self.resets), (["c"], 1))

    def test_rotation(self) -> None:
        self.append(b"a\n")
        self.follow()
        self.append(b"b\n")
        os.rename(self.path, self.path + ".1")
        self.clock.advance(0.5)  # rotated away: wait
        self.append(b"new file\n")
        self.clock.advance(0.5)
        self.assertEqual((self.delivered, self.resets), (["new file"], 1))

    def test_big_growth_is_read_in_bounded_chunks(self) -> None:
        """Each read is one reactor call of at most FOLLOW_CHUNK bytes."""
        reads = Reads()
        follower = LogFollower(
            self.path,
            self.clock,
            Tail([], "", 0, None),
            self.delivered.extend,
            lambda: None,
            opener=reads,
        )
        follower.start()
        self.addCleanup(follower.stop)
        line = b"z" * 99 + b"\n"
        count = 3 * FOLLOW_CHUNK // len(line)
        self.append(line * count)
        self.clock.advance(0.5)
        last = count * len(line) - 2 * FOLLOW_CHUNK
        self.assertEqual(reads.sizes, [FOLLOW_CHUNK, FOLLOW_CHUNK, last])
        self.assertEqual(len(self.delivered), count)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1.0])

    def test_pause_and_resume(self) -> None:
        follower = self.follow()
        follower.pause()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.append(b"while paused\n")
        self.clock.advance(5)
        self.assertEqual(self.delivered, [])
        follower.resume()
        self.clock.advance(0)
        self.assertEqual(self.delivered, ["while paused"])

    def test_stop(self) -> None:
        follower = self.follow()
        follower.stop()
        follower.resume()
        self.assertEqual(self.clock.getDelayedCalls(), [])
