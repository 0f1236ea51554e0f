// The event streams read with fetch (sse.js): the text/event-stream parser,
// and FetchEventSource against a fake fetch whose body the test writes: its
// events, its reconnects, a refusal, and close.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CLOSED,
  CONNECTING,
  DEFAULT_RETRY_MS,
  FetchEventSource,
  OPEN,
  SseParser,
} from "../../lmproxy/manage/dashboard/sse.js";
import { FakeClock, FakeStreamFetch, settle } from "./fakes.mjs";

function parse(...pieces) {
  const events = [];
  const retries = [];
  const parser = new SseParser(
    (event) => events.push([event.type, event.data]),
    (ms) => retries.push(ms),
  );
  for (const piece of pieces) parser.push(piece);
  return { events, retries, parser };
}

test("parser: events, named or not, end with a blank line", () => {
  const { events } = parse('event: status\ndata: {"a": 1}\n\ndata: plain\n\n');
  assert.deepEqual(events, [
    ["status", '{"a": 1}'],
    ["message", "plain"],
  ]);
});

test("parser: several data lines are one event's lines", () => {
  const { events } = parse("event: lines\ndata: one\ndata: two\ndata:\ndata:  four\n\n");
  assert.deepEqual(events, [["lines", "one\ntwo\n\n four"]]);
});

test("parser: comments (the keepalive) and unknown fields change nothing", () => {
  const { events } = parse(": keepalive\n\nid: 7\nfoo: bar\nevent: reset\n: hi\ndata: \n\n");
  assert.deepEqual(events, [["reset", ""]], "a comment alone is no event");
});

test("parser: an event without data is not dispatched, its name forgotten", () => {
  const { events } = parse("event: status\n\ndata: x\n\n");
  assert.deepEqual(events, [["message", "x"]]);
});

test("parser: retry takes digits only", () => {
  const { retries } = parse("retry: 1000\n\nretry: soon\nretry: 5x\nretry:250\n\n");
  assert.deepEqual(retries, [1000, 250]);
});

test("parser: a field without a colon, and only one space dropped", () => {
  const { events } = parse("data\ndata:x\ndata:  y\n\n");
  assert.deepEqual(events, [["message", "\nx\n y"]]);
});

test("parser: CRLF, CR and LF all end lines, even cut between pieces", () => {
  const { events } = parse("data: a\r\n\r\ndata: b\r\rdata: c\n\n");
  assert.deepEqual(events, [
    ["message", "a"],
    ["message", "b"],
    ["message", "c"],
  ]);
  // A CRLF cut in two is one line end, not two (which would end an event).
  const cut = parse("data: one\r", "\ndata: two\r", "\n\r", "\n");
  assert.deepEqual(cut.events, [["message", "one\ntwo"]]);
  // A CR at the end of a piece ends its line at once.
  const lone = parse("data: x\r\r");
  assert.deepEqual(lone.events, [["message", "x"]]);
});

test("parser: a piece may end anywhere, in a field name or a value", () => {
  const text = 'event: service\ndata: {"name": "a"}\n\n: keepalive\n\nevent: evicted\ndata: 1\n\n';
  const whole = parse(text).events;
  for (let i = 0; i <= text.length; i += 1) {
    assert.deepEqual(parse(text.slice(0, i), text.slice(i)).events, whole, `cut at ${i}`);
  }
  assert.deepEqual(parse(...text).events, whole, "one character at a time");
});

test("parser: reset drops an event left half", () => {
  const { events, parser } = parse("event: lines\ndata: half");
  parser.reset();
  parser.push("\n\ndata: new\n\n");
  assert.deepEqual(events, [["message", "new"]]);
});

// FetchEventSource ----------------------------------------------------------

function source(url = "/events") {
  const clock = new FakeClock();
  const fetcher = new FakeStreamFetch();
  const stream = new FetchEventSource(url, { fetch: fetcher.fetch, clock });
  const seen = [];
  stream.onopen = () => seen.push("open");
  stream.onerror = (event) => seen.push(`error ${event.status}`);
  for (const name of ["status", "lines"]) {
    stream.addEventListener(name, (event) => seen.push(`${event.type} ${event.data}`));
  }
  return { clock, fetcher, stream, seen };
}

