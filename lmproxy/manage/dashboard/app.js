// lmproxy dashboard, the entry module (<script type="module">): a live view of
// /status.  It only wires the parts together:
//
//   transport.js  the link to lmproxy (/events, else polling /status)
//   sse.js        the event streams, read with fetch so that they carry the key
//   key.js        the management key, on every request; keyform.js asks for it
//   store.js      the current status, changed by the link's events
//   services.js   the table (rows.js, failure.js, logs.js), sorted (sorting.js)
//   cards.js      the resource cards (usage.js)
//   timeline.js   the last hour (timelinelayout.js)
//   topbar.js     summary, link indicator, banner; feedback.js, actions.js
//
// node tests the pure helpers (format.js, states.js, sorting.js, usage.js,
// colors.js, messages.js, failure.js), store.js, transport.js, sse.js, key.js,
// keyed.js and the views (on a small fake DOM) in tests/js/;
// tests/test_dashboard_browser.py runs it all in Chromium, and
// tests/test_dashboard_browser_key.py behind a management key.

import { Actions } from "./actions.js";
import { ResourcesView } from "./cards.js";
import { Feedback } from "./feedback.js";
import { ManagementKey } from "./key.js";
import { KeyForm } from "./keyform.js";
import { noticeFor } from "./messages.js";
import { ServicesView } from "./services.js";
import { FetchEventSource } from "./sse.js";
import { Store } from "./store.js";
import { TimelineView } from "./timeline.js";
import { TopBar } from "./topbar.js";
import { Link } from "./transport.js";

const byId = (id) => document.getElementById(id);
const now = () => Date.now();

function storage(name) {
  try {
    return window[name];
  } catch {
    return null; // Storage disabled: the sort order and the key last until a reload.
  }
}

// Every request of the page carries the key, if lmproxy asked for one; a
// refusal stops the link and asks for the key.
const key = new ManagementKey({
  storage: storage("sessionStorage"),
  fetch: (url, init) => fetch(url, init),
  onRefused: (reason, wrong) => {
    link.lock();
    keyForm.show(reason, wrong);
  },
});
const keyForm = new KeyForm({
  root: document.body,
  panel: byId("key-panel"),
  form: byId("key-form"),
  input: byId("key-input"),
  message: byId("key-message"),
  onKey: (value) => {
    key.set(value);
    link.unlock();
  },
});
const api = {
  fetch: key.fetch,
  openStream: (url) => new FetchEventSource(url, { fetch: key.fetch }),
};

const store = new Store(now);
const feedback = new Feedback({ toasts: byId("toasts"), dialog: byId("confirm") });
const topBar = new TopBar(document, now);
// The rows' buttons run actions; an action marks its row busy: each asks the
// other when a button is clicked, after both exist.
const actions = new Actions({
  store,
  feedback,
  rowOf: (name) => services.row(name),
  fetch: api.fetch,
});
const services = new ServicesView({
  table: byId("services"),
  empty: byId("empty"),
  sortKey: byId("sort-key"),
  sortDir: byId("sort-dir"),
  store,
  storage: storage("localStorage"),
  act: (name, action) => actions.run(name, action),
  now,
  api,
});
const resources = new ResourcesView({
  section: byId("resources-section"),
  grid: byId("resources"),
  store,
});

const timeline = new TimelineView({
  root: byId("timeline"),
  fetch: api.fetch,
  now,
  requirements: () =>
    [...store.services.values()].map((s) => ({ name: s.name, needs: s.resource_requirements })),
});

store.subscribe((change) => {
  if (change.kind === "service" || change.kind === "status") timeline.changed();
  if (change.kind === "notice") {
    const notice = noticeFor(change.event, change.data);
    if (notice) feedback.toast(notice.text, notice.kind);
    return;
  }
  if (change.kind !== "resource") services.render();
  // Every card: a bar's segments follow the states of the services.
  resources.render();
  topBar.showTotals(store.totals(), store.startedAt);
});

// A poll that hangs (lmproxy stopped, its socket not closed) counts as failed.
const POLL_TIMEOUT_MS = 5000;

async function fetchStatus() {
  const signal = AbortSignal.timeout ? AbortSignal.timeout(POLL_TIMEOUT_MS) : undefined;
  const response = await api.fetch("/status", { cache: "no-store", signal });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

const link = new Link({
  openStream: api.openStream,
  fetchStatus,
  onMessage: (event, data) => store.apply(event, data),
  onState: (mode) => topBar.showLink(mode, store.updatedAt),
});

// Ages and the banner's "last update" move on by the second, news or not.
setInterval(() => {
  services.tick();
  topBar.tick(store.updatedAt);
}, 1000);

link.start();
timeline.start();
