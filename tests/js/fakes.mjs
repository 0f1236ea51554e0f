// Fakes for the dashboard's unit tests: a clock whose time the test moves, an
// EventSource the test speaks through, fetches the test answers, and a small
// DOM (only what the views use: elements, text, attributes, classes, styles,
// insertBefore and friends), so that node can run the views without a
// browser.  The real browser runs them in tests/test_dashboard_browser.py.

/** Timers that fire only when the test moves the time on. */
export class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
  }

  setTimeout(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.now + ms, callback });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Move the time on by `ms`, firing the timers that come due, in order. */
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.timers]
        .filter(([, t]) => t.at <= until)
        .sort((a, b) => a[1].at - b[1].at);
      if (due.length === 0) break;
      const [id, timer] = due[0];
      this.timers.delete(id);
      this.now = timer.at;
      timer.callback();
    }
    this.now = until;
  }

  /** How many timers wait. */
  pending() {
    return this.timers.size;
  }
}

/** One EventSource; every one opened is kept in `FakeEventSource.opened`. */
export class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.listeners = new Map();
    this.onerror = null;
    this.closed = false;
  }

  addEventListener(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(listener);
  }

  close() {
    this.closed = true;
  }

  /** The server sends an event (data as an object, sent as JSON). */
  emit(name, data) {
    if (this.closed) return;
    for (const listener of this.listeners.get(name) || []) listener({ data: JSON.stringify(data) });
  }

  /** The connection failed or broke. */
  fail() {
    if (!this.closed && this.onerror) this.onerror(new Error("gone"));
  }
}

/** A fetch of /status whose every call the test answers or fails. */
export class FakeFetch {
  constructor() {
    this.calls = [];
    this.fetch = () =>
      new Promise((resolve, reject) => {
        this.calls.push({ resolve, reject });
      });
  }

  /** Answer the oldest open call. */
  answer(document) {
    this.calls.shift().resolve(document);
  }

  /** Fail the oldest open call. */
  fail() {
    this.calls.shift().reject(new Error("connection refused"));
  }
}

/**
 * A fetch of event streams, or of anything: each call waits until the test
 * answers it (`respond`), then the test writes the body as it likes.
 */
export class FakeStreamFetch {
  constructor() {
    this.calls = [];
    this.fetch = (url, init = {}) =>
      new Promise((resolve, reject) => {
        const call = { url, init, resolve, reject, aborted: false, body: null };
        this.calls.push(call);
        init.signal?.addEventListener("abort", () => {
          call.aborted = true;
          reject(init.signal.reason);
          call.body?.error(init.signal.reason);
        });
      });
  }

  /**
   * Answer a call (the last one by default) with a body the test writes.
   * @returns {{write: (text: string) => void, bytes: (b: Uint8Array) => void,
   *     end: () => void, fail: () => void}}
   */
  respond({ status = 200, type = "text/event-stream; charset=utf-8", call } = {}) {
    const answered = call ?? this.calls.at(-1);
    const body = new ReadableStream({
      start(controller) {
        answered.body = controller;
      },
    });
    answered.resolve(new Response(body, { status, headers: { "content-type": type } }));
    const encoder = new TextEncoder();
    return {
      write: (text) => answered.body.enqueue(encoder.encode(text)),
      bytes: (b) => answered.body.enqueue(b),
      end: () => answered.body.close(),
      fail: () => answered.body.error(new Error("connection reset")),
    };
  }

  /** The last call fails as a refused connection does. */
  refuse() {
    this.calls.at(-1).reject(new TypeError("fetch failed"));
  }
}

/** Let promise callbacks run. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

// The DOM -------------------------------------------------------------------

class FakeNode {
  constructor() {
    this.parentNode = null;
    this.childNodes = [];
  }

  get firstChild() {
    return this.childNodes[0] ?? null;
  }

  get nextSibling() {
    if (!this.parentNode) return null;
    const siblings = this.parentNode.childNodes;
    return siblings[siblings.indexOf(this) + 1] ?? null;
  }

  get textContent() {
    return this.childNodes.map((c) => c.textContent).join("");
  }

  set textContent(text) {
    this.replaceChildren(String(text));
  }

  insertBefore(node, reference) {
    if (reference !== null && reference.parentNode !== this) throw new Error("not a child");
    node.remove();
    const at = reference === null ? this.childNodes.length : this.childNodes.indexOf(reference);
    this.childNodes.splice(at, 0, node);
    node.parentNode = this;
    this.moves = (this.moves || 0) + 1;
    return node;
  }

  append(...nodes) {
    for (const node of nodes) {
      this.insertBefore(typeof node === "string" ? new FakeText(node) : node, null);
    }
  }

  replaceChildren(...nodes) {
    for (const child of [...this.childNodes]) child.remove();
    this.append(...nodes);
  }

  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.childNodes;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }
}

class FakeText extends FakeNode {
  constructor(text) {
    super();
    this.data = text;
  }

  get textContent() {
    return this.data;
  }

  set textContent(text) {
    this.data = String(text);
  }
}

class FakeClassList {
  constructor(element) {
    this.element = element;
  }

  names() {
    return this.element.className.split(/\s+/).filter(Boolean);
  }

  contains(name) {
    return this.names().includes(name);
  }

  toggle(name, force = !this.contains(name)) {
    const others = this.names().filter((n) => n !== name);
    this.element.className = (force ? [...others, name] : others).join(" ");
    return force;
  }

  add(name) {
    this.toggle(name, true);
  }

  remove(name) {
    this.toggle(name, false);
  }
}

export class FakeElement extends FakeNode {
  constructor(tag) {
    super();
    this.tagName = tag.toUpperCase();
    this.className = "";
    this.attributes = new Map();
    this.style = {};
    this.dataset = {};
    this.hidden = false;
    this.title = "";
    this.classList = new FakeClassList(this);
    this.listeners = new Map();
  }

  get children() {
    return this.childNodes.filter((c) => c instanceof FakeElement);
  }

  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }

  getAttribute(name) {
    return this.attributes.get(name) ?? null;
  }

  removeAttribute(name) {
    this.attributes.delete(name);
  }

  addEventListener(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(listener);
  }

  querySelectorAll() {
    return [];
  }

  /** Every element below this one (depth first) that `test` accepts. */
  findAll(test) {
    const found = [];
    for (const child of this.children) {
      if (test(child)) found.push(child);
      found.push(...child.findAll(test));
    }
    return found;
  }
}

/** A document that makes fake elements; install it as globalThis.document. */
export const fakeDocument = {
  createElement: (tag) => new FakeElement(tag),
};
