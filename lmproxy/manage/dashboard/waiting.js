// Why a service waits for resources, in words (a /status service's
// "waiting_for"): what it lacks, who holds it and why they are not stopped
// for it, and who asked first; and what a reload left it to do
// ("pending_reload").  Pure.

import { formatAmount } from "./format.js";

/**
 * The sentence of a service's "waiting_for", or "" when it does not wait.
 * @param {object | null | undefined} waiting its "waiting_for".
 * @param {Intl.NumberFormat} [numbers] how amounts are written.
 * @returns {string}
 */
export function waitingText(waiting, numbers) {
  if (!waiting) return "";
  const parts = waiting.resources.map((r) => {
    const free =
      r.available === null ? "not measured yet" : `${formatAmount(r.available, numbers)} free`;
    const holders = r.held_by.map((name) => {
      if (r.pinned.includes(name)) return `${name} (pinned)`;
      if (r.stopping.includes(name)) return `${name} (stopping)`;
      if (r.in_use.includes(name)) return `${name} (in use)`;
      return name;
    });
    const held = holders.length ? `; held by ${holders.join(", ")}` : "";
    return `${r.resource}: needs ${formatAmount(r.needed, numbers)}, ${free}${held}`;
  });
  if (!parts.length) parts.push("a measurement of its resources");
  const behind = waiting.behind.length ? ` (after ${waiting.behind.join(", ")})` : "";
  return `waits for ${parts.join("; ")}${behind}`;
}

/**
 * What a reload left a service to do once its connections end, or "".
 * @param {string | null | undefined} pending its "pending_reload".
 * @returns {string}
 */
export function reloadText(pending) {
  if (pending === "restart") return "restarts with its new settings once its connections end";
  if (pending === "removal") return "removed from the config; stops once its connections end";
  return "";
}
