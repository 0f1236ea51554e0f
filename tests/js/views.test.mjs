// The views (cards.js, services.js and rows.js) on the fake DOM of fakes.mjs:
// rendered again, a card, row, segment or legend entry is the same node,
// updated in place; names are text, never markup.  (A real browser runs them
// in tests/test_dashboard_browser.py.)

import assert from "node:assert/strict";
import { test } from "node:test";

import { ResourcesView } from "../../lmproxy/manage/dashboard/cards.js";
import { ServicesView } from "../../lmproxy/manage/dashboard/services.js";
import { Store } from "../../lmproxy/manage/dashboard/store.js";
import { FakeElement, fakeDocument } from "./fakes.mjs";

// The views use the page's document and location when they build nodes (not
// when they are imported).
globalThis.document = fakeDocument;
globalThis.window = { location: { href: "http://127.0.0.1:7071/" } };

const service = (name, status, fields) => ({
  name,
  status,
  listen_port: "",
  proxied_connections: 0,
  waiting_connections: 0,
  last_used: null,
  service_url: null,
  resource_requirements: {},
  ...fields,
});
const SERVICES = [
  service("zeta", "running", {
    listen_port: "7860",
    proxied_connections: 1,
    service_url: "http://localhost:7860/",
    resource_requirements: { VRAM: 2000 },
  }),
  service("<b>x</b>", "waiting_for_resources", {
    listen_port: "8188",
    waiting_connections: 1,
    service_url: "javascript:alert(1)",
    resource_requirements: { VRAM: 20000 },
  }),
  service("alpha", "starting", { waiting_connections: 2, openai_models: ["alpha"] }),
];
const VRAM = {
  name: "VRAM",
  total: 24000,
  measured: null,
  reserved_by_starting_services: 0,
  in_use: 2000,
  free: 22000,
  usage_by_service: { zeta: 2000, "<b>x</b>": 20000 },
};
const RAM = { ...VRAM, name: "RAM", usage_by_service: {} };

function freshStore() {
  const store = new Store(() => 0);
  store.apply("status", { started_at: null, services: SERVICES, resources: { VRAM, RAM } });
  return store;
}

function resourcesView() {
  const store = freshStore();
  const grid = new FakeElement("div");
  const view = new ResourcesView({ section: new FakeElement("section"), grid, store });
  view.render();
  return { grid, view, store };
}

const byClass = (root, name) => root.findAll((n) => n.classList.contains(name));

test("cards: one per resource, in order, each updated in place", () => {
  const { grid, view, store } = resourcesView();
  const [vram, ram] = grid.childNodes;
  assert.deepEqual(grid.childNodes.map((c) => c.children[0].textContent), ["VRAM", "RAM"]);
  const [segment] = byClass(vram, "segment");
  const legend = byClass(vram, "legend")[0].childNodes.slice();
  assert.equal(segment.style.width, `${(100 * 2000) / 24000}%`);
  const usage = { zeta: 6000, "<b>x</b>": 20000 };
  store.apply("resource", { ...VRAM, in_use: 6000, usage_by_service: usage });
  view.render();
  assert.deepEqual(grid.childNodes, [vram, ram], "the same cards");
  assert.equal(byClass(vram, "segment")[0], segment, "the same segment");
  assert.equal(segment.style.width, "25%");
  assert.deepEqual(byClass(vram, "legend")[0].childNodes, legend, "the same legend entries");
  assert.equal(byClass(vram, "legend-amount")[0].textContent, new Intl.NumberFormat().format(6000));
});

test("cards: a service's state changes its segment and its tag, in place", () => {
  const { grid, view, store } = resourcesView();
  const [vram] = grid.childNodes;
  assert.equal(byClass(vram, "segment").length, 1, "a waiting service has no segment");
  const entry = byClass(vram, "wanted")[0];
  assert.equal(byClass(entry, "tag")[0].textContent, "waiting");
  store.apply("service", { ...SERVICES[1], status: "starting" });
  view.render();
  assert.equal(byClass(vram, "segment").length, 2);
  assert.equal(byClass(vram, "reserved").filter((n) => n.tagName === "LI")[0], entry);
  assert.equal(byClass(entry, "tag")[0].textContent, "starting");
});

test("cards: the names of services are text", () => {
  const { grid } = resourcesView();
  const names = byClass(grid.childNodes[0], "legend-name");
  assert.deepEqual(names.map((n) => n.textContent), ["zeta", "<b>x</b>"]);
  assert.deepEqual(names[1].children, [], "no elements made of the name");
});

test("cards: nobody uses RAM, and says so", () => {
  const { grid } = resourcesView();
  const ram = grid.childNodes[1];
  const [nobody] = byClass(ram, "muted");
  assert.equal(nobody.textContent, "Nobody uses it.");
  assert.equal(nobody.hidden, false);
  assert.equal(byClass(grid.childNodes[0], "muted")[0].hidden, true);
});

