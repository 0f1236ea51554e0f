// How the page hears from lmproxy: the Server-Sent Events of /events, and
// while that stream is down, /status polled every second, the stream tried
// again every five seconds.  One small state machine; the event stream
// (sse.js's FetchEventSource in the page), fetch and timers are arguments, so
// node can test it.
//
//   connecting --status event--> live       the stream is open and current
//   connecting, live --stream fails--> polling   (poll at once, retry in 5 s)
//   polling --poll fails--> down            lmproxy cannot be reached: banner
//   down --poll succeeds--> polling
//   polling, down --status event--> live    a retried stream is back: no polls
//   any --lock()--> locked                  the API wants a key: nothing runs
//   locked --unlock()--> connecting         a key was given: the stream again
//
// Any other input is stale news (say, a poll that ends after the stream came
// back) and changes nothing: its data is dropped too.

import { BROWSER_CLOCK } from "./sse.js";

/** The states of the link, in the order the page usually meets them. */
export const LINK_STATES = Object.freeze(["connecting", "live", "polling", "down", "locked"]);

/** The events of /events that are passed on (their data parsed as JSON). */
export const STREAM_EVENTS = Object.freeze([
  "status",
  "service",
  "resource",
  "start_finished",
  "evicted",
]);

export const POLL_MS = 1000;
export const STREAM_RETRY_MS = 5000;

// state -> input -> next state.
const TRANSITIONS = Object.freeze({
  connecting: { streamStatus: "live", streamFailed: "polling", locked: "locked" },
  live: { streamStatus: "live", streamFailed: "polling", locked: "locked" },
  polling: {
    streamStatus: "live",
    streamFailed: "polling",
    pollSucceeded: "polling",
    pollFailed: "down",
    locked: "locked",
  },
  down: {
    streamStatus: "live",
    streamFailed: "down",
    pollSucceeded: "polling",
    pollFailed: "down",
    locked: "locked",
  },
  locked: { unlocked: "connecting" },
});

/**
 * The transition table: the state after an input.
 * @param {string} state one of LINK_STATES.
 * @param {"streamStatus" | "streamFailed" | "pollSucceeded" | "pollFailed"
 *     | "locked" | "unlocked"} input
 * @returns {string | null} the next state; null when the input is stale there.
 */
export function nextLinkState(state, input) {
  return TRANSITIONS[state]?.[input] ?? null;
}

export class Link {
  /**
   * @param {object} options
   * @param {(url: string) => EventSource} options.openStream opens /events:
   *     an EventSource, or anything that speaks like one (sse.js).
   * @param {() => Promise<object>} options.fetchStatus the /status document;
   *     rejects when lmproxy cannot be reached or does not answer 200.
   * @param {(event: string, data: object) => void} options.onMessage told
   *     every event of the stream and every polled document (as "status").
   * @param {(state: string, previous: string) => void} [options.onState]
   *     told every change of state.
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.clock]
   * @param {number} [options.pollMs]
   * @param {number} [options.retryMs]
   */
  constructor({
    openStream,
    fetchStatus,
    onMessage,
    onState = () => {},
    clock = BROWSER_CLOCK,
    pollMs = POLL_MS,
    retryMs = STREAM_RETRY_MS,
  }) {
    Object.assign(this, { openStream, fetchStatus, onMessage, onState, clock, pollMs, retryMs });
    this.state = "connecting";
    this.stream = null;
    this.pollTimer = null;
    this.retryTimer = null;
    // Bumped when polling stops: a poll of an older generation is stale.
    this.generation = 0;
    this.closed = false;
  }

  /** Open the stream. */
  start() {
    this._openStream();
  }

  /** Stop until unlock(): the API refused the key (or its absence). */
  lock() {
    this._input("locked");
  }

  /** A key was given: open the stream again. */
  unlock() {
    this._input("unlocked");
  }

  /** Close the stream and stop every timer; later news is ignored. */
  stop() {
    this.closed = true;
    this._stopPolling();
    this._closeStream();
  }

  _input(input) {
    const next = nextLinkState(this.state, input);
    if (next === null || this.closed) return;
    const previous = this.state;
    this.state = next;
    if (next === "live") {
      this._stopPolling();
    } else if (next === "locked") {
      this._stopPolling();
      this._closeStream();
    } else if (next === "connecting") {
      this._openStream();
    } else if (input === "streamFailed") {
      this.retryTimer = this.clock.setTimeout(() => {
        this.retryTimer = null;
        this._openStream();
      }, this.retryMs);
      if (previous === "connecting" || previous === "live") this._poll();
    } else {
      this.pollTimer = this.clock.setTimeout(() => {
        this.pollTimer = null;
        this._poll();
      }, this.pollMs);
    }
    if (next !== previous) this.onState(next, previous);
  }

  _openStream() {
    this._closeStream();
    const stream = this.openStream("/events");
    this.stream = stream;
    for (const name of STREAM_EVENTS) {
      stream.addEventListener(name, (event) => {
        if (this.stream !== stream) return;
        this.onMessage(name, JSON.parse(event.data));
        if (name === "status") this._input("streamStatus");
      });
    }
    stream.onerror = () => {
      if (this.stream !== stream) return;
      // Not the browser's reconnects: the machine decides when to try again.
      this._closeStream();
      this._input("streamFailed");
    };
  }

  _closeStream() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  _poll() {
    const generation = this.generation;
    const current = () => generation === this.generation && !this.closed;
    let request;
    try {
      request = Promise.resolve(this.fetchStatus());
    } catch (error) {
      request = Promise.reject(error);
    }
    request.then(
      (status) => {
        if (!current()) return;
        try {
          this.onMessage("status", status);
        } finally {
          this._input("pollSucceeded");
        }
      },
      () => {
        if (current()) this._input("pollFailed");
      },
    );
  }

  _stopPolling() {
    this.generation += 1;
    for (const timer of [this.pollTimer, this.retryTimer]) {
      if (timer !== null) this.clock.clearTimeout(timer);
    }
    this.pollTimer = null;
    this.retryTimer = null;
  }
}
