// The log panel (logs.js) on the fake DOM, with the page's fetch and event
// streams injected (so that they carry the key): following, a reconnect, a
// refusal, and the plain tail.

import assert from "node:assert/strict";
import { test } from "node:test";

import { LogPanel } from "../../lmproxy/manage/dashboard/logs.js";
import { FakeEventSource, FakeStreamFetch, fakeDocument, settle } from "./fakes.mjs";

globalThis.document = fakeDocument;

function panel() {
  const streams = [];
  const fetcher = new FakeStreamFetch();
  const logs = new LogPanel("a/b", {
    fetch: fetcher.fetch,
    openStream: (url) => {
      const stream = new FakeEventSource(url);
      streams.push(stream);
      return stream;
    },
  });
  const state = () => logs.state.textContent;
  const text = () => logs.pre.textContent;
  return { logs, streams, fetcher, state, text };
}

test("logs: followed through the stream the page opens", () => {
  const p = panel();
  p.logs.open();
  assert.deepEqual(
    p.streams.map((s) => s.url),
    ["/services/a%2Fb/logs?tail=200&follow=1"],
  );
  assert.equal(p.state(), "connecting…");
  const [stream] = p.streams;
  stream.onopen();
  assert.equal(p.state(), "following");
  for (const listener of stream.listeners.get("lines")) listener({ data: "one\ntwo" });
  assert.equal(p.text(), "one\ntwo");
  // A reconnect sends the tail again: the panel starts over.
  stream.fail();
  assert.equal(p.state(), "reconnecting…");
  stream.onopen();
  assert.equal(p.text(), "(empty)");
});

test("logs: a refusal of the stream is final, and says its status", () => {
  const p = panel();
  p.logs.open();
  p.streams[0].onerror({ type: "error", status: 401 });
  assert.equal(p.state(), "failed: HTTP 401");
});

test("logs: not following, the tail comes from the page's fetch", async () => {
  const p = panel();
  p.logs.follow.checked = false;
  p.logs.open();
  assert.equal(p.streams.length, 0);
  assert.equal(p.fetcher.calls[0].url, "/services/a%2Fb/logs?tail=200");
  const body = p.fetcher.respond({ type: "text/plain" });
  body.write("x\ny\n");
  body.end();
  await settle();
  assert.equal(p.text(), "x\ny");
  assert.equal(p.state(), "tail");
});
