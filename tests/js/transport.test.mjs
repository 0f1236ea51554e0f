// The link to lmproxy (transport.js): the stream, polling while it is down,
// the banner state, reconnects, and the lock while the API wants a key, on a
// fake clock, EventSource and fetch.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LINK_STATES,
  Link,
  POLL_MS,
  STREAM_RETRY_MS,
  nextLinkState,
} from "../../lmproxy/manage/dashboard/transport.js";
import { FakeClock, FakeEventSource, FakeFetch, settle } from "./fakes.mjs";

const DOC = { services: [], resources: {} };

function harness() {
  const clock = new FakeClock();
  const fetcher = new FakeFetch();
  const streams = [];
  const messages = [];
  const states = [];
  const link = new Link({
    openStream: (url) => {
      const stream = new FakeEventSource(url);
      streams.push(stream);
      return stream;
    },
    fetchStatus: fetcher.fetch,
    onMessage: (event, data) => messages.push([event, data]),
    onState: (state, previous) => states.push([previous, state]),
    clock,
  });
  return { clock, fetcher, streams, messages, states, link, stream: () => streams.at(-1) };
}

// A link that is live, its stream then broken: it polls.
async function polling() {
  const h = harness();
  h.link.start();
  h.stream().emit("status", DOC);
  h.stream().fail();
  h.fetcher.answer(DOC);
  await settle();
  assert.equal(h.link.state, "polling");
  return h;
}

test("the table: every state knows every input", () => {
  const inputs = [
    "streamStatus",
    "streamFailed",
    "pollSucceeded",
    "pollFailed",
    "locked",
    "unlocked",
  ];
  const table = Object.fromEntries(
    LINK_STATES.map((s) => [s, inputs.map((i) => nextLinkState(s, i))]),
  );
  assert.deepEqual(table, {
    connecting: ["live", "polling", null, null, "locked", null],
    live: ["live", "polling", null, null, "locked", null],
    polling: ["live", "polling", "polling", "down", "locked", null],
    down: ["live", "down", "polling", "down", "locked", null],
    locked: [null, null, null, null, null, "connecting"],
  });
  assert.equal(nextLinkState("live", "nonsense"), null);
  assert.equal(nextLinkState("nonsense", "pollFailed"), null);
});

test("the stream's status event makes the link live", () => {
  const h = harness();
  h.link.start();
  assert.equal(h.link.state, "connecting");
  assert.equal(h.stream().url, "/events");
  h.stream().emit("status", DOC);
  assert.equal(h.link.state, "live");
  assert.deepEqual(h.messages, [["status", DOC]]);
  assert.deepEqual(h.states, [["connecting", "live"]]);
  assert.equal(h.clock.pending(), 0);
  assert.equal(h.fetcher.calls.length, 0);
});

test("live, every event of the stream is passed on, parsed", () => {
  const h = harness();
  h.link.start();
  h.stream().emit("status", DOC);
  h.stream().emit("service", { name: "a", status: "running" });
  h.stream().emit("resource", { name: "VRAM" });
  h.stream().emit("start_finished", { service: "a", seconds: 1, succeeded: true });
  h.stream().emit("evicted", { service: "a" });
  assert.deepEqual(
    h.messages.map(([event]) => event),
    ["status", "service", "resource", "start_finished", "evicted"],
  );
  assert.deepEqual(h.messages[1][1], { name: "a", status: "running" });
});

test("the stream breaks: polling at once, every second", async () => {
  const h = harness();
  h.link.start();
  h.stream().emit("status", DOC);
  h.stream().fail();
  assert.equal(h.stream().closed, true, "not the browser's own reconnects");
  assert.equal(h.link.state, "polling");
  assert.equal(h.fetcher.calls.length, 1, "a poll at once");
  const polled = { services: [{ name: "polled" }], resources: {} };
  h.fetcher.answer(polled);
  await settle();
  assert.equal(h.link.state, "polling");
  assert.deepEqual(h.messages.at(-1), ["status", polled]);
  h.clock.advance(POLL_MS - 1);
  assert.equal(h.fetcher.calls.length, 0);
  h.clock.advance(1);
  assert.equal(h.fetcher.calls.length, 1, "the next poll a second later");
});

test("a failed poll: down (the banner); a good one: polling again", async () => {
  const h = await polling();
  h.clock.advance(POLL_MS);
  h.fetcher.fail();
  await settle();
  assert.equal(h.link.state, "down");
  h.clock.advance(POLL_MS);
  h.fetcher.fail();
  await settle();
  assert.equal(h.link.state, "down");
  h.clock.advance(POLL_MS);
  h.fetcher.answer(DOC);
  await settle();
  assert.equal(h.link.state, "polling");
  assert.deepEqual(h.states, [
    ["connecting", "live"],
    ["live", "polling"],
    ["polling", "down"],
    ["down", "polling"],
  ]);
});

