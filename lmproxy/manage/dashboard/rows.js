// One row of the services table (a <tbody> of its own, with the row of its
// last failed start and the log panel's row under it): built once per
// service, then updated in place.

import { el, setText, swatch } from "./dom.js";
import { failureLine } from "./failure.js";
import { ago, formatAmount, namePieces, plural, safeUrl } from "./format.js";
import { startProgress } from "./progress.js";
import { StartBar } from "./startbar.js";
import { reloadText, waitingText } from "./waiting.js";
import { KeyedList } from "./keyed.js";
import { LogPanel } from "./logs.js";
import { actionButtons, stateLabel } from "./states.js";

// "3 proxied": a count of connections, dimmed when zero.
function counter(kind, title) {
  const number = el("b");
  const node = el("span", { class: `count ${kind}`, title }, number, ` ${kind}`);
  return {
    node,
    show(n) {
      node.classList.toggle("zero", !n);
      setText(number, formatAmount(n));
    },
  };
}

// "failed 12 s ago: <reason> · next try in 5 s", and what the server wrote.
function failureBox() {
  const text = el("span", { class: "failure-text" });
  const retry = el("span", { class: "failure-retry" });
  const count = el("span");
  const output = el("pre", { class: "failure-output" });
  const summary = el("summary", {}, "Output ", count);
  const tail = el("details", { class: "failure-tail" }, summary, output);
  const row = el("tr", { class: "failure-row" }, el("td", { colspan: "7" }, text, retry, tail));
  row.hidden = true;
  return {
    row,
    /**
     * @param {ReturnType<typeof failureLine>} line what to say, or null: nothing.
     * @param {string | undefined} at when it failed (RFC 3339), for the tooltip.
     */
    show(line, at) {
      row.hidden = line === null;
      if (line === null) return;
      setText(text, line.text);
      text.title = new Date(at).toLocaleString();
      retry.hidden = line.retry === null;
      setText(retry, line.retry ? ` · ${line.retry}` : "");
      tail.hidden = line.tail.length === 0;
      setText(count, `(last ${plural(line.tail.length, "line")})`);
      setText(output, line.tail.join("\n"));
    },
  };
}

// "VRAM 2,000": what a service needs of a resource.
function chip(resource) {
  const amount = el("b");
  return { node: el("span", { class: "chip" }, `${resource} `, amount), amount };
}

export class ServiceRow {
  /**
   * @param {string} name the service.
   * @param {object} page
   * @param {(name: string, action: string) => void} page.act runs start or stop.
   * @param {() => number} page.now the clock (ms).
   * @param {{fetch: Function, openStream: Function}} page.api for the log
   *     panel (see logs.js).
   */
  constructor(name, { act, now, api }) {
    this.name = name;
    this.now = now;
    this.api = api;
    this.service = null;
    this.busy = null;
    this.logs = null;
    this.renderedUrl = undefined;
    this.nameCell = el("td", { class: "name-cell" });
    this.statePill = el("span", { class: "state" });
    this.port = el("span");
    this.proxied = counter("proxied", "Clients being proxied");
    this.waiting = counter("waiting", "Clients waiting for it to run");
    this.queued = counter("queued", "Clients waiting for a turn (MaxConcurrentRequests, MaxConnections)");
    this.lastUsed = el("time", { class: "last-used" });
    const needsCell = el("td", { class: "needs" });
    this.needs = new KeyedList(needsCell, {
      create: (resource) => chip(resource),
      update: (item, amount) => setText(item.amount, formatAmount(amount)),
    });
    const button = (cls, text, verb, onclick) =>
      el("button", { type: "button", class: cls, "aria-label": `${verb} ${name}`, onclick }, text);
    this.startButton = button("button start", "Start", "Start", () => act(name, "start"));
    this.stopButton = button("button stop", "Stop", "Stop", () => act(name, "stop"));
    this.logsButton = button("button ghost logs", "Logs", "Show the log of", () =>
      this.toggleLogs(),
    );
    this.logsButton.setAttribute("aria-expanded", "false");
    this.logCell = el("td", { colspan: "7" });
    this.logRow = el("tr", { class: "log-row" }, this.logCell);
    this.logRow.hidden = true;
    this.failure = failureBox();
    this.node = el(
      "tbody",
      { class: "service" },
      el(
        "tr",
        { class: "main-row" },
        this.nameCell,
        el("td", {}, this.statePill),
        el("td", { class: "port" }, this.port),
        el("td", { class: "connections" }, this.proxied.node, this.waiting.node, this.queued.node),
        el("td", {}, this.lastUsed),
        needsCell,
        el("td", { class: "actions" }, this.startButton, this.stopButton, this.logsButton),
      ),
      this.failure.row,
      this.logRow,
    );
  }

