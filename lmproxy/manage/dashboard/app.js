// lmproxy dashboard: a live view of /status, kept current by the /events
// stream (Server-Sent Events), polling /status every second while the stream
// is down.
//
// Every value that comes from the config or the state reaches the page through
// textContent, Text nodes or attribute properties; nothing is ever parsed as
// HTML, so a service named "<b>x</b>" shows as exactly that.

const SORT_STORAGE_KEY = "lmproxy.sort";
const SORT_KEYS = ["config", "name", "connections", "last_used"];
// Names read A to Z; busiest and most recently used come first.
const SORT_DEFAULT_DIR = { config: 1, name: 1, connections: -1, last_used: -1 };
const POLL_MS = 1000;
const STREAM_RETRY_MS = 5000;
const LOG_TAIL_LINES = 200;
const LOG_KEEP_LINES = 2000;
const TOAST_MS = 6000;

const STATE_LABELS = {
  stopped: "Stopped",
  waiting_for_resources: "Waiting for resources",
  starting: "Starting",
  running: "Running",
  stopping: "Stopping",
};

const numberFormat = new Intl.NumberFormat();
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

const model = { services: new Map(), resources: new Map(), startedAt: null, updatedAt: null };
const rows = new Map(); // service name -> ServiceRow
let sort = loadSort();

const byId = (id) => document.getElementById(id);

// DOM helpers ---------------------------------------------------------------

// Build an element; string children become Text nodes (never markup).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// Distinct colours by config position (stable across reloads), then by hash.
const PALETTE = ["#6366f1", "#10b981", "#f59e0b", "#06b6d4", "#a855f7", "#84cc16", "#ec4899",
  "#0ea5e9", "#f97316", "#14b8a6"];

function serviceColor(name) {
  const position = [...model.services.keys()].indexOf(name);
  if (position >= 0 && position < PALETTE.length) return PALETTE[position];
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 62% 52%)`;
}

function swatch(name) {
  const dot = el("span", { class: "swatch", "aria-hidden": "true" });
  dot.style.backgroundColor = serviceColor(name);
  return dot;
}

// Only http(s) URLs become links: a config could hold "javascript:...".
function safeUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function serviceUrlPath(name, action) {
  return `/services/${encodeURIComponent(name)}/${action}`;
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min ago`;
  }
  return new Date(iso).toLocaleString();
}

function plural(n, word) {
  return `${numberFormat.format(n)} ${word}${n === 1 ? "" : "s"}`;
}

// Toasts and the confirmation dialog -----------------------------------------

function toast(message, kind = "info") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    message);
  byId("toasts").append(node);
  setTimeout(() => node.remove(), TOAST_MS);
}

function confirmForce(name, service) {
  const dialog = byId("confirm");
  const count = service ? service.proxied_connections : 0;
  byId("confirm-text").textContent =
    `“${name}” has ${plural(count, "proxied connection")}. ` +
    "Stopping it now cuts them off.";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "force"),
      { once: true });
  });
}

byId("confirm-cancel").addEventListener("click", () => byId("confirm").close("cancel"));
byId("confirm-force").addEventListener("click", () => byId("confirm").close("force"));

// Actions ---------------------------------------------------------------------

