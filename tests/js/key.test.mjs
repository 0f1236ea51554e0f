// The management key (key.js) and its form (keyform.js): the key in the
// tab's sessionStorage and on every request, a 401 that asks for it again,
// and the form on the fake DOM, which never writes the key into the page.

import assert from "node:assert/strict";
import { test } from "node:test";

import { KEY_ITEM, ManagementKey, refusal, sendable } from "../../lmproxy/manage/dashboard/key.js";
import { KeyForm } from "../../lmproxy/manage/dashboard/keyform.js";
import { FakeElement } from "./fakes.mjs";

/** sessionStorage's methods over a Map. */
class FakeStorage {
  constructor(items = {}) {
    this.items = new Map(Object.entries(items));
  }

  getItem(name) {
    return this.items.get(name) ?? null;
  }

  setItem(name, value) {
    this.items.set(name, String(value));
  }

  removeItem(name) {
    this.items.delete(name);
  }
}

const json = (status, body) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

// A ManagementKey whose fetch answers from `answers` (a status and body, in
// turn) and keeps what it was asked.
function managed({ storage = new FakeStorage(), answers = [] } = {}) {
  const sent = [];
  const refused = [];
  const key = new ManagementKey({
    storage,
    fetch: async (url, init) => {
      sent.push({ url, init, authorization: init.headers.get("Authorization") });
      const [status, body] = answers.shift() ?? [200, {}];
      return json(status, body);
    },
    onRefused: (message, wrong) => refused.push(wrong ? `wrong: ${message}` : message),
  });
  return { key, sent, refused, storage };
}

test("no key: requests go as they are, and a 200 is no news", async () => {
  const { key, sent, refused } = managed();
  const response = await key.fetch("/status", { cache: "no-store" });
  assert.equal(response.status, 200);
  assert.deepEqual(
    sent.map((s) => [s.url, s.init.cache, s.authorization]),
    [["/status", "no-store", null]],
  );
  assert.deepEqual(refused, []);
});

test("a 401 tells the server's reason; the caller still gets the response", async () => {
  const { key, refused } = managed({ answers: [[401, { error: "a management key is needed" }]] });
  const response = await key.fetch("/events");
  assert.deepEqual(refused, ["a management key is needed"]);
  assert.equal(response.status, 401);
  assert.deepEqual(await response.json(), { error: "a management key is needed" });
});

test("the key: in sessionStorage, sent as a bearer token with the other headers", async () => {
  const { key, sent, storage } = managed();
  key.set("s3cret key");
  assert.equal(storage.getItem(KEY_ITEM), "s3cret key");
  await key.fetch("/events", { headers: { Accept: "text/event-stream" }, method: "POST" });
  assert.equal(sent[0].authorization, "Bearer s3cret key");
  assert.equal(sent[0].init.headers.get("Accept"), "text/event-stream");
  assert.equal(sent[0].init.method, "POST");
  assert.equal(sent[0].url, "/events", "never in the URL");
});

test("a reload finds the key of the tab", async () => {
  const { key, sent } = managed({ storage: new FakeStorage({ [KEY_ITEM]: "kept" }) });
  assert.equal(key.get(), "kept");
  await key.fetch("/status");
  assert.equal(sent[0].authorization, "Bearer kept");
});

test("a wrong key is forgotten and asked for again", async () => {
  const { key, refused, storage } = managed({ answers: [[401, { error: "wrong key" }]] });
  key.set("wrong");
  await key.fetch("/status");
  assert.deepEqual(refused, ["wrong: wrong key"]);
  assert.equal(key.get(), null);
  assert.equal(storage.getItem(KEY_ITEM), null);
});

test("a late 401 to an older key is no news: the new key stays", async () => {
  let answer;
  const refused = [];
  const key = new ManagementKey({
    storage: new FakeStorage(),
    fetch: () => new Promise((resolve) => (answer = resolve)),
    onRefused: (message) => refused.push(message),
  });
  key.set("old");
  const request = key.fetch("/status");
  key.set("new");
  answer(json(401, { error: "wrong key" }));
  await request;
  assert.deepEqual(refused, []);
  assert.equal(key.get(), "new");
});