  /**
   * Show a service object of /status.
   * @param {object} service
   * @param {string} color the service's colour.
   */
  update(service, color) {
    this.service = service;
    this.node.dataset.state = service.status;
    this.renderName(service, color);
    this.statePill.dataset.state = service.status;
    setText(this.statePill, stateLabel(service.status));
    if (service.listen_port) {
      this.port.className = "mono";
      setText(this.port, service.listen_port);
    } else {
      this.port.className = "muted";
      setText(this.port, service.openai_models?.length ? "OpenAI only" : "—");
    }
    this.proxied.show(service.proxied_connections);
    this.waiting.show(service.waiting_connections);
    this.queued.show(service.queued_connections || 0);
    this.queued.node.hidden = !service.queued_connections; // shown only while some wait
    this.needs.render(Object.entries(service.resource_requirements || {}));
    this.tick();
    this.renderButtons();
  }

  renderName(service, color) {
    const url = safeUrl(service.service_url, window.location.href);
    if (url !== this.renderedUrl) {
      this.renderedUrl = url;
      // A line may break after a separator (<wbr>), not inside a word; the
      // whole name is the tooltip.
      const pieces = namePieces(this.name).flatMap((piece) => [piece, el("wbr")]);
      const text = el("span", { class: "label", title: this.name }, ...pieces.slice(0, -1));
      const label = url
        ? el(
            "a",
            {
              class: "service-name",
              href: url,
              target: "_blank",
              rel: "noopener noreferrer",
              title: `Open ${url} in a new tab`,
            },
            text,
            el("span", { class: "ext", text: " ↗" }),
          )
        : el("span", { class: "service-name" }, text);
      this.swatch = swatch(color);
      this.details = el("div", { class: "details" });
      this.startBar = new StartBar();
      const line = el("div", { class: "name-line" }, this.swatch, label);
      this.nameCell.replaceChildren(line, this.details, this.startBar.node);
    }
    this.swatch.style.backgroundColor = color;
    const parts = [];
    const models = (service.openai_models || []).filter((m) => m !== service.name);
    if (models.length) parts.push(`models: ${models.join(", ")}`);
    if (service.pid) parts.push(`pid ${service.pid}`);
    if (service.pinned) parts.push("pinned");
    if (service.failed_starts) parts.push(plural(service.failed_starts, "failed start"));
    for (const why of [waitingText(service.waiting_for), reloadText(service.pending_reload)]) {
      if (why) parts.push(why);
    }
    setText(this.details, parts.join(" · "));
  }

  /** Show the ages and the back-off's countdown again (called every second). */
  tick() {
    if (this.startBar) this.startBar.show(startProgress(this.service, this.now()));
    const failure = this.service?.last_failure;
    this.failure.show(failureLine(failure, this.now()), failure?.at);
    this.node.classList.toggle("has-failure", Boolean(failure));
    const iso = this.service?.last_used;
    setText(this.lastUsed, ago(iso, this.now()));
    if (iso) {
      this.lastUsed.dateTime = iso;
      this.lastUsed.title = new Date(iso).toLocaleString();
    } else {
      this.lastUsed.removeAttribute("datetime");
      this.lastUsed.removeAttribute("title");
    }
  }

  /**
   * Show that the page waits for an action, or no longer does.
   * @param {"start" | "stop" | null} action
   */
  setBusy(action) {
    this.busy = action;
    this.renderButtons();
  }

  renderButtons() {
    const look = actionButtons(this.service?.status, this.busy);
    for (const [button, { hidden, disabled, text }] of [
      [this.startButton, look.start],
      [this.stopButton, look.stop],
    ]) {
      button.hidden = hidden;
      button.disabled = disabled;
      setText(button, text);
    }
  }

  toggleLogs() {
    const open = this.logs === null;
    if (open) {
      this.logs = new LogPanel(this.name, this.api);
      this.logCell.replaceChildren(this.logs.node);
      this.logs.open();
    } else {
      this.logs.close();
      this.logs = null;
      this.logCell.replaceChildren();
    }
    this.logRow.hidden = !open;
    this.logsButton.setAttribute("aria-expanded", String(open));
    this.logsButton.classList.toggle("active", open);
  }

  /** The service left the config: stop following its log. */
  destroy() {
    if (this.logs) this.logs.close();
  }
}
