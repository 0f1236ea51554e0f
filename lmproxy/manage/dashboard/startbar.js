// The progress bar of a starting service, under its name (progress.js says
// how far it has come).

import { el, setText } from "./dom.js";

export class StartBar {
  constructor() {
    this.bar = el("span", { class: "progress-bar" });
    this.text = el("span", { class: "progress-text" });
    this.node = el(
      "div",
      { class: "start-progress", hidden: "" },
      el("span", { class: "progress-track" }, this.bar),
      this.text,
    );
  }

  /**
   * Show a start's progress, or hide the bar.
   * @param {{text: string, fraction: number | null} | null} progress
   */
  show(progress) {
    this.node.hidden = progress === null;
    if (progress === null) return;
    setText(this.text, progress.text);
    this.bar.hidden = progress.fraction === null;
    this.bar.style.width = `${Math.round((progress.fraction ?? 0) * 100)}%`;
  }
}
