// Formatting of numbers, ages and URLs (format.js) and service colours (colors.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { PALETTE, serviceColor } from "../../lmproxy/manage/dashboard/colors.js";
import {
  ago,
  formatAmount,
  logUrl,
  namePieces,
  plural,
  safeUrl,
  servicePath,
} from "../../lmproxy/manage/dashboard/format.js";

const EN = new Intl.NumberFormat("en-US");
const DE = new Intl.NumberFormat("de-DE");
const NOW = Date.parse("2026-11-26T21:04:06.123+00:00");
const before = (seconds) => new Date(NOW - seconds * 1000).toISOString();

test("amounts are grouped the locale's way, and none is a dash", () => {
  assert.equal(formatAmount(24000, EN), "24,000");
  assert.equal(formatAmount(24000, DE), "24.000");
  assert.equal(formatAmount(0, EN), "0");
  assert.equal(formatAmount(null, EN), "—");
  assert.equal(formatAmount(undefined, EN), "—");
});

test("plural: one thing, else things", () => {
  assert.equal(plural(1, "proxied connection", EN), "1 proxied connection");
  assert.equal(plural(0, "proxied connection", EN), "0 proxied connections");
  assert.equal(plural(1200, "failed start", EN), "1,200 failed starts");
});

test("ago: never, just now, seconds, minutes, hours and minutes", () => {
  assert.equal(ago(null, NOW), "never");
  assert.equal(ago("", NOW), "never");
  assert.equal(ago(before(0), NOW), "just now");
  assert.equal(ago(before(4.9), NOW), "just now");
  assert.equal(ago(before(5), NOW), "5 s ago");
  assert.equal(ago(before(59.9), NOW), "59 s ago");
  assert.equal(ago(before(60), NOW), "1 min ago");
  assert.equal(ago(before(3599), NOW), "59 min ago");
  assert.equal(ago(before(3600), NOW), "1 h 0 min ago");
  assert.equal(ago(before(86399), NOW), "23 h 59 min ago");
});

test("ago: after a day, the local date and time", () => {
  const iso = before(86400);
  assert.equal(ago(iso, NOW), new Date(iso).toLocaleString());
});

test("ago: a time with a UTC offset other than zero", () => {
  assert.equal(ago("2026-11-26T22:03:06.123+01:00", NOW), "1 min ago");
});

test("ago: a time in the future (clocks differ) is just now", () => {
  assert.equal(ago(before(-30), NOW), "just now");
});

test("ago: not a time", () => {
  assert.equal(ago("yesterday-ish", NOW), "unknown");
});

test("safeUrl: http and https only, made absolute", () => {
  const base = "http://127.0.0.1:7071/";
  assert.equal(safeUrl("http://localhost:8081/", base), "http://localhost:8081/");
  assert.equal(safeUrl("https://example.org/ui?x=1", base), "https://example.org/ui?x=1");
  assert.equal(safeUrl("/ui", base), "http://127.0.0.1:7071/ui");
  assert.equal(safeUrl("javascript:alert(1)", base), null);
  assert.equal(safeUrl(" JavaScript:alert(1)", base), null);
  assert.equal(safeUrl("data:text/html,<b>x</b>", base), null);
  assert.equal(safeUrl("http://[::1", base), null);
  assert.equal(safeUrl(null, base), null);
  assert.equal(safeUrl("", base), null);
});

test("service paths encode the name, slashes too", () => {
  assert.equal(servicePath("Qwen/Qwen2.5-7B", "start"), "/services/Qwen%2FQwen2.5-7B/start");
  assert.equal(servicePath("<b>x</b>", "stop"), "/services/%3Cb%3Ex%3C%2Fb%3E/stop");
  assert.equal(logUrl("a b", 200, false), "/services/a%20b/logs?tail=200");
  assert.equal(logUrl("a", 200, true), "/services/a/logs?tail=200&follow=1");
});

test("colours: the palette in config order, then a stable hash", () => {
  const names = PALETTE.map((_, i) => `s${i}`).concat(["late"]);
  assert.equal(serviceColor("s0", names), PALETTE[0]);
  assert.equal(serviceColor("s9", names), PALETTE[9]);
  const late = serviceColor("late", names);
  assert.match(late, /^hsl\(\d+ 62% 52%\)$/);
  assert.equal(serviceColor("late", names), late);
  assert.equal(serviceColor("unknown", []), serviceColor("unknown", ["other"]));
});

test("names are cut where they may wrap, and nothing is lost", () => {
  assert.deepEqual(namePieces("Qwen/Qwen2.5-7B-Instruct"), ["Qwen/", "Qwen2.", "5-", "7B-", "Instruct"]);
  assert.deepEqual(namePieces("alpha"), ["alpha"]);
  assert.deepEqual(namePieces("a//b"), ["a//", "b"]);
  assert.deepEqual(namePieces("<b>x</b>"), ["<b>x</", "b>"]);
  assert.deepEqual(namePieces(""), []);
  for (const name of ["x-", "-x", "org/model:q4_K_M", "Модель"]) {
    assert.equal(namePieces(name).join(""), name);
  }
});
