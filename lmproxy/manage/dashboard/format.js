// Formatting of numbers, amounts, ages and times, and the URLs the page uses.
// Pure: the current time and the number format are arguments.

const DEFAULT_NUMBERS = new Intl.NumberFormat();

/**
 * A count or an amount for people (digit grouping of the page's locale);
 * "—" when there is none.
 * @param {number | null | undefined} n
 * @param {Intl.NumberFormat} [numbers]
 * @returns {string}
 */
export function formatAmount(n, numbers = DEFAULT_NUMBERS) {
  return n === null || n === undefined ? "—" : numbers.format(n);
}

/**
 * "1 failed start", "3 failed starts".
 * @param {number} n
 * @param {string} word the singular.
 * @param {Intl.NumberFormat} [numbers]
 * @returns {string}
 */
export function plural(n, word, numbers = DEFAULT_NUMBERS) {
  return `${numbers.format(n)} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * How long ago a time was, for people: "never", "just now", "42 s ago",
 * "3 min ago", "2 h 5 min ago", or the local date and time after a day.
 * @param {string | null | undefined} iso an RFC 3339 time, or none.
 * @param {number} now the current time, in milliseconds since the epoch.
 * @returns {string}
 */
export function ago(iso, now) {
  if (!iso) return "never";
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "unknown";
  const seconds = Math.max(0, (now - then) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min ago`;
  }
  return new Date(then).toLocaleString();
}

/**
 * The URL a service name links to, when it is safe to link to: only http and
 * https (a config could hold "javascript:...").
 * @param {string | null | undefined} url
 * @param {string} base the page's URL, for relative ones.
 * @returns {string | null} the absolute URL, or null for no link.
 */
export function safeUrl(url, base) {
  if (!url) return null;
  try {
    const parsed = new URL(url, base);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/**
 * The management API path of a service's action ("start", "stop", "logs");
 * the name is encoded, slashes too.
 * @param {string} name
 * @param {string} action
 * @returns {string}
 */
export function servicePath(name, action) {
  return `/services/${encodeURIComponent(name)}/${action}`;
}

/**
 * The URL of a service's log: its last `tail` lines, and with `follow` the
 * event stream of new ones.
 * @param {string} name
 * @param {number} tail
 * @param {boolean} follow
 * @returns {string}
 */
export function logUrl(name, tail, follow) {
  return `${servicePath(name, "logs")}?tail=${tail}${follow ? "&follow=1" : ""}`;
}

/**
 * A name cut after each "/", "-", "_", "." and ":" (where a long model id
 * may wrap), the pieces in order: joined, they are the name.
 * @param {string} name
 * @returns {string[]}
 */
export function namePieces(name) {
  return name.match(/[^/\-_.:]*(?:[/\-_.:]+|$)/g).filter((piece) => piece !== "");
}
