// Keyed lists (keyed.js): rendered again, the node of a key is the same node,
// updated in place, moved only when out of place.  On the fake DOM of fakes.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import { KeyedList } from "../../lmproxy/manage/dashboard/keyed.js";
import { FakeElement } from "./fakes.mjs";

function list() {
  const container = new FakeElement("div");
  const log = [];
  const keyed = new KeyedList(container, {
    create: (key) => {
      log.push(`create ${key}`);
      return { node: new FakeElement("p"), key };
    },
    update: (item, value) => {
      item.node.textContent = value;
    },
    destroy: (item) => log.push(`destroy ${item.key}`),
  });
  const texts = () => container.childNodes.map((n) => n.textContent);
  return { container, keyed, log, texts };
}

test("keyed: created once per key, updated in place", () => {
  const { container, keyed, log, texts } = list();
  keyed.render([["a", "A1"], ["b", "B1"]]);
  const [a, b] = container.childNodes;
  keyed.render([["a", "A2"], ["b", "B2"]]);
  assert.deepEqual(texts(), ["A2", "B2"]);
  assert.equal(container.childNodes[0], a);
  assert.equal(container.childNodes[1], b);
  assert.deepEqual(log, ["create a", "create b"]);
});

test("keyed: a new order moves nodes, no more than needed", () => {
  const { container, keyed, texts } = list();
  keyed.render([["a", "A"], ["b", "B"], ["c", "C"], ["d", "D"]]);
  container.moves = 0;
  keyed.render([["a", "A"], ["b", "B"], ["c", "C"], ["d", "D"]]);
  assert.equal(container.moves, 0, "in place: nothing moves");
  keyed.render([["d", "D"], ["a", "A"], ["b", "B"], ["c", "C"]]);
  assert.deepEqual(texts(), ["D", "A", "B", "C"]);
  assert.equal(container.moves, 1);
});

test("keyed: keys that leave are destroyed and removed, new ones created", () => {
  const { keyed, log, texts } = list();
  keyed.render([["a", "A"], ["b", "B"]]);
  keyed.render([["b", "B"], ["c", "C"]]);
  assert.deepEqual(texts(), ["B", "C"]);
  assert.deepEqual(log, ["create a", "create b", "destroy a", "create c"]);
  assert.equal(keyed.get("a"), undefined);
  keyed.render([]);
  assert.deepEqual(texts(), []);
});

test("keyed: after a given child, the nodes before it left alone", () => {
  const container = new FakeElement("table");
  const head = new FakeElement("thead");
  const empty = new FakeElement("tbody");
  container.append(head, empty, "\n");
  const keyed = new KeyedList(
    container,
    {
      create: () => ({ node: new FakeElement("tbody") }),
      update: (item, value) => {
        item.node.title = value;
      },
    },
    empty,
  );
  keyed.render([["a", "a"], ["b", "b"]]);
  keyed.render([["b", "b"], ["a", "a"]]);
  const [first, second, third, fourth, last] = container.childNodes;
  assert.deepEqual([first, second], [head, empty]);
  assert.deepEqual([third.title, fourth.title], ["b", "a"]);
  assert.equal(last.textContent, "\n");
});
