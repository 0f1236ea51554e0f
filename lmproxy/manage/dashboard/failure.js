// What a service row says about its last failed start (the "last_failure" of
// a /status service object): when and why, and the countdown of its back-off.
// Pure: the current time is an argument.

import { ago } from "./format.js";

/**
 * Seconds until the back-off after a failed start ends, rounded up; null when
 * there is none or it is over.
 * @param {string | null | undefined} retryAt an RFC 3339 time, or none.
 * @param {number} now the current time, in milliseconds since the epoch.
 * @returns {number | null}
 */
export function secondsUntil(retryAt, now) {
  if (!retryAt) return null;
  const then = Date.parse(retryAt);
  if (Number.isNaN(then) || then <= now) return null;
  return Math.ceil((then - now) / 1000);
}

/**
 * The failure line of a service: "failed 12 s ago: <reason>", then "next try
 * in 5 s" while its back-off lasts (and whether retrying can help), and the
 * last lines the server wrote.
 * @param {{at: string, reason: string, retryable?: boolean, retry_at?: string | null,
 *     output_tail?: string[]} | null | undefined} failure the service's last_failure.
 * @param {number} now the current time, in milliseconds since the epoch.
 * @returns {{text: string, retry: string | null, tail: string[]} | null} null
 *     when it never failed.
 */
export function failureLine(failure, now) {
  if (!failure) return null;
  const reason = failure.reason ? `: ${failure.reason}` : "";
  const text = `failed ${ago(failure.at, now)}${reason}`;
  const seconds = secondsUntil(failure.retry_at, now);
  let retry = null;
  if (seconds !== null) {
    retry = `next try in ${seconds} s`;
    if (failure.retryable === false) retry += " (retrying will not help)";
  }
  return { text, retry, tail: failure.output_tail || [] };
}
