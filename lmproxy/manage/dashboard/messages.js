// The sentences the page says: notices from the event stream, the question
// before a forced stop, failed actions, the link indicator and the banner.
// Pure: the current time and the number format are arguments.

import { ago, plural } from "./format.js";

/** What the link indicator says in each state of the transport. */
export const LINK_LABELS = Object.freeze({
  connecting: "Connecting…",
  live: "Live",
  polling: "Polling",
  down: "Offline",
  locked: "Key needed",
});

/**
 * The toast for a notice of the event stream, if it deserves one.
 * @param {string} event "start_finished" or "evicted".
 * @param {object} data the event's data.
 * @returns {{text: string, kind: "info" | "error"} | null}
 */
export function noticeFor(event, data) {
  if (event === "start_finished") {
    if (data.succeeded) return null;
    return { text: `“${data.service}” failed to start.`, kind: "error" };
  }
  if (event === "evicted") {
    return {
      text: `“${data.service}” was stopped to free resources for another service.`,
      kind: "info",
    };
  }
  return null;
}

/**
 * The question asked before stopping a service that has clients.
 * @param {string} name
 * @param {number} proxied its proxied connections.
 * @param {Intl.NumberFormat} [numbers]
 * @returns {string}
 */
export function forceQuestion(name, proxied, numbers) {
  return (
    `“${name}” has ${plural(proxied, "proxied connection", numbers)}. ` +
    "Stopping it now cuts them off."
  );
}

/**
 * The toast when a start or stop failed.
 * @param {string} action "start" or "stop".
 * @param {string} name
 * @param {{error?: string, status?: number, reason?: string}} why the API's
 *     error message, else the HTTP status, else why the request failed.
 * @returns {string}
 */
export function actionFailed(action, name, why) {
  if (why.error) return why.error;
  if (why.status) return `Could not ${action} “${name}” (HTTP ${why.status}).`;
  return `Could not ${action} “${name}”: ${why.reason}`;
}

/**
 * The banner's second line while lmproxy cannot be reached.
 * @param {number | null} updatedAt when the page last had news (ms), if ever.
 * @param {number} now
 * @returns {string}
 */
export function bannerText(updatedAt, now) {
  if (updatedAt === null || updatedAt === undefined) return "Retrying every second…";
  return `Retrying every second… Last update: ${ago(new Date(updatedAt).toISOString(), now)}.`;
}

/**
 * The footer's line about lmproxy's start.
 * @param {string | null} startedAt RFC 3339.
 * @returns {string}
 */
export function startedText(startedAt) {
  return startedAt ? `lmproxy running since ${new Date(startedAt).toLocaleString()}` : "";
}
