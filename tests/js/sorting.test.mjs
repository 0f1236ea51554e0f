// The order of the rows and the remembered choice (sorting.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_SORT,
  SORT_KEYS,
  SORT_STORAGE_KEY,
  columnIndicator,
  directionButton,
  loadSort,
  nextSort,
  parseSort,
  saveSort,
  sortServices,
} from "../../lmproxy/manage/dashboard/sorting.js";

const service = (name, fields = {}) => ({
  name,
  waiting_connections: 0,
  proxied_connections: 0,
  last_used: null,
  ...fields,
});

// In config order, as /status lists them.
const SERVICES = [
  service("zeta", { proxied_connections: 2, last_used: "2026-11-26T20:00:00+00:00" }),
  service("Alpha10", { waiting_connections: 1, last_used: "2026-11-26T21:00:00+00:00" }),
  service("alpha2", { proxied_connections: 1 }),
  service("beta", { last_used: "2026-11-26T19:00:00+00:00" }),
];
const names = (services) => services.map((s) => s.name);

class MemoryStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

const DISABLED = {
  getItem() {
    throw new Error("SecurityError");
  },
  setItem() {
    throw new Error("QuotaExceededError");
  },
};

test("config order, and backwards", () => {
  assert.deepEqual(names(sortServices(SERVICES, { key: "config", dir: 1 })), [
    "zeta",
    "Alpha10",
    "alpha2",
    "beta",
  ]);
  assert.deepEqual(names(sortServices(SERVICES, { key: "config", dir: -1 })), [
    "beta",
    "alpha2",
    "Alpha10",
    "zeta",
  ]);
});

test("by name as people read names: case ignored, numbers by value", () => {
  assert.deepEqual(names(sortServices(SERVICES, { key: "name", dir: 1 })), [
    "alpha2",
    "Alpha10",
    "beta",
    "zeta",
  ]);
  assert.deepEqual(names(sortServices(SERVICES, { key: "name", dir: -1 })), [
    "zeta",
    "beta",
    "Alpha10",
    "alpha2",
  ]);
});

test("by connections, waiting and proxied together; ties by name", () => {
  assert.deepEqual(names(sortServices(SERVICES, { key: "connections", dir: -1 })), [
    "zeta",
    "alpha2",
    "Alpha10",
    "beta",
  ]);
});

test("by last use, never used last when the most recent come first", () => {
  assert.deepEqual(names(sortServices(SERVICES, { key: "last_used", dir: -1 })), [
    "Alpha10",
    "zeta",
    "beta",
    "alpha2",
  ]);
  assert.deepEqual(names(sortServices(SERVICES, { key: "last_used", dir: 1 }))[0], "alpha2");
});

test("sorting leaves its input in config order", () => {
  const input = [...SERVICES];
  sortServices(input, { key: "name", dir: 1 });
  assert.deepEqual(input, SERVICES);
});

test("a new key starts in its default direction; the same key again reverses", () => {
  assert.deepEqual(nextSort(DEFAULT_SORT, "name"), { key: "name", dir: 1 });
  assert.deepEqual(nextSort({ key: "name", dir: 1 }, "name"), { key: "name", dir: -1 });
  assert.deepEqual(nextSort({ key: "name", dir: -1 }, "name"), { key: "name", dir: 1 });
  assert.deepEqual(nextSort({ key: "name", dir: 1 }, "connections"), {
    key: "connections",
    dir: -1,
  });
  assert.deepEqual(nextSort({ key: "name", dir: 1 }, "last_used"), { key: "last_used", dir: -1 });
  assert.deepEqual(nextSort({ key: "name", dir: 1 }, "name", 1), { key: "name", dir: 1 });
});

test("the choice is remembered and read back", () => {
  const storage = new MemoryStorage();
  assert.deepEqual(loadSort(storage), DEFAULT_SORT);
  assert.equal(saveSort(storage, { key: "last_used", dir: -1 }), true);
  assert.equal(storage.getItem(SORT_STORAGE_KEY), '{"key":"last_used","dir":-1}');
  assert.deepEqual(loadSort(storage), { key: "last_used", dir: -1 });
});

test("every offered key can be remembered", () => {
  const storage = new MemoryStorage();
  for (const key of SORT_KEYS) {
    saveSort(storage, { key, dir: -1 });
    assert.deepEqual(loadSort(storage), { key, dir: -1 });
  }
});

test("what is not a choice the page offers reads back as the default", () => {
  for (const text of [
    null,
    "",
    "not json",
    "null",
    "[]",
    '{"key":"name"}',
    '{"key":"name","dir":0}',
    '{"key":"name","dir":"1"}',
    '{"key":"pid","dir":1}',
    '{"key":"__proto__","dir":1}',
  ]) {
    assert.deepEqual(parseSort(text), DEFAULT_SORT, String(text));
  }
});

test("disabled storage: the default, and nothing thrown", () => {
  assert.deepEqual(loadSort(DISABLED), DEFAULT_SORT);
  assert.deepEqual(loadSort(null), DEFAULT_SORT);
  assert.equal(saveSort(DISABLED, { key: "name", dir: 1 }), false);
  assert.equal(saveSort(null, { key: "name", dir: 1 }), false);
});

test("the default cannot be changed through what loadSort returns", () => {
  const sort = loadSort(null);
  sort.key = "name";
  assert.deepEqual(loadSort(null), { key: "config", dir: 1 });
});

test("the headers and the direction button show the choice", () => {
  assert.deepEqual(columnIndicator({ key: "name", dir: 1 }, "name"), {
    ariaSort: "ascending",
    arrow: " ▲",
  });
  assert.deepEqual(columnIndicator({ key: "name", dir: -1 }, "name"), {
    ariaSort: "descending",
    arrow: " ▼",
  });
  assert.deepEqual(columnIndicator({ key: "name", dir: 1 }, "connections"), {
    ariaSort: "none",
    arrow: "",
  });
  assert.equal(directionButton(1).text, "↑");
  assert.equal(directionButton(-1).label, "Descending; reverse");
});