test("lmproxy unreachable from the start: connecting, then down", async () => {
  const h = harness();
  h.link.start();
  h.stream().fail();
  h.fetcher.fail();
  await settle();
  assert.equal(h.link.state, "down");
  assert.deepEqual(h.messages, []);
});

test("while polling, the stream is tried again every five seconds", async () => {
  const h = await polling();
  const answerPolls = async (ms) => {
    for (let t = 0; t < ms; t += POLL_MS) {
      h.clock.advance(POLL_MS);
      h.fetcher.fail();
      await settle();
    }
  };
  assert.equal(h.streams.length, 1);
  await answerPolls(STREAM_RETRY_MS);
  assert.equal(h.streams.length, 2, "one retry after five seconds");
  assert.equal(h.link.state, "down");
  h.stream().fail();
  assert.equal(h.link.state, "down", "a failed retry changes nothing");
  assert.equal(h.fetcher.calls.length, 0, "and polls no more than every second");
  await answerPolls(STREAM_RETRY_MS);
  assert.equal(h.streams.length, 3);
});

test("the stream back: live, and the polls stop", async () => {
  const h = await polling();
  h.clock.advance(STREAM_RETRY_MS);
  assert.equal(h.streams.length, 2);
  // A poll is on its way when the stream comes back.
  assert.equal(h.fetcher.calls.length, 1);
  h.stream().emit("status", DOC);
  assert.equal(h.link.state, "live");
  assert.equal(h.clock.pending(), 0, "no poll, no retry");
  const before = h.messages.length;
  h.fetcher.answer({ stale: true });
  await settle();
  assert.equal(h.messages.length, before, "a poll that ends after the stream came back is dropped");
  assert.equal(h.link.state, "live");
  h.clock.advance(10 * STREAM_RETRY_MS);
  assert.equal(h.fetcher.calls.length, 0);
  assert.equal(h.streams.length, 2);
});

test("live again, a break starts it all over", async () => {
  const h = await polling();
  h.clock.advance(STREAM_RETRY_MS);
  h.fetcher.answer(DOC);
  h.stream().emit("status", DOC);
  await settle();
  h.stream().fail();
  assert.equal(h.link.state, "polling");
  assert.equal(h.fetcher.calls.length, 1);
});

test("stop: the stream closed, no timers, late answers ignored", async () => {
  const h = await polling();
  h.clock.advance(POLL_MS);
  h.link.stop();
  assert.equal(h.clock.pending(), 0);
  const before = [h.messages.length, h.states.length];
  h.fetcher.answer(DOC);
  await settle();
  assert.deepEqual([h.messages.length, h.states.length], before);
  const live = harness();
  live.link.start();
  live.link.stop();
  assert.equal(live.stream().closed, true);
});

test("locked: the stream closed, no polls, stale news dropped, until unlocked", async () => {
  const h = await polling();
  h.clock.advance(POLL_MS);
  assert.equal(h.fetcher.calls.length, 1, "a poll on its way");
  const stream = h.stream();
  h.link.lock();
  assert.equal(h.link.state, "locked");
  assert.deepEqual(h.states.at(-1), ["polling", "locked"]);
  assert.equal(h.clock.pending(), 0, "no poll, no retry");
  const before = h.messages.length;
  h.fetcher.answer(DOC);
  await settle();
  stream.emit("status", DOC);
  assert.equal(h.messages.length, before, "news of before the lock is dropped");
  const changes = h.states.length;
  h.link.lock();
  assert.equal(h.states.length, changes, "locked twice is locked once");
  h.clock.advance(10 * STREAM_RETRY_MS);
  assert.deepEqual([h.streams.length, h.fetcher.calls.length], [1, 0]);

  h.link.unlock();
  assert.equal(h.link.state, "connecting");
  assert.deepEqual(h.states.at(-1), ["locked", "connecting"]);
  assert.equal(h.streams.length, 2, "the stream again");
  h.stream().emit("status", DOC);
  assert.equal(h.link.state, "live");
});

test("locked while connecting; a failed stream after unlock polls as at first", async () => {
  const h = harness();
  h.link.start();
  h.link.lock();
  assert.equal(h.stream().closed, true);
  h.link.unlock();
  h.stream().fail();
  assert.equal(h.link.state, "polling");
  assert.equal(h.fetcher.calls.length, 1, "a poll at once");
  h.link.unlock();
  assert.equal(h.streams.length, 2, "unlock when not locked changes nothing");
});
