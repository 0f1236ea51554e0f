"""
Tests for ``GET /services/{name}/logs`` of L{lmproxy.manage.api}: the tail as
text, and following as Server-Sent Events driven by a L{Clock}.
"""

from __future__ import annotations

import os

from lmproxy.manage.logtail import MAX_TAIL_LINES
from tests.test_management import ALPHA, QWEN_PATH, ApiCase


class LogsTests(ApiCase):
    """GET /services/{name}/logs."""

    def setUp(self) -> None:
        super().setUp()
        os.makedirs(self.log_dir)
        self.path = os.path.join(self.log_dir, "alpha.log")

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def text(self, path: str) -> str:
        response, body = self.client.request("GET", path)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"]
        )
        return body.decode("utf-8")

    def test_tail(self) -> None:
        self.append(b"".join(b"line %d\n" % i for i in range(300)))
        text = self.text(f"/services/{ALPHA}/logs?tail=2")
        self.assertEqual(text, "line 298\nline 299\n")

    def test_default_tail_is_100_lines(self) -> None:
        self.append(b"".join(b"line %d\n" % i for i in range(300)))
        lines = self.text(f"/services/{ALPHA}/logs").splitlines()
        self.assertEqual((len(lines), lines[0]), (100, "line 200"))

    def test_tail_is_capped(self) -> None:
        self.append(b"x\n" * (MAX_TAIL_LINES + 5))
        lines = self.text(f"/services/{ALPHA}/logs?tail=99999999").splitlines()
        self.assertEqual(len(lines), MAX_TAIL_LINES)

    def test_unterminated_last_line_is_shown(self) -> None:
        self.append(b"done\nloading...")
        self.assertEqual(self.text(f"/services/{ALPHA}/logs"), "done\nloading...")

    def test_markup_and_carriage_returns(self) -> None:
        self.append(b"<b>x</b>\r10%\r20%\r\n")
        self.assertEqual(self.text(f"/services/{ALPHA}/logs"), "<b>x</b>\n10%\n20%\n")

    def test_missing_file_is_empty(self) -> None:
        self.assertEqual(self.text(f"/services/{QWEN_PATH}/logs"), "")

    def test_unreadable_file_is_a_json_error(self) -> None:
        """A log that cannot be read (here a directory) is a JSON error, not a traceback."""
        os.makedirs(self.path)
        for query in ["", "?follow=1"]:
            error = self.client.json("GET", f"/services/{ALPHA}/logs{query}", 500)
            self.assertEqual(
                error, {"error": f"cannot read the log file {self.path}: Is a directory"}
            )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_tail_is_400(self) -> None:
        for value in ["x", "-1", "1.5"]:
            error = self.client.json("GET", f"/services/{ALPHA}/logs?tail={value}", 400)
            self.assertEqual(error, {"error": "tail must be a whole number of lines"})

    def test_unknown_service_is_404(self) -> None:
        self.client.json("GET", "/services/nope/logs", 404)
        self.client.json("GET", "/services/nope/logs?follow=1", 404)

    def test_follow(self) -> None:
        self.append(b"one\ntwo\nthr")
        stream = self.client.stream(f"/services/{ALPHA}/logs?tail=1&follow=1")
        self.assertEqual(
            stream.response.headers.getRawHeaders("content-type"),
            ["text/event-stream; charset=utf-8"],
        )
        self.assertEqual(stream.messages(), [("lines", "two")])
        self.append(b"ee\nfour\n\nfive\n")
        self.clock.advance(0.5)
        self.assertEqual(stream.messages()[1:], [("lines", "three\nfour\n\nfive")])
        stream.leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_follow_missing_file_waits_for_it(self) -> None:
        stream = self.client.stream(f"/services/{ALPHA}/logs?follow=1")
        self.clock.advance(2)
        self.assertEqual(stream.messages(), [])
        self.append(b"started\n")
        self.clock.advance(0.5)
        self.assertEqual(stream.messages(), [("lines", "started")])
        stream.leave()

    def test_follow_truncation(self) -> None:
        self.append(b"old 1\nold 2\n")
        stream = self.client.stream(f"/services/{ALPHA}/logs?follow=true")
        with open(self.path, "wb") as f:
            f.write(b"fresh\n")
        self.clock.advance(0.5)
        self.assertEqual(
            stream.messages(), [("lines", "old 1\nold 2"), ("reset", ""), ("lines", "fresh")]
        )
        stream.leave()

    def test_follow_keepalive(self) -> None:
        stream = self.client.stream(f"/services/{ALPHA}/logs?follow=1")
        self.clock.advance(15)
        self.assertEqual(stream.messages(), [("comment", "keepalive")])
        stream.leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])
