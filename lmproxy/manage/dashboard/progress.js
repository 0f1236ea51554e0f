// How far a start has come, against how long the service's starts take
// (a /status service's "starting_since" and "start_estimate_seconds", the
// median of its last starts, which lmproxy learns).  Pure.

/**
 * The progress of a start, or null when the service does not start.
 * @param {object} service a /status service.
 * @param {number} nowMs the time (ms since the epoch).
 * @returns {{text: string, fraction: number | null} | null} fraction: how
 *     much of the estimate has passed (below 1), null without an estimate.
 */
export function startProgress(service, nowMs) {
  if (service.status !== "starting" || !service.starting_since) return null;
  const elapsed = Math.max(0, (nowMs - Date.parse(service.starting_since)) / 1000);
  const estimate = service.start_estimate_seconds;
  const so_far = `${Math.round(elapsed)} s`;
  if (estimate === null || estimate === undefined) {
    return { text: `starting for ${so_far} (its first start here: no estimate yet)`, fraction: null };
  }
  const usual = `about ${Math.max(1, Math.round(estimate))} s`;
  if (elapsed > estimate) {
    return { text: `starting for ${so_far}, longer than usual (${usual})`, fraction: 0.99 };
  }
  return { text: `starting: ${so_far} of ${usual} (learned)`, fraction: elapsed / estimate };
}
