// The order of the service rows: the sort keys, the remembered choice (in
// localStorage), the next choice after a click, and the comparison itself.
// Pure: the storage and the name comparison are arguments.

/** Where the choice is remembered. */
export const SORT_STORAGE_KEY = "lmproxy.sort";

/** The orders the page offers; "config" is the order of the config file. */
export const SORT_KEYS = Object.freeze(["config", "name", "connections", "last_used"]);

/** Names read A to Z; the busiest and the most recently used come first. */
export const SORT_DEFAULT_DIR = Object.freeze({
  config: 1,
  name: 1,
  connections: -1,
  last_used: -1,
});

/** The order before anyone chose one. */
export const DEFAULT_SORT = Object.freeze({ key: "config", dir: 1 });

const NAMES = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

/**
 * A remembered choice read back, or the default when there is none or it is
 * not one the page offers.
 * @param {string | null} text what was stored.
 * @returns {{key: string, dir: 1 | -1}}
 */
export function parseSort(text) {
  try {
    const saved = JSON.parse(text);
    if (saved && SORT_KEYS.includes(saved.key) && (saved.dir === 1 || saved.dir === -1)) {
      return { key: saved.key, dir: saved.dir };
    }
  } catch {
    // Not JSON: fall through to the default.
  }
  return { ...DEFAULT_SORT };
}

/**
 * The remembered choice, or the default (also when storage is disabled).
 * @param {Storage | null | undefined} storage
 * @returns {{key: string, dir: 1 | -1}}
 */
export function loadSort(storage) {
  try {
    return parseSort(storage ? storage.getItem(SORT_STORAGE_KEY) : null);
  } catch {
    return { ...DEFAULT_SORT };
  }
}

/**
 * Remember a choice; when storage is disabled it lasts until the page reloads.
 * @param {Storage | null | undefined} storage
 * @param {{key: string, dir: 1 | -1}} sort
 * @returns {boolean} whether it was stored.
 */
export function saveSort(storage, sort) {
  try {
    storage.setItem(SORT_STORAGE_KEY, JSON.stringify({ key: sort.key, dir: sort.dir }));
    return true;
  } catch {
    return false;
  }
}

/**
 * The choice after asking for `key`: in direction `dir` when given; else the
 * same key again reverses, a new key starts in its default direction.
 * @param {{key: string, dir: 1 | -1}} current
 * @param {string} key
 * @param {1 | -1} [dir]
 * @returns {{key: string, dir: 1 | -1}}
 */
export function nextSort(current, key, dir) {
  if (dir === 1 || dir === -1) return { key, dir };
  return { key, dir: current.key === key ? -current.dir : SORT_DEFAULT_DIR[key] ?? 1 };
}

/**
 * The services in the chosen order; ties (and the "name" key) by name, in the
 * way people read names ("a2" before "a10", case ignored).  The input, in
 * config order, is left as it is.
 * @param {Array<object>} services service objects of /status, in config order.
 * @param {{key: string, dir: 1 | -1}} sort
 * @param {(a: string, b: string) => number} [compareNames]
 * @returns {Array<object>} a new array.
 */
export function sortServices(services, sort, compareNames = NAMES.compare) {
  const position = new Map(services.map((s, i) => [s.name, i]));
  const lastUsed = (s) => {
    const t = s.last_used ? Date.parse(s.last_used) : 0;
    return Number.isNaN(t) ? 0 : t;
  };
  const value = {
    config: (s) => position.get(s.name),
    connections: (s) => (s.waiting_connections || 0) + (s.proxied_connections || 0),
    last_used: lastUsed,
  }[sort.key];
  return [...services].sort((a, b) => {
    const order = value ? value(a) - value(b) : compareNames(a.name, b.name);
    return sort.dir * order || compareNames(a.name, b.name);
  });
}

/**
 * How a sortable column header shows the choice.
 * @param {{key: string, dir: 1 | -1}} sort
 * @param {string} key the column's sort key.
 * @returns {{ariaSort: string, arrow: string}}
 */
export function columnIndicator(sort, key) {
  if (sort.key !== key) return { ariaSort: "none", arrow: "" };
  return sort.dir === 1
    ? { ariaSort: "ascending", arrow: " ▲" }
    : { ariaSort: "descending", arrow: " ▼" };
}

/**
 * How the direction button shows the choice.
 * @param {1 | -1} dir
 * @returns {{text: string, label: string}}
 */
export function directionButton(dir) {
  return dir === 1
    ? { text: "↑", label: "Ascending; reverse" }
    : { text: "↓", label: "Descending; reverse" };
}
