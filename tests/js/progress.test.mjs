// The progress of a start (progress.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { startProgress } from "../../lmproxy/manage/dashboard/progress.js";

const NOW = Date.parse("2026-12-02T07:00:10.000Z");
const starting = (extra) => ({
  status: "starting",
  starting_since: "2026-12-02T07:00:06.000+00:00",
  start_estimate_seconds: 12,
  ...extra,
});

test("none unless it starts", () => {
  assert.equal(startProgress({ status: "running", starting_since: null }, NOW), null);
  assert.equal(startProgress(starting({ starting_since: null }), NOW), null);
});

test("so far, against the learned estimate", () => {
  assert.deepEqual(startProgress(starting(), NOW), {
    text: "starting: 4 s of about 12 s (learned)",
    fraction: 4 / 12,
  });
});

test("longer than usual: the bar stays short of its end", () => {
  assert.deepEqual(startProgress(starting({ start_estimate_seconds: 2.4 }), NOW), {
    text: "starting for 4 s, longer than usual (about 2 s)",
    fraction: 0.99,
  });
});

test("the first start has no estimate", () => {
  assert.deepEqual(startProgress(starting({ start_estimate_seconds: null }), NOW), {
    text: "starting for 4 s (its first start here: no estimate yet)",
    fraction: null,
  });
});
