// The current status as the page knows it (store.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { STORE_EVENTS, Store } from "../../lmproxy/manage/dashboard/store.js";
import { STREAM_EVENTS } from "../../lmproxy/manage/dashboard/transport.js";

const service = (name, status = "stopped", fields = {}) => ({
  name,
  status,
  waiting_connections: 0,
  proxied_connections: 0,
  ...fields,
});
const resource = (name, fields = {}) => ({ name, total: 100, in_use: 0, ...fields });
const STATUS = {
  started_at: "2026-11-26T21:04:06.123+00:00",
  services: [service("zeta", "running", { proxied_connections: 2 }), service("alpha")],
  resources: { VRAM: resource("VRAM"), RAM: resource("RAM") },
};

function recording(now = () => 1000) {
  const store = new Store(now);
  const changes = [];
  store.subscribe((change) => changes.push(change));
  return { store, changes };
}

test("the store applies every event the stream sends", () => {
  assert.deepEqual([...STORE_EVENTS], [...STREAM_EVENTS]);
});

test("a status document replaces everything, in config order", () => {
  const { store, changes } = recording();
  store.apply("status", STATUS);
  assert.deepEqual(store.serviceNames(), ["zeta", "alpha"]);
  assert.deepEqual([...store.resources.keys()], ["VRAM", "RAM"]);
  assert.equal(store.startedAt, STATUS.started_at);
  assert.equal(store.updatedAt, 1000);
  assert.deepEqual(changes, [{ kind: "status" }]);
  store.apply("status", { ...STATUS, services: [service("alpha")], resources: {} });
  assert.deepEqual(store.serviceNames(), ["alpha"]);
  assert.equal(store.resources.size, 0);
});

test("a service event changes that service and keeps the order", () => {
  const { store, changes } = recording();
  store.apply("status", STATUS);
  store.apply("service", service("zeta", "stopping"));
  assert.deepEqual(store.serviceNames(), ["zeta", "alpha"]);
  assert.equal(store.stateOf("zeta"), "stopping");
  assert.deepEqual(changes.at(-1), { kind: "service", name: "zeta" });
});

test("a resource event changes that resource", () => {
  const { store, changes } = recording();
  store.apply("status", STATUS);
  store.apply("resource", resource("RAM", { in_use: 40 }));
  assert.equal(store.resources.get("RAM").in_use, 40);
  assert.deepEqual([...store.resources.keys()], ["VRAM", "RAM"]);
  assert.deepEqual(changes.at(-1), { kind: "resource", name: "RAM" });
});

test("notices are passed on and change nothing", () => {
  let time = 1000;
  const { store, changes } = recording(() => time);
  store.apply("status", STATUS);
  time = 5000;
  const data = { service: "zeta", seconds: 1.5, succeeded: false };
  const change = store.apply("start_finished", data);
  assert.deepEqual(change, { kind: "notice", event: "start_finished", data });
  store.apply("evicted", { service: "zeta" });
  assert.equal(store.updatedAt, 1000);
  assert.equal(store.stateOf("zeta"), "running");
  assert.deepEqual(
    changes.map((c) => c.event),
    [undefined, "start_finished", "evicted"],
  );
});

test("an unknown event is ignored", () => {
  const { store, changes } = recording();
  assert.equal(store.apply("lines", "x"), null);
  assert.deepEqual(changes, []);
  assert.equal(store.updatedAt, null);
});

test("the totals of the summary", () => {
  const store = new Store();
  assert.deepEqual(store.totals(), { services: 0, running: 0, proxied: 0, waiting: 0 });
  store.apply("status", STATUS);
  store.apply("service", service("alpha", "waiting_for_resources", { waiting_connections: 3 }));
  assert.deepEqual(store.totals(), { services: 2, running: 1, proxied: 2, waiting: 3 });
});

test("a listener can stop listening", () => {
  const store = new Store();
  const seen = [];
  const stop = store.subscribe((change) => seen.push(change.kind));
  store.apply("status", STATUS);
  stop();
  store.apply("status", STATUS);
  assert.deepEqual(seen, ["status"]);
});

test("the state of a service the store does not know", () => {
  assert.equal(new Store().stateOf("nobody"), undefined);
});
