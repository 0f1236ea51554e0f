// The timeline's layout (timelinelayout.js): lanes, spans, markers, ticks.

import assert from "node:assert/strict";
import { test } from "node:test";

import { layoutTimeline } from "../../lmproxy/manage/dashboard/timelinelayout.js";

const at = (minutes) => new Date(Date.UTC(2026, 11, 2, 6, 0) + minutes * 60000).toISOString();
const DOC = {
  since: at(0),
  services: [
    {
      name: "a",
      states: [
        { state: "stopped", from: at(0), to: at(30) },
        { state: "starting", from: at(30), to: at(30.001) },
        { state: "running", from: at(30.001), to: null },
      ],
    },
    { name: "b", states: [{ state: "stopped", from: at(0), to: null }] },
  ],
  events: [
    { at: at(45), service: "a", kind: "evicted", reason: null },
    { at: at(50), service: "b", kind: "failed", reason: "exited with status 3" },
  ],
};

test("a lane per service, a rectangle per state shown, the last one to now", () => {
  const { lanes } = layoutTimeline(DOC, 600, Date.parse(at(60)));
  assert.deepEqual(
    lanes.map((lane) => lane.name),
    ["a", "b"],
  );
  const [starting, running] = lanes[0].rects;
  assert.equal(lanes[0].rects.length, 2, "stopped is not drawn");
  assert.equal(starting.state, "starting");
  assert.equal(starting.width, 1, "a short start is a pixel wide");
  assert.equal(running.state, "running");
  assert.ok(Math.abs(running.x + running.width - 600) < 1e-6, "it runs until now");
  assert.deepEqual(lanes[1].rects, []);
});

test("markers sit on their service's lane, at their time", () => {
  const { lanes } = layoutTimeline(DOC, 600, Date.parse(at(60)));
  assert.deepEqual(
    lanes[0].markers.map((m) => [m.kind, m.x]),
    [["evicted", 450]],
  );
  assert.deepEqual(
    lanes[1].markers.map((m) => [m.kind, m.x, m.reason]),
    [["failed", 500, "exited with status 3"]],
  );
});

test("ticks count back from now, closer together on a short span", () => {
  const hour = layoutTimeline(DOC, 600, Date.parse(at(60))).ticks;
  assert.deepEqual(
    hour.map((t) => t.label),
    ["−60 min", "−50 min", "−40 min", "−30 min", "−20 min", "−10 min", "now"],
  );
  assert.equal(hour.at(-1).x, 600);
  const short = layoutTimeline({ ...DOC, since: at(57) }, 300, Date.parse(at(60))).ticks;
  assert.deepEqual(
    short.map((t) => t.label),
    ["−3 min", "−2 min", "−1 min", "now"],
  );
});
