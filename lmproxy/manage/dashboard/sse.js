// Server-Sent Events read with fetch, so that a request can carry the
// management key (EventSource cannot send headers): a line parser of the
// text/event-stream format, and FetchEventSource, which speaks like the
// browser's EventSource (addEventListener, onopen, onerror, close, its
// reconnects) to transport.js and logs.js.  fetch and the timers are
// arguments, so node can test it.

/** The readyState values of EventSource. */
export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 2;

/** How long to wait before a reconnect until the server says ("retry:"). */
export const DEFAULT_RETRY_MS = 3000;

// A line ends with CRLF, LF or CR.
const LINE_END = /\r\n|\n|\r/g;

export class SseParser {
  /**
   * @param {(event: {type: string, data: string}) => void} onEvent told each
   *     event: its name ("message" when none was given) and its data, the
   *     lines of its "data:" fields joined with "\n".
   * @param {(ms: number) => void} [onRetry] told each valid "retry:" field.
   */
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.reset();
  }

  /**
   * Parse the next piece of the stream (decoded text, cut anywhere).
   * @param {string} text
   */
  push(text) {
    if (text === "") return;
    // A CR last in the previous piece ended a line; an LF now is its other half.
    if (this.skipLf && text.startsWith("\n")) text = text.slice(1);
    this.skipLf = false;
    const buffer = this.buffer + text;
    let start = 0;
    for (const match of buffer.matchAll(LINE_END)) {
      const line = buffer.slice(start, match.index);
      start = match.index + match[0].length;
      this.skipLf = match[0] === "\r" && start === buffer.length;
      this.line(line);
    }
    this.buffer = buffer.slice(start);
  }

  /** The stream ended: an event not closed by a blank line is dropped. */
  reset() {
    this.buffer = "";
    this.skipLf = false;
    this.type = "";
    this.data = [];
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // A comment: the server's keepalive.
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
    // "id" and unknown fields: lmproxy sends no ids, nothing else is defined.
  }

  dispatch() {
    const { type, data } = this;
    this.type = "";
    this.data = [];
    if (data.length === 0) return;
    this.onEvent({ type: type || "message", data: data.join("\n") });
  }
}

/** The browser's timers, as the parts that take a clock want them. */
export const BROWSER_CLOCK = {
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (id) => clearTimeout(id),
};

export class FetchEventSource {
  /**
   * Open an event stream at once, like `new EventSource(url)`.
   * @param {string} url
   * @param {object} options
   * @param {typeof fetch} options.fetch makes the request (adds the key).
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.clock]
   */
  constructor(url, { fetch, clock = BROWSER_CLOCK }) {
    Object.assign(this, { url, fetch, clock });
    this.readyState = CONNECTING;
    this.retryMs = DEFAULT_RETRY_MS;
    this.onopen = null;
    this.onerror = null;
    this.listeners = new Map();
    this.controller = null;
    this.timer = null;
    this.parser = new SseParser(
      (event) => this.dispatch(event),
      (ms) => {
        this.retryMs = ms;
      },
    );
    this.connect();
  }

  /**
   * Be told the events of one name.
   * @param {string} type
   * @param {(event: {type: string, data: string}) => void} listener
   */
  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }

  /** End the stream for good: no more events, no reconnect. */
  close() {
    this.readyState = CLOSED;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.controller?.abort();
    this.controller = null;
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    const current = () => this.controller === controller && this.readyState !== CLOSED;
    let response;
    try {
      response = await this.fetch(this.url, {
        headers: { Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller.signal,
      });
    } catch {
      if (current()) this.broken();
      return;
    }
    if (!current()) return;
    const type = response.headers.get("content-type") || "";
    if (response.status !== 200 || !type.startsWith("text/event-stream")) {
      // As EventSource: a refusal (a 401 among them) is final, not retried.
      this.close();
      this.onerror?.({ type: "error", status: response.status });
      return;
    }
    this.readyState = OPEN;
    this.onopen?.({ type: "open" });
    await this.read(response.body);
    if (current()) this.broken();
  }

  async read(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.parser.push(decoder.decode(value, { stream: true }));
      }
    } catch {
      // The connection broke (or close() aborted it): the caller tells.
    }
    this.parser.reset();
  }

  // The connection failed or ended: say so, and try again after `retry`.
  broken() {
    this.readyState = CONNECTING;
    this.controller = null;
    this.onerror?.({ type: "error", status: 0 });
    if (this.readyState === CLOSED) return; // onerror closed it.
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.connect();
    }, this.retryMs);
  }

  dispatch(event) {
    if (this.readyState !== OPEN) return;
    for (const listener of this.listeners.get(event.type) || []) {
      listener(event);
      if (this.readyState !== OPEN) return; // A listener closed the stream.
    }
  }
}
