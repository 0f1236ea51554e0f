// What a resource card shows (usage.js) and the page's sentences (messages.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LINK_LABELS,
  actionFailed,
  bannerText,
  forceQuestion,
  noticeFor,
  startedText,
} from "../../lmproxy/manage/dashboard/messages.js";
import { LINK_STATES } from "../../lmproxy/manage/dashboard/transport.js";
import { barScale, resourceCard } from "../../lmproxy/manage/dashboard/usage.js";

const EN = new Intl.NumberFormat("en-US");

const VRAM = {
  name: "VRAM",
  total: 24000,
  measured: null,
  reserved_by_starting_services: 9000,
  in_use: 21000,
  free: 3000,
  available: 3000,
  usage_by_service: { zeta: 12000, qwen: 9000, "<b>x</b>": 20000 },
};
const STATES = { zeta: "running", qwen: "starting", "<b>x</b>": "waiting_for_resources" };
const stateOf = (name) => STATES[name];

test("the bar's scale: the total, else available and in use together", () => {
  assert.equal(barScale(VRAM), 24000);
  const measured = { total: null, free: 6000, available: 5000, in_use: 4000 };
  assert.equal(barScale(measured), 9000);
  assert.equal(barScale({ ...measured, available: -200 }), 4000);
  const nothing = { total: null, free: null, available: null, in_use: 0 };
  assert.equal(barScale(nothing), 0);
});

test("a segment per service that holds or reserves, sized on the scale", () => {
  const card = resourceCard(VRAM, stateOf, EN);
  assert.deepEqual(card.segments, [
    { key: "zeta", kind: "held", width: "50%", title: "zeta: 12,000" },
    { key: "qwen", kind: "reserved", width: "37.5%", title: "qwen: 9,000 (starting)" },
  ]);
  assert.equal(card.label, "VRAM: 21,000 in use of 24,000");
});

test("a legend entry per service, the waiting one too, tagged", () => {
  const card = resourceCard(VRAM, stateOf, EN);
  assert.deepEqual(card.legend, [
    { key: "zeta", kind: "held", amount: "12,000", tag: null },
    { key: "qwen", kind: "reserved", amount: "9,000", tag: "starting" },
    { key: "<b>x</b>", kind: "wanted", amount: "20,000", tag: "waiting" },
  ]);
});

test("a segment never overflows the bar", () => {
  const over = { ...VRAM, total: 1000, usage_by_service: { zeta: 5000 } };
  assert.equal(resourceCard(over, stateOf, EN).segments[0].width, "100%");
});

test("no segments on a bar of scale zero", () => {
  const empty = { ...VRAM, total: 0, usage_by_service: { zeta: 0 } };
  const card = resourceCard(empty, stateOf, EN);
  assert.deepEqual(card.segments, []);
  assert.equal(card.legend.length, 1);
});

test("figures: in use, starting when some is reserved, available (full at zero), total", () => {
  const figures = (resource) =>
    resourceCard(resource, stateOf, EN).figures.map((f) => [f.key, f.value, f.full]);
  assert.deepEqual(figures(VRAM), [
    ["In use", "21,000", false],
    ["Starting", "9,000", false],
    ["Available", "3,000", false],
    ["Total", "24,000", false],
  ]);
  assert.deepEqual(figures({ ...VRAM, reserved_by_starting_services: 0, available: 0 }), [
    ["In use", "21,000", false],
    ["Available", "0", true],
    ["Total", "24,000", false],
  ]);
});

test("figures of a measured resource", () => {
  const measured = {
    name: "GPU",
    total: null,
    measured: 7000,
    reserved_by_starting_services: 0,
    in_use: 1000,
    free: 7000,
    available: 7000,
    usage_by_service: {},
  };
  const card = resourceCard(measured, stateOf, EN);
  assert.deepEqual(
    card.figures.map((f) => [f.key, f.value, f.full]),
    [
      ["In use", "1,000", false],
      ["Available", "7,000", false],
      ["Total", "measured", false],
      ["Measured", "7,000", false],
    ],
  );
  assert.deepEqual(card.legend, []);
});

test("notices: a failed start and an eviction; a good start says nothing", () => {
  assert.deepEqual(noticeFor("start_finished", { service: "a", seconds: 3, succeeded: false }), {
    text: "“a” failed to start.",
    kind: "error",
  });
  assert.equal(noticeFor("start_finished", { service: "a", seconds: 3, succeeded: true }), null);
  assert.deepEqual(noticeFor("evicted", { service: "a" }), {
    text: "“a” was stopped to free resources for another service.",
    kind: "info",
  });
  assert.equal(noticeFor("service", { name: "a" }), null);
});

test("the question before a forced stop counts the connections", () => {
  assert.equal(
    forceQuestion("alpha", 1, EN),
    "“alpha” has 1 proxied connection. Stopping it now cuts them off.",
  );
  assert.match(forceQuestion("alpha", 2, EN), /2 proxied connections/);
});

test("a failed action: the API's message, else the status, else the reason", () => {
  assert.equal(actionFailed("start", "a", { error: "no room", status: 503 }), "no room");
  assert.equal(actionFailed("stop", "a", { status: 500 }), "Could not stop “a” (HTTP 500).");
  assert.equal(
    actionFailed("start", "a", { reason: "Failed to fetch" }),
    "Could not start “a”: Failed to fetch",
  );
});

test("the banner tells the age of the last update, if there was one", () => {
  const now = Date.parse("2026-11-26T21:04:06Z");
  assert.equal(bannerText(null, now), "Retrying every second…");
  assert.equal(
    bannerText(now - 42_000, now),
    "Retrying every second… Last update: 42 s ago.",
  );
});

test("every state of the link has a label", () => {
  assert.deepEqual(Object.keys(LINK_LABELS), [...LINK_STATES]);
});

test("the footer's start time, once known", () => {
  assert.equal(startedText(null), "");
  const iso = "2026-11-26T21:04:06.123+00:00";
  assert.equal(startedText(iso), `lmproxy running since ${new Date(iso).toLocaleString()}`);
});