async function runAction(name, action, force = false) {
  const row = rows.get(name);
  if (row) row.setBusy(action);
  try {
    const response = await fetch(serviceUrlPath(name, action) + (force ? "?force=1" : ""),
      { method: "POST" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 409 && !force) {
      if (row) row.setBusy(null);
      if (await confirmForce(name, body.service)) await runAction(name, action, true);
      return;
    }
    if (body.service) updateService(body.service);
    else if (response.ok && body.name === name) updateService(body);
    if (!response.ok) {
      toast(body.error || `Could not ${action} “${name}” (HTTP ${response.status}).`, "error");
    }
  } catch (error) {
    toast(`Could not ${action} “${name}”: ${error.message}`, "error");
  } finally {
    if (row) row.setBusy(null);
  }
}

// Log panel -------------------------------------------------------------------

class LogPanel {
  constructor(name) {
    this.name = name;
    this.lines = [];
    this.stream = null;
    this.follow = el("input", { type: "checkbox", class: "follow" });
    this.follow.checked = true;
    this.follow.addEventListener("change", () => this.open());
    this.state = el("span", { class: "log-state" });
    this.pre = el("pre", { class: "log", tabindex: "0" });
    this.node = el("div", { class: "log-panel" },
      el("div", { class: "log-head" },
        el("span", { class: "log-title" }, "Log of ", el("strong", { text: name })),
        this.state,
        el("label", { class: "follow-label" }, this.follow, "Follow"),
        el("button", { type: "button", class: "button small", onclick: () => this.open() },
          "Reload")),
      this.pre);
  }

  open() {
    this.close();
    this.lines = [];
    this.show();
    const url = `${serviceUrlPath(this.name, "logs")}?tail=${LOG_TAIL_LINES}`;
    if (this.follow.checked) {
      this.setState("connecting…");
      const stream = new EventSource(`${url}&follow=1`);
      this.stream = stream;
      // A reconnect sends the tail again: start over rather than repeat it.
      stream.onopen = () => {
        this.lines = [];
        this.show();
        this.setState("following");
      };
      stream.addEventListener("lines", (event) => this.add(event.data.split("\n")));
      stream.addEventListener("reset", () => this.add(["──── the log file was truncated or replaced ────"]));
      stream.onerror = () => this.setState("reconnecting…");
    } else {
      this.setState("loading…");
      fetch(url)
        .then((response) => (response.ok ? response.text() : Promise.reject(
          new Error(`HTTP ${response.status}`))))
        .then((text) => {
          this.add(text === "" ? [] : text.replace(/\n$/, "").split("\n"));
          this.setState("tail");
        })
        .catch((error) => this.setState(`failed: ${error.message}`));
    }
  }

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
    if (this.lines.length > LOG_KEEP_LINES) this.lines.splice(0, this.lines.length - LOG_KEEP_LINES);
    this.show();
    if (pinned) this.pre.scrollTop = this.pre.scrollHeight;
  }

  show() {
    this.pre.textContent = this.lines.length ? this.lines.join("\n") : "(empty)";
    this.pre.classList.toggle("is-empty", this.lines.length === 0);
  }
}

// Service rows ----------------------------------------------------------------

class ServiceRow {
  constructor(name) {
    this.name = name;
    this.busy = null;
    this.logs = null;
    this.nameCell = el("td", { class: "name-cell" });
    this.statePill = el("span", { class: "state" });
    this.portCell = el("td", { class: "port" });
    this.connCell = el("td", { class: "connections" });
    this.lastUsed = el("time", { class: "last-used" });
    this.needsCell = el("td", { class: "needs" });
    this.startButton = el("button", { type: "button", class: "button start",
      onclick: () => runAction(this.name, "start") }, "Start");
    this.stopButton = el("button", { type: "button", class: "button stop",
      onclick: () => runAction(this.name, "stop") }, "Stop");
    this.logsButton = el("button", { type: "button", class: "button ghost logs",
      "aria-expanded": "false", onclick: () => this.toggleLogs() }, "Logs");
    for (const [button, verb] of [[this.startButton, "Start"], [this.stopButton, "Stop"],
      [this.logsButton, "Show the log of"]]) {
      button.setAttribute("aria-label", `${verb} ${name}`);
    }
    this.logCell = el("td", { colspan: "7" });
    this.logRow = el("tr", { class: "log-row" }, this.logCell);
    this.logRow.hidden = true;
    this.body = el("tbody", { class: "service" },
      el("tr", { class: "main-row" },
        this.nameCell,
        el("td", {}, this.statePill),
        this.portCell,
        this.connCell,
        el("td", {}, this.lastUsed),
        this.needsCell,
        el("td", { class: "actions" }, this.startButton, this.stopButton, this.logsButton)),
      this.logRow);
    this.renderedUrl = undefined;
  }

