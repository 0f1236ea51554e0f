// The failure line of a service row (failure.js): when and why its last start
// failed, and the countdown of the back-off after it.

import assert from "node:assert/strict";
import { test } from "node:test";

import { failureLine, secondsUntil } from "../../lmproxy/manage/dashboard/failure.js";

const NOW = Date.parse("2026-11-26T21:04:06.123+00:00");
const at = (seconds) => new Date(NOW + seconds * 1000).toISOString();
const FAILURE = {
  at: at(-12),
  reason: "the server exited with code 1",
  output_tail: ["loading model", "CUDA error: out of memory"],
  retryable: true,
  retry_at: at(4.2),
};

test("no failure, no line", () => {
  assert.equal(failureLine(null, NOW), null);
  assert.equal(failureLine(undefined, NOW), null);
});

test("when and why, the countdown, and the output", () => {
  assert.deepEqual(failureLine(FAILURE, NOW), {
    text: "failed 12 s ago: the server exited with code 1",
    retry: "next try in 5 s",
    tail: ["loading model", "CUDA error: out of memory"],
  });
});

test("the countdown counts down, then is gone", () => {
  const retry = (seconds) => failureLine(FAILURE, NOW + seconds * 1000).retry;
  assert.equal(retry(1), "next try in 4 s");
  assert.equal(retry(4), "next try in 1 s");
  assert.equal(retry(4.2), null);
  assert.equal(retry(60), null);
  const later = failureLine(FAILURE, NOW + 60_000);
  assert.equal(later.text, "failed 1 min ago: the server exited with code 1");
});

test("a back-off that was reset has no countdown", () => {
  const line = failureLine({ ...FAILURE, retry_at: null }, NOW);
  assert.equal(line.retry, null);
  assert.equal(line.text, "failed 12 s ago: the server exited with code 1");
});

test("when retrying cannot help, the countdown says so", () => {
  const line = failureLine({ ...FAILURE, retryable: false }, NOW);
  assert.equal(line.retry, "next try in 5 s (retrying will not help)");
  assert.equal(failureLine({ ...FAILURE, retryable: false, retry_at: null }, NOW).retry, null);
});

test("a failure without output or reason", () => {
  const line = failureLine({ at: at(-1), reason: "", retry_at: null }, NOW);
  assert.deepEqual(line, { text: "failed just now", retry: null, tail: [] });
});

test("secondsUntil: rounded up; none, past or unreadable is null", () => {
  assert.equal(secondsUntil(at(0.001), NOW), 1);
  assert.equal(secondsUntil(at(60), NOW), 60);
  assert.equal(secondsUntil(at(0), NOW), null);
  assert.equal(secondsUntil(at(-3), NOW), null);
  assert.equal(secondsUntil(null, NOW), null);
  assert.equal(secondsUntil("soon", NOW), null);
});