function servicesView(now = () => 0) {
  const store = freshStore();
  const table = new FakeElement("table");
  const empty = new FakeElement("tbody");
  table.append(new FakeElement("thead"), empty);
  const sortKey = new FakeElement("select");
  const sortDir = new FakeElement("button");
  const acted = [];
  const view = new ServicesView({
    table,
    empty,
    sortKey,
    sortDir,
    store,
    storage: null,
    act: (name, action) => acted.push([name, action]),
    now,
  });
  view.render();
  const rows = () => table.childNodes.slice(2);
  const label = (row) => byClass(row, "label")[0].textContent;
  return { table, view, rows, label, acted, sortKey, sortDir, store };
}

test("rows: one per service in config order; re-sorted, the same rows", () => {
  const { view, rows, label, sortKey } = servicesView();
  const before = rows();
  assert.deepEqual(before.map(label), ["zeta", "<b>x</b>", "alpha"]);
  view.setSort("name");
  assert.deepEqual(rows().map(label), ["<b>x</b>", "alpha", "zeta"]);
  assert.deepEqual(new Set(rows()), new Set(before));
  assert.equal(sortKey.value, "name");
});

test("rows: a service event updates its row in place", () => {
  const { view, rows, store } = servicesView();
  const [zeta] = rows();
  const counts = byClass(zeta, "count");
  store.apply("service", { ...SERVICES[0], proxied_connections: 0, status: "stopping" });
  view.render();
  assert.equal(rows()[0], zeta);
  assert.equal(zeta.dataset.state, "stopping");
  assert.deepEqual(byClass(zeta, "count"), counts, "the same counters");
  assert.equal(counts[0].classList.contains("zero"), true);
  assert.equal(byClass(zeta, "state")[0].textContent, "Stopping");
});

test("rows: a markup name is text, and a javascript: URL is no link", () => {
  const { rows } = servicesView();
  const markup = rows()[1];
  const [name] = byClass(markup, "service-name");
  assert.equal(name.tagName, "SPAN");
  assert.equal(byClass(markup, "label")[0].textContent, "<b>x</b>");
  // Its only elements are the line breaks it may take after a separator.
  const label = byClass(markup, "label")[0];
  assert.deepEqual(label.children.map((child) => child.tagName), ["WBR"]);
  assert.equal(label.getAttribute("title"), "<b>x</b>");
  const [link] = byClass(rows()[0], "service-name");
  assert.equal(link.tagName, "A");
  assert.equal(link.getAttribute("href"), "http://localhost:7860/");
  assert.equal(link.getAttribute("target"), "_blank");
});

test("rows: a service that leaves loses its row", () => {
  const { view, rows, label, store } = servicesView();
  store.apply("status", { started_at: null, services: [SERVICES[2]], resources: {} });
  view.render();
  assert.deepEqual(rows().map(label), ["alpha"]);
});

test("rows: the buttons ask for their action; a stopped service offers Start", () => {
  const { view, rows, acted, store } = servicesView();
  const [zeta] = rows();
  const button = (name) => byClass(zeta, name)[0];
  assert.equal(button("start").hidden, true);
  button("stop").listeners.get("click")[0]();
  assert.deepEqual(acted, [["zeta", "stop"]]);
  store.apply("service", { ...SERVICES[0], status: "stopped" });
  view.render();
  assert.equal(button("start").hidden, false);
  assert.equal(button("stop").hidden, true);
  view.row("zeta").setBusy("start");
  assert.equal(button("start").textContent, "Starting…");
  assert.equal(button("start").disabled, true);
});

test("rows: the last failed start under its row, counting down, its output as text", () => {
  let now = Date.parse("2026-11-26T21:04:06Z");
  const { view, rows, store } = servicesView(() => now);
  const [zeta] = rows();
  const [failureRow] = byClass(zeta, "failure-row");
  assert.equal(failureRow.hidden, true, "no failure, no line");
  const failure = {
    at: "2026-11-26T21:03:54Z",
    reason: "<b>exited</b>",
    output_tail: ["<i>CUDA error</i>", "out of memory"],
    retryable: true,
    retry_at: "2026-11-26T21:04:11Z",
  };
  store.apply("service", { ...SERVICES[0], failed_starts: 1, last_failure: failure });
  view.render();
  assert.equal(rows()[0], zeta);
  assert.equal(failureRow.hidden, false);
  assert.equal(zeta.classList.contains("has-failure"), true);
  const text = () => byClass(zeta, "failure-text")[0].textContent;
  const retry = byClass(zeta, "failure-retry")[0];
  assert.equal(text(), "failed 12 s ago: <b>exited</b>");
  assert.equal(retry.textContent, " · next try in 5 s");
  const [output] = byClass(zeta, "failure-output");
  assert.equal(output.textContent, "<i>CUDA error</i>\nout of memory");
  assert.deepEqual(output.children, [], "no elements made of the output");
  assert.deepEqual(byClass(zeta, "failure-text")[0].children, []);
  now += 2000;
  view.tick();
  assert.equal(retry.textContent, " · next try in 3 s");
  assert.equal(text(), "failed 14 s ago: <b>exited</b>");
  now += 3000;
  view.tick();
  assert.equal(retry.hidden, true, "the back-off is over");
  store.apply("service", { ...SERVICES[0], last_failure: null });
  view.render();
  assert.equal(failureRow.hidden, true);
  assert.equal(zeta.classList.contains("has-failure"), false);
});