  update(service) {
    this.service = service;
    this.body.dataset.state = service.status;
    this.renderName(service);
    this.statePill.dataset.state = service.status;
    this.statePill.textContent = STATE_LABELS[service.status] || service.status;
    this.portCell.replaceChildren(service.listen_port
      ? el("span", { class: "mono", text: service.listen_port })
      : el("span", { class: "muted", text: service.openai_models?.length ? "OpenAI only" : "—" }));
    this.connCell.replaceChildren(
      el("span", { class: `count proxied${service.proxied_connections ? "" : " zero"}`,
        title: "Clients being proxied" },
        el("b", { text: numberFormat.format(service.proxied_connections) }), " proxied"),
      el("span", { class: `count waiting${service.waiting_connections ? "" : " zero"}`,
        title: "Clients waiting for it to run" },
        el("b", { text: numberFormat.format(service.waiting_connections) }), " waiting"));
    this.needsCell.replaceChildren(...Object.entries(service.resource_requirements || {}).map(
      ([resource, amount]) => el("span", { class: "chip" },
        `${resource} `, el("b", { text: numberFormat.format(amount) }))));
    this.tick();
    this.renderButtons();
  }

  renderName(service) {
    const url = safeUrl(service.service_url);
    if (url === this.renderedUrl) {
      this.renderDetails(service);
      return;
    }
    this.renderedUrl = url;
    const text = el("span", { class: "label", text: this.name });
    const label = url
      ? el("a", { class: "service-name", href: url, target: "_blank", rel: "noopener noreferrer",
        title: `Open ${url} in a new tab` }, text, el("span", { class: "ext", text: " ↗" }))
      : el("span", { class: "service-name" }, text);
    this.details = el("div", { class: "details" });
    this.nameCell.replaceChildren(el("div", { class: "name-line" }, swatch(this.name), label),
      this.details);
    this.renderDetails(service);
  }

  renderDetails(service) {
    const parts = [];
    const models = (service.openai_models || []).filter((m) => m !== service.name);
    if (models.length) parts.push(`models: ${models.join(", ")}`);
    if (service.pid) parts.push(`pid ${service.pid}`);
    if (service.failed_starts) parts.push(plural(service.failed_starts, "failed start"));
    this.details.textContent = parts.join(" · ");
  }

  tick() {
    const iso = this.service?.last_used;
    this.lastUsed.textContent = ago(iso);
    if (iso) {
      this.lastUsed.dateTime = iso;
      this.lastUsed.title = new Date(iso).toLocaleString();
    } else {
      this.lastUsed.removeAttribute("datetime");
      this.lastUsed.removeAttribute("title");
    }
  }

  setBusy(action) {
    this.busy = action;
    this.renderButtons();
  }

  renderButtons() {
    const status = this.service?.status;
    const stopped = status === "stopped";
    this.startButton.hidden = !stopped && this.busy !== "start";
    this.stopButton.hidden = stopped && this.busy !== "stop";
    this.startButton.disabled = this.busy !== null;
    this.stopButton.disabled = this.busy !== null || status === "stopping";
    this.startButton.textContent = this.busy === "start" ? "Starting…" : "Start";
    this.stopButton.textContent = this.busy === "stop" ? "Stopping…" : "Stop";
  }

  toggleLogs() {
    if (this.logs) {
      this.logs.close();
      this.logs = null;
      this.logRow.hidden = true;
      this.logCell.replaceChildren();
      this.logsButton.setAttribute("aria-expanded", "false");
      this.logsButton.classList.remove("active");
      return;
    }
    this.logs = new LogPanel(this.name);
    this.logCell.replaceChildren(this.logs.node);
    this.logRow.hidden = false;
    this.logsButton.setAttribute("aria-expanded", "true");
    this.logsButton.classList.add("active");
    this.logs.open();
  }

  remove() {
    if (this.logs) this.logs.close();
    this.body.remove();
  }
}

// Sorting ---------------------------------------------------------------------

function loadSort() {
  try {
    const saved = JSON.parse(localStorage.getItem(SORT_STORAGE_KEY));
    if (saved && SORT_KEYS.includes(saved.key) && (saved.dir === 1 || saved.dir === -1)) {
      return saved;
    }
  } catch {
    // Nothing saved yet, or storage is disabled: use the default.
  }
  return { key: "config", dir: 1 };
}

function setSort(key, dir) {
  sort = { key, dir: dir ?? (sort.key === key ? -sort.dir : SORT_DEFAULT_DIR[key]) };
  try {
    localStorage.setItem(SORT_STORAGE_KEY, JSON.stringify(sort));
  } catch {
    // Storage disabled: the choice lasts until the page is reloaded.
  }
  renderServices();
}

