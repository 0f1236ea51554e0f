// The current status as the page knows it: services and resources by name,
// kept up to date by the events of /events (and the documents of /status),
// and told to whoever listens, one change at a time.  Pure: no DOM; the
// clock is an argument.
//
// The events (see lmproxy/manage/api.py): "status" (the whole /status
// document), "service" (one service object), "resource" (one resource
// object), "start_finished" ({service, seconds, succeeded}) and "evicted"
// ({service}), which change nothing but are passed on as notices.

/** The events the store applies. */
export const STORE_EVENTS = Object.freeze([
  "status",
  "service",
  "resource",
  "start_finished",
  "evicted",
]);

/**
 * @typedef {{kind: "status"}
 *   | {kind: "service", name: string}
 *   | {kind: "resource", name: string}
 *   | {kind: "notice", event: string, data: object}} Change
 */

export class Store {
  /**
   * @param {() => number} [now] the clock, in milliseconds since the epoch.
   */
  constructor(now = Date.now) {
    this.now = now;
    /** @type {Map<string, object>} services by name, in config order. */
    this.services = new Map();
    /** @type {Map<string, object>} resources by name, in config order. */
    this.resources = new Map();
    /** @type {string | null} when lmproxy started (RFC 3339). */
    this.startedAt = null;
    /** @type {number | null} when the store last had news (ms). */
    this.updatedAt = null;
    this.listeners = new Set();
  }

  /**
   * Call `listener(change, store)` after every change.
   * @param {(change: Change, store: Store) => void} listener
   * @returns {() => void} to stop listening.
   */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Apply one event.
   * @param {string} event one of STORE_EVENTS.
   * @param {object} data its data, parsed.
   * @returns {Change | null} what changed; null for an event it does not know.
   */
  apply(event, data) {
    let change;
    if (event === "status") {
      this.services = new Map((data.services || []).map((s) => [s.name, s]));
      this.resources = new Map(Object.entries(data.resources || {}));
      this.startedAt = data.started_at ?? null;
      change = { kind: "status" };
    } else if (event === "service") {
      this.services.set(data.name, data);
      change = { kind: "service", name: data.name };
    } else if (event === "resource") {
      this.resources.set(data.name, data);
      change = { kind: "resource", name: data.name };
    } else if (event === "start_finished" || event === "evicted") {
      change = { kind: "notice", event, data };
    } else {
      return null;
    }
    if (change.kind !== "notice") this.updatedAt = this.now();
    for (const listener of [...this.listeners]) listener(change, this);
    return change;
  }

  /**
   * Every service's name, in config order.
   * @returns {Array<string>}
   */
  serviceNames() {
    return [...this.services.keys()];
  }

  /**
   * A service's state, if the store knows the service.
   * @param {string} name
   * @returns {string | undefined}
   */
  stateOf(name) {
    return this.services.get(name)?.status;
  }

  /**
   * The figures of the page's summary.
   * @returns {{services: number, running: number, proxied: number, waiting: number}}
   */
  totals() {
    const services = [...this.services.values()];
    return {
      services: services.length,
      running: services.filter((s) => s.status === "running").length,
      proxied: services.reduce((n, s) => n + (s.proxied_connections || 0), 0),
      waiting: services.reduce((n, s) => n + (s.waiting_connections || 0), 0),
    };
  }
}
