// Why a service waits (waiting.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { reloadText, waitingText } from "../../lmproxy/manage/dashboard/waiting.js";

const EN = new Intl.NumberFormat("en-US");
const shortage = (extra) => ({
  resource: "VRAM",
  needed: 20000,
  available: 4000,
  held_by: [],
  pinned: [],
  in_use: [],
  stopping: [],
  ...extra,
});

test("nothing when it does not wait", () => {
  assert.equal(waitingText(null, EN), "");
  assert.equal(waitingText(undefined, EN), "");
});

test("what it lacks, who holds it, and why they stay", () => {
  const waiting = {
    since: "2026-12-02T07:00:00.000+00:00",
    resources: [
      shortage({ held_by: ["kept", "busy", "going"], pinned: ["kept"], in_use: ["busy"], stopping: ["going"] }),
    ],
    behind: [],
  };
  assert.equal(
    waitingText(waiting, EN),
    "waits for VRAM: needs 20,000, 4,000 free; held by kept (pinned), busy (in use), going (stopping)",
  );
});

test("a resource not measured yet, several resources, and earlier waiters", () => {
  const waiting = {
    since: "2026-12-02T07:00:00.000+00:00",
    resources: [shortage({ available: null }), shortage({ resource: "RAM", needed: 8, available: 2 })],
    behind: ["alpha"],
  };
  assert.equal(
    waitingText(waiting, EN),
    "waits for VRAM: needs 20,000, not measured yet; RAM: needs 8, 2 free (after alpha)",
  );
});

test("no shortage left: a measurement is awaited", () => {
  assert.equal(
    waitingText({ since: null, resources: [], behind: [] }, EN),
    "waits for a measurement of its resources",
  );
});

test("what a reload left to do, in words", () => {
  assert.equal(reloadText(null), "");
  assert.equal(reloadText(undefined), "");
  assert.match(reloadText("restart"), /^restarts with its new settings once its connections end$/);
  assert.match(reloadText("removal"), /^removed from the config; stops once/);
});