function sortedServices() {
  const services = [...model.services.values()];
  const position = new Map(services.map((s, i) => [s.name, i]));
  const key = {
    config: (s) => position.get(s.name),
    connections: (s) => s.waiting_connections + s.proxied_connections,
    last_used: (s) => (s.last_used ? Date.parse(s.last_used) : 0),
  }[sort.key];
  return services.sort((a, b) => {
    const order = key ? key(a) - key(b) : collator.compare(a.name, b.name);
    return sort.dir * order || collator.compare(a.name, b.name);
  });
}

function renderSortControls() {
  byId("sort-key").value = sort.key;
  const dir = byId("sort-dir");
  dir.textContent = sort.dir === 1 ? "↑" : "↓";
  dir.setAttribute("aria-label", sort.dir === 1 ? "Ascending; reverse" : "Descending; reverse");
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const active = th.dataset.sort === sort.key;
    th.setAttribute("aria-sort", active ? (sort.dir === 1 ? "ascending" : "descending") : "none");
    th.querySelector(".arrow").textContent = active ? (sort.dir === 1 ? " ▲" : " ▼") : "";
  }
}

byId("sort-key").addEventListener("change", (event) => setSort(event.target.value,
  SORT_DEFAULT_DIR[event.target.value]));
byId("sort-dir").addEventListener("click", () => setSort(sort.key, -sort.dir));
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.querySelector("button").addEventListener("click", () => setSort(th.dataset.sort));
}

// Rendering -------------------------------------------------------------------

function renderServices() {
  const table = byId("services");
  for (const [name, row] of rows) {
    if (!model.services.has(name)) {
      row.remove();
      rows.delete(name);
    }
  }
  const ordered = sortedServices();
  ordered.forEach((service, index) => {
    let row = rows.get(service.name);
    if (!row) {
      row = new ServiceRow(service.name);
      rows.set(service.name, row);
    }
    row.update(service);
    // Move a row only when it is out of place: moving resets a log's scroll.
    const wanted = table.tBodies[index + 1];
    if (wanted !== row.body) table.insertBefore(row.body, wanted || null);
  });
  byId("empty").hidden = ordered.length > 0;
  renderSortControls();
  renderSummary();
}

function renderSummary() {
  const services = [...model.services.values()];
  const running = services.filter((s) => s.status === "running").length;
  const proxied = services.reduce((n, s) => n + s.proxied_connections, 0);
  const waiting = services.reduce((n, s) => n + s.waiting_connections, 0);
  byId("summary").replaceChildren(
    el("span", { class: "stat" }, el("b", { text: `${running}/${services.length}` }), " running"),
    el("span", { class: "stat" }, el("b", { text: numberFormat.format(proxied) }), " proxied"),
    el("span", { class: `stat${waiting ? " attention" : ""}` },
      el("b", { text: numberFormat.format(waiting) }), " waiting"));
}

function segmentKind(serviceName) {
  const status = model.services.get(serviceName)?.status;
  if (status === "starting") return "reserved";
  if (status === "waiting_for_resources") return "wanted";
  return "held";
}

function resourceCard(resource) {
  const format = (n) => (n === null || n === undefined ? "—" : numberFormat.format(n));
  const scale = resource.total ??
    (Math.max(resource.free ?? 0, 0) + resource.in_use + resource.reserved_by_starting_services);
  const bar = el("div", { class: "bar", role: "img" });
  const legend = el("ul", { class: "legend" });
  const usage = Object.entries(resource.usage_by_service || {});
  for (const [service, amount] of usage) {
    const kind = segmentKind(service);
    if (kind !== "wanted" && scale > 0) {
      const segment = el("div", { class: `segment ${kind}`,
        title: `${service}: ${format(amount)}${kind === "reserved" ? " (starting)" : ""}` });
      segment.style.width = `${Math.min(100, (100 * amount) / scale)}%`;
      segment.style.backgroundColor = serviceColor(service);
      bar.append(segment);
    }
    legend.append(el("li", { class: kind }, swatch(service),
      el("span", { class: "legend-name", text: service }),
      el("span", { class: "legend-amount", text: format(amount) }),
      kind === "held" ? null
        : el("span", { class: "tag", text: kind === "reserved" ? "starting" : "waiting" })));
  }
  if (usage.length === 0) legend.append(el("li", { class: "muted", text: "Nobody uses it." }));
  bar.setAttribute("aria-label",
    `${resource.name}: ${format(resource.in_use)} in use of ${format(scale)}`);
  const figures = el("dl", { class: "figures" });
  const figure = (label, value, extra = "") => figures.append(
    el("div", { class: `figure ${extra}` }, el("dt", { text: label }), el("dd", { text: value })));
  figure("In use", format(resource.in_use));
  if (resource.reserved_by_starting_services) {
    figure("Starting", format(resource.reserved_by_starting_services));
  }
  figure("Free", format(resource.free), resource.free !== null && resource.free <= 0 ? "full" : "");
  figure("Total", resource.total === null ? "measured" : format(resource.total));
  if (resource.measured !== null && resource.measured !== undefined) {
    figure("Measured", format(resource.measured));
  }
  return el("article", { class: "resource" },
    el("h3", { text: resource.name }), bar, figures, legend);
}