test("stream: asks for an event stream, opens, passes its events on", async () => {
  const { fetcher, stream, seen } = source();
  assert.equal(stream.readyState, CONNECTING);
  assert.equal(fetcher.calls.length, 1);
  const [call] = fetcher.calls;
  assert.equal(call.url, "/events");
  assert.equal(call.init.headers.Accept, "text/event-stream");
  assert.equal(call.init.cache, "no-store");
  const body = fetcher.respond();
  await settle();
  assert.equal(stream.readyState, OPEN);
  body.write('retry: 1000\n\nevent: status\ndata: {"services": []}\n\n: keepalive\n\n');
  body.write("event: unknown\ndata: x\n\nevent: lines\ndata: a\ndata: b\n\n");
  await settle();
  assert.deepEqual(seen, ["open", 'status {"services": []}', "lines a\nb"]);
});

test("stream: UTF-8 cut between chunks is decoded whole", async () => {
  const { fetcher, seen } = source();
  const body = fetcher.respond();
  await settle();
  const bytes = new TextEncoder().encode("event: lines\ndata: é€\n\n");
  body.bytes(bytes.slice(0, 22));
  body.bytes(bytes.slice(22));
  await settle();
  assert.deepEqual(seen, ["open", "lines é€"]);
});

test("stream: a broken or ended stream is retried after the server's retry", async () => {
  const { clock, fetcher, stream, seen } = source();
  let body = fetcher.respond();
  await settle();
  body.write("retry: 1000\n\nevent: lines\ndata: half");
  body.fail();
  await settle();
  assert.deepEqual(seen, ["open", "error 0"]);
  assert.equal(stream.readyState, CONNECTING);
  clock.advance(999);
  assert.equal(fetcher.calls.length, 1);
  clock.advance(1);
  assert.equal(fetcher.calls.length, 2, "reconnected after 1 s");
  body = fetcher.respond();
  await settle();
  body.write("event: lines\ndata: again\n\n");
  body.end();
  await settle();
  assert.deepEqual(seen, ["open", "error 0", "open", "lines again", "error 0"]);
  assert.equal(clock.pending(), 1, "and retried again");
});

test("stream: a refused connection is retried, after 3 s until told", async () => {
  const { clock, fetcher, seen } = source();
  fetcher.refuse();
  await settle();
  assert.deepEqual(seen, ["error 0"]);
  clock.advance(DEFAULT_RETRY_MS);
  assert.equal(fetcher.calls.length, 2);
});

test("stream: an answer that is not 200 is final (a 401 among them)", async () => {
  for (const answer of [{ status: 401, type: "application/json" }, { type: "text/html" }]) {
    const { clock, fetcher, stream, seen } = source();
    fetcher.respond(answer);
    await settle();
    assert.equal(stream.readyState, CLOSED);
    assert.deepEqual(seen, [`error ${answer.status ?? 200}`]);
    assert.equal(clock.pending(), 0, "no reconnect");
  }
});

test("stream: close aborts the request, and nothing follows", async () => {
  const { clock, fetcher, stream, seen } = source();
  const body = fetcher.respond();
  await settle();
  stream.close();
  assert.equal(fetcher.calls[0].aborted, true);
  await settle();
  assert.throws(() => body.write("event: status\ndata: late\n\n"));
  assert.deepEqual(seen, ["open"], "no error after close");
  assert.equal(clock.pending(), 0);
  // Closed while connecting, or from onerror: no reconnect either.
  const early = source();
  early.stream.close();
  await settle();
  assert.equal(early.fetcher.calls[0].aborted, true);
  const closing = source();
  closing.stream.onerror = () => closing.stream.close();
  closing.fetcher.refuse();
  await settle();
  assert.equal(closing.clock.pending(), 0);
  assert.equal(closing.stream.readyState, CLOSED);
});

test("stream: a listener that closes the stream hears nothing more", async () => {
  const { fetcher, stream, seen } = source();
  stream.addEventListener("status", () => stream.close());
  const body = fetcher.respond();
  await settle();
  body.write("event: status\ndata: 1\n\nevent: lines\ndata: 2\n\n");
  await settle();
  assert.deepEqual(seen, ["open", "status 1"]);
});
