// The page's frame: the summary of the top bar, the link indicator, the error
// banner while lmproxy cannot be reached, and the footer's start time.

import { el, setText } from "./dom.js";
import { formatAmount } from "./format.js";
import { LINK_LABELS, bannerText, startedText } from "./messages.js";

export class TopBar {
  /**
   * @param {Document} doc the page, with #summary, #link-state, #link-text,
   *     #banner, #banner-text and #started.
   * @param {() => number} now the clock (ms).
   */
  constructor(doc, now) {
    this.doc = doc;
    this.now = now;
    this.mode = "connecting";
    const byId = (id) => doc.getElementById(id);
    this.summary = byId("summary");
    this.linkState = byId("link-state");
    this.linkText = byId("link-text");
    this.banner = byId("banner");
    this.bannerText = byId("banner-text");
    this.started = byId("started");
    const stat = (label) => {
      const figure = el("b");
      return { node: el("span", { class: "stat" }, figure, ` ${label}`), figure };
    };
    this.stats = { running: stat("running"), proxied: stat("proxied"), waiting: stat("waiting") };
    this.summary.replaceChildren(...Object.values(this.stats).map((s) => s.node));
  }

  /**
   * Show the state of the link (see transport.js); "down" shows the banner.
   * @param {string} mode
   * @param {number | null} updatedAt when the page last had news (ms).
   */
  showLink(mode, updatedAt) {
    this.mode = mode;
    this.linkState.dataset.mode = mode;
    this.linkText.textContent = LINK_LABELS[mode] ?? mode;
    this.banner.hidden = mode !== "down";
    this.doc.body.classList.toggle("stale", mode === "down");
    this.tick(updatedAt);
  }

  /**
   * The banner's age of the last update, again (called every second).
   * @param {number | null} updatedAt
   */
  tick(updatedAt) {
    if (this.mode === "down") this.bannerText.textContent = bannerText(updatedAt, this.now());
  }

  /**
   * The summary of the services and the start time of lmproxy.
   * @param {{services: number, running: number, proxied: number, waiting: number}} totals
   * @param {string | null} startedAt
   */
  showTotals(totals, startedAt) {
    const { running, proxied, waiting } = this.stats;
    setText(running.figure, `${totals.running}/${totals.services}`);
    setText(proxied.figure, formatAmount(totals.proxied));
    setText(waiting.figure, formatAmount(totals.waiting));
    waiting.node.classList.toggle("attention", totals.waiting > 0);
    if (startedAt) setText(this.started, startedText(startedAt));
  }
}