function renderResources() {
  const resources = [...model.resources.values()];
  byId("resources-section").hidden = resources.length === 0;
  byId("resources").replaceChildren(...resources.map(resourceCard));
}

function render() {
  renderServices();
  renderResources();
  if (model.startedAt) {
    byId("started").textContent = `lmproxy running since ${new Date(model.startedAt).toLocaleString()}`;
  }
}

// Model updates ---------------------------------------------------------------

function applyStatus(status) {
  model.services = new Map(status.services.map((s) => [s.name, s]));
  model.resources = new Map(Object.entries(status.resources || {}));
  model.startedAt = status.started_at;
  model.updatedAt = Date.now();
  render();
}

function updateService(service) {
  model.services.set(service.name, service);
  model.updatedAt = Date.now();
  renderServices();
  renderResources(); // bar segments depend on the services' states
}

function updateResource(resource) {
  model.resources.set(resource.name, resource);
  model.updatedAt = Date.now();
  renderResources();
}

// Connection to lmproxy: the stream, else polling ------------------------------

const link = { mode: "connecting", stream: null, polling: false, lastStreamTry: 0 };

function setMode(mode) {
  link.mode = mode;
  const labels = { connecting: "Connecting…", live: "Live", polling: "Polling", offline: "Offline" };
  byId("link-state").dataset.mode = mode;
  byId("link-text").textContent = labels[mode];
  byId("banner").hidden = mode !== "offline";
  document.body.classList.toggle("stale", mode === "offline");
  renderBanner();
}

function renderBanner() {
  if (link.mode !== "offline") return;
  byId("banner-text").textContent = model.updatedAt
    ? `Retrying every second… Last update: ${ago(new Date(model.updatedAt).toISOString())}.`
    : "Retrying every second…";
}

function openStream() {
  link.lastStreamTry = Date.now();
  const stream = new EventSource("/events");
  link.stream = stream;
  const handle = (name, fn) => stream.addEventListener(name, (event) => fn(JSON.parse(event.data)));
  handle("status", (status) => {
    link.polling = false;
    applyStatus(status);
    setMode("live");
  });
  handle("service", updateService);
  handle("resource", updateResource);
  handle("start_finished", (notice) => {
    if (!notice.succeeded) toast(`“${notice.service}” failed to start.`, "error");
  });
  handle("evicted", (notice) => {
    toast(`“${notice.service}” was stopped to free resources for another service.`);
  });
  stream.onerror = () => {
    stream.close();
    if (link.stream === stream) link.stream = null;
    startPolling();
  };
}

function startPolling() {
  if (link.polling) return;
  link.polling = true;
  poll();
}

async function poll() {
  if (!link.polling) return;
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    applyStatus(await response.json());
    if (link.polling) setMode("polling");
  } catch {
    setMode("offline");
  }
  if (!link.polling) return;
  if (!link.stream && Date.now() - link.lastStreamTry >= STREAM_RETRY_MS) openStream();
  setTimeout(poll, POLL_MS);
}

// Relative times and the banner age by the second, with or without updates.
setInterval(() => {
  for (const row of rows.values()) row.tick();
  renderBanner();
}, 1000);

renderSortControls();
openStream();