test("without storage, or when it refuses, the key lives in memory", async () => {
  const refusing = {
    getItem() {
      throw new Error("SecurityError");
    },
    setItem() {
      throw new Error("QuotaExceededError");
    },
    removeItem() {
      throw new Error("SecurityError");
    },
  };
  for (const storage of [null, refusing]) {
    const { key, sent } = managed({ storage });
    assert.equal(key.get(), null);
    key.set("memory");
    await key.fetch("/status");
    assert.equal(sent[0].authorization, "Bearer memory");
    key.set(null);
    assert.equal(key.get(), null);
  }
});

test("refusal: the error message, else the status", async () => {
  assert.equal(await refusal(json(401, { error: "no key" })), "no key");
  const fallback = "lmproxy asks for its management key (HTTP 401).";
  assert.equal(await refusal(json(401, { error: 3 })), fallback);
  assert.equal(await refusal(new Response("<html>", { status: 401 })), fallback);
});

test("sendable: what a header can carry", () => {
  assert.equal(sendable("sk-abc_123.XYZ ~!"), true);
  assert.equal(sendable("two\nlines"), false);
  assert.equal(sendable("café"), false, "sent as Latin-1, never matches");
  assert.equal(sendable("euro€"), false);
});

// The form --------------------------------------------------------------

function form() {
  const parts = {
    root: new FakeElement("body"),
    panel: new FakeElement("section"),
    form: new FakeElement("form"),
    input: new FakeElement("input"),
    message: new FakeElement("p"),
  };
  parts.panel.hidden = true;
  parts.input.value = "";
  parts.panel.append(parts.form);
  parts.form.append(parts.message, parts.input);
  const keys = [];
  const view = new KeyForm({ ...parts, onKey: (key) => keys.push(key) });
  const submit = () => {
    let prevented = false;
    for (const listener of parts.form.listeners.get("submit")) {
      listener({ preventDefault: () => (prevented = true) });
    }
    return prevented;
  };
  return { ...parts, view, keys, submit };
}

test("form: shown with the reason, the page locked", () => {
  const f = form();
  assert.equal(f.panel.hidden, true);
  f.view.show("a management key is needed");
  assert.equal(f.panel.hidden, false);
  assert.equal(f.root.classList.contains("locked"), true);
  assert.equal(f.message.textContent, "a management key is needed");
  assert.equal(f.message.classList.contains("wrong"), false, "no key yet: no error");
  f.input.value = "half typ";
  f.view.show("wrong key", true);
  assert.equal(f.message.textContent, "wrong key");
  assert.equal(f.message.classList.contains("wrong"), true);
  assert.equal(f.input.value, "half typ", "shown again, what is typed stays");
});

test("form: a key typed in goes to onKey, and out of the page", () => {
  const f = form();
  f.view.show("a management key is needed");
  f.input.value = "  s3cret  ";
  assert.equal(f.submit(), true, "nothing is posted");
  assert.deepEqual(f.keys, ["s3cret"]);
  assert.equal(f.input.value, "");
  assert.equal(f.panel.hidden, true);
  assert.equal(f.root.classList.contains("locked"), false);
  assert.equal(f.panel.textContent.includes("s3cret"), false);
});

test("form: an empty key or one no header carries is not sent", () => {
  const f = form();
  f.view.show("a management key is needed");
  f.input.value = "   ";
  f.submit();
  assert.equal(f.message.textContent, "Enter the key.");
  f.input.value = "bad\u20ackey";
  f.submit();
  assert.match(f.message.textContent, /printable ASCII/);
  assert.equal(f.message.textContent.includes("bad"), false, "the key is not repeated");
  assert.deepEqual(f.keys, []);
  assert.equal(f.panel.hidden, false);
});
