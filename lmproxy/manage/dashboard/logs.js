// The log panel of a service: its last lines, then, while "Follow" is ticked,
// the new ones as they are written (an event stream on the log's SSE, which
// reconnects by itself).

import { el } from "./dom.js";
import { logUrl } from "./format.js";

/** How many lines a panel asks for when it opens, and how many it keeps. */
export const LOG_TAIL_LINES = 200;
export const LOG_KEEP_LINES = 2000;

export class LogPanel {
  /**
   * @param {string} name the service.
   * @param {object} api how the page talks to lmproxy (with the key).
   * @param {typeof fetch} api.fetch
   * @param {(url: string) => EventSource} api.openStream an EventSource, or
   *     anything that speaks like one (sse.js).
   */
  constructor(name, { fetch, openStream }) {
    Object.assign(this, { name, fetch, openStream });
    this.lines = [];
    this.stream = null;
    this.follow = el("input", { type: "checkbox", class: "follow" });
    this.follow.checked = true;
    this.follow.addEventListener("change", () => this.open());
    this.state = el("span", { class: "log-state" });
    this.pre = el("pre", { class: "log", tabindex: "0" });
    this.node = el(
      "div",
      { class: "log-panel" },
      el(
        "div",
        { class: "log-head" },
        el("span", { class: "log-title" }, "Log of ", el("strong", { text: name })),
        this.state,
        el("label", { class: "follow-label" }, this.follow, "Follow"),
        el(
          "button",
          { type: "button", class: "button small", onclick: () => this.open() },
          "Reload",
        ),
      ),
      this.pre,
    );
  }

  /** Load the tail again, and follow the log if asked to. */
  open() {
    this.close();
    this.lines = [];
    this.show();
    if (this.follow.checked) {
      this.setState("connecting…");
      const stream = this.openStream(logUrl(this.name, LOG_TAIL_LINES, true));
      this.stream = stream;
      // A reconnect sends the tail again: start over rather than repeat it.
      stream.onopen = () => {
        this.lines = [];
        this.show();
        this.setState("following");
      };
      stream.addEventListener("lines", (event) => this.add(event.data.split("\n")));
      stream.addEventListener("reset", () =>
        this.add(["──── the log file was truncated or replaced ────"]),
      );
      // A refusal (status 401, 404...) is final; a broken stream is retried.
      stream.onerror = (event) =>
        this.setState(event.status ? `failed: HTTP ${event.status}` : "reconnecting…");
    } else {
      this.setState("loading…");
      this.fetch(logUrl(this.name, LOG_TAIL_LINES, false))
        .then((response) =>
          response.ok ? response.text() : Promise.reject(new Error(`HTTP ${response.status}`)),
        )
        .then((text) => {
          this.add(text === "" ? [] : text.replace(/\n$/, "").split("\n"));
          this.setState("tail");
        })
        .catch((error) => this.setState(`failed: ${error.message}`));
    }
  }

  /** Stop following. */
  close() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  setState(text) {
    this.state.textContent = text;
  }

  add(lines) {
    const pinned = this.pre.scrollHeight - this.pre.scrollTop - this.pre.clientHeight < 24;
    this.lines.push(...lines);
    if (this.lines.length > LOG_KEEP_LINES) {
      this.lines.splice(0, this.lines.length - LOG_KEEP_LINES);
    }
    this.show();
    if (pinned) this.pre.scrollTop = this.pre.scrollHeight;
  }

  show() {
    this.pre.textContent = this.lines.length ? this.lines.join("\n") : "(empty)";
    this.pre.classList.toggle("is-empty", this.lines.length === 0);
  }
}
