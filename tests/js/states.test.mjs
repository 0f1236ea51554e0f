// The service states of the dashboard (states.js): labels, usage kinds and
// the buttons of each state.  (tests/test_dashboard_js.py checks that the
// states equal lmproxy.interfaces.ServiceState.)

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  SERVICE_STATES,
  STATE_LABELS,
  actionButtons,
  stateLabel,
  usageKind,
} from "../../lmproxy/manage/dashboard/states.js";

test("every state has a label, and only the states do", () => {
  assert.deepEqual(Object.keys(STATE_LABELS), [...SERVICE_STATES]);
  assert.equal(stateLabel("waiting_for_resources"), "Waiting for resources");
});

test("an unknown state shows as it is named", () => {
  assert.equal(stateLabel("hibernating"), "hibernating");
  assert.equal(stateLabel("constructor"), "constructor");
});

test("the states cannot be changed by a module that imports them", () => {
  assert.throws(() => SERVICE_STATES.push("x"), TypeError);
});

test("usage is reserved while starting, wanted while waiting, held otherwise", () => {
  assert.equal(usageKind("starting"), "reserved");
  assert.equal(usageKind("waiting_for_resources"), "wanted");
  for (const state of ["running", "stopping", "stopped", undefined]) {
    assert.equal(usageKind(state), "held");
  }
});

test("a stopped service offers Start, any other Stop", () => {
  for (const state of SERVICE_STATES) {
    const { start, stop } = actionButtons(state, null);
    assert.equal(start.hidden, state !== "stopped", state);
    assert.equal(stop.hidden, state === "stopped", state);
    assert.equal(start.text, "Start");
    assert.equal(stop.text, "Stop");
  }
});

test("a stopping service's Stop is disabled", () => {
  assert.equal(actionButtons("stopping", null).stop.disabled, true);
  assert.equal(actionButtons("running", null).stop.disabled, false);
});

test("while an action runs, its button says so and both are disabled", () => {
  // The start of a stopped service: its row says "Starting…" until the API answers,
  // even after the state changed under it.
  const starting = actionButtons("starting", "start");
  assert.deepEqual(starting.start, { hidden: false, disabled: true, text: "Starting…" });
  assert.equal(starting.stop.disabled, true);
  const stopping = actionButtons("stopped", "stop");
  assert.deepEqual(stopping.stop, { hidden: false, disabled: true, text: "Stopping…" });
  assert.equal(stopping.start.disabled, true);
});
