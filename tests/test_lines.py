"""Tests for L{lmproxy.lines}: one line splitter for service output and log tails."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.lines import MAX_LINE_BYTES, LineSplitter


class LineSplitterTests(SynchronousTestCase):
    """L{LineSplitter} splits on C{\\n}, C{\\r\\n} and C{\\r}, across reads."""

    def test_newline(self) -> None:
        """Complete lines come out, the partial rest waits."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"one\ntwo\nthr"), ["one", "two"])
        self.assertEqual(splitter.feed(b"ee\n"), ["three"])
        self.assertEqual(splitter.flush(), [])

    def test_crlf(self) -> None:
        """C{\\r\\n} ends one line, not two."""
        self.assertEqual(LineSplitter().feed(b"a\r\nb\r\n"), ["a", "b"])

    def test_cr(self) -> None:
        """A lone C{\\r} (a progress bar) ends a line."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"10%\r20%\rdone\n"), ["10%", "20%", "done"])

    def test_crlf_split_across_reads(self) -> None:
        """A C{\\r} at the end of a read waits to see whether C{\\n} follows."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a\r"), [])
        self.assertEqual(splitter.feed(b"\nb\n"), ["a", "b"])

    def test_cr_at_end_then_other_text(self) -> None:
        """A held C{\\r} followed by text ends the line before it."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a\r"), [])
        self.assertEqual(splitter.feed(b"b"), ["a"])
        self.assertEqual(splitter.flush(), ["b"])

    def test_empty_lines(self) -> None:
        """Empty lines are lines too."""
        self.assertEqual(LineSplitter().feed(b"\n\r\n\nx\n"), ["", "", "", "x"])

    def test_flush(self) -> None:
        """Flush returns the unterminated rest once, without a held C{\\r}."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"last"), [])
        self.assertEqual(splitter.flush(), ["last"])
        self.assertEqual(splitter.flush(), [])
        self.assertEqual(splitter.feed(b"x\r"), [])
        self.assertEqual(splitter.flush(), ["x"])
        self.assertEqual(splitter.flush(), [])

    def test_utf8_split_across_reads(self) -> None:
        """A character split between two reads is decoded whole."""
        encoded = "héllo\n".encode()
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(encoded[:2]), [])
        self.assertEqual(splitter.feed(encoded[2:]), ["héllo"])

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are replaced, not an error."""
        self.assertEqual(LineSplitter().feed(b"a\xffb\n"), ["a\ufffdb"])

    def test_long_line_is_bounded(self) -> None:
        """
        A line that never ends is handed out once it is longer than
        L{MAX_LINE_BYTES}, so a writer without newlines cannot make lmproxy
        buffer without bound; what follows starts a new line.
        """
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"x" * MAX_LINE_BYTES), [])
        [line] = splitter.feed(b"yz")
        self.assertEqual(line, "x" * MAX_LINE_BYTES + "yz")
        self.assertEqual(splitter.feed(b"end\n"), ["end"])

    def test_bound_is_configurable(self) -> None:
        """The bound applies to the pending line only: complete lines may be longer."""
        splitter = LineSplitter(max_line_bytes=4)
        self.assertEqual(splitter.feed(b"longer line\nabcd"), ["longer line"])
        self.assertEqual(splitter.feed(b"e"), ["abcde"])
        self.assertEqual(splitter.flush(), [])

    def test_bounded_line_drops_a_held_cr(self) -> None:
        """A held C{\\r} at the end of a bounded line is not part of it."""
        splitter = LineSplitter(max_line_bytes=2)
        self.assertEqual(splitter.feed(b"abc\r"), ["abc"])
