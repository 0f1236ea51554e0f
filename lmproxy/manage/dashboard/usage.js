// What a resource card shows, worked out from a resource object of /status
// and the states of the services that use it: the scale of its bar, one
// segment and one legend entry per service, and its figures, each with a key
// so that the card can be updated in place.  Pure: no DOM.

import { formatAmount } from "./format.js";
import { usageKind } from "./states.js";

/**
 * The amount a resource's bar stands for: its total, or for a measured one
 * without a total what is available and in use together (the measurement,
 * plus what running services use).
 * @param {object} resource a resource object of /status.
 * @returns {number}
 */
export function barScale(resource) {
  if (resource.total !== null && resource.total !== undefined) return resource.total;
  return Math.max(resource.available ?? 0, 0) + (resource.in_use ?? 0);
}

/**
 * The card of a resource.
 * @param {object} resource a resource object of /status.
 * @param {(service: string) => string | undefined} stateOf a service's state.
 * @param {Intl.NumberFormat} [numbers]
 * @returns {{
 *   label: string,
 *   segments: Array<{key: string, kind: string, width: string, title: string}>,
 *   legend: Array<{key: string, kind: string, amount: string, tag: string | null}>,
 *   figures: Array<{key: string, value: string, full: boolean}>,
 * }} `label` describes the bar; segments (none for a service that waits) and
 *     legend entries in the order of `usage_by_service`; figures by label.
 */
export function resourceCard(resource, stateOf, numbers) {
  const amount = (n) => formatAmount(n, numbers);
  const scale = barScale(resource);
  const segments = [];
  const legend = [];
  for (const [service, used] of Object.entries(resource.usage_by_service || {})) {
    const kind = usageKind(stateOf(service));
    if (kind !== "wanted" && scale > 0) {
      segments.push({
        key: service,
        kind,
        width: `${Math.min(100, (100 * used) / scale)}%`,
        title: `${service}: ${amount(used)}${kind === "reserved" ? " (starting)" : ""}`,
      });
    }
    const tag = { reserved: "starting", wanted: "waiting" }[kind] ?? null;
    legend.push({ key: service, kind, amount: amount(used), tag });
  }
  const figures = [{ key: "In use", value: amount(resource.in_use), full: false }];
  if (resource.reserved_by_starting_services) {
    figures.push({
      key: "Starting",
      value: amount(resource.reserved_by_starting_services),
      full: false,
    });
  }
  // What a service could take now (for a measured resource, the measurement
  // less what starting services reserved), not upstream's raw `free`.
  const available = resource.available ?? null;
  figures.push({
    key: "Available",
    value: amount(available),
    full: available !== null && available <= 0,
  });
  const total = resource.total ?? null;
  figures.push({ key: "Total", value: total === null ? "measured" : amount(total), full: false });
  if (resource.measured !== null && resource.measured !== undefined) {
    figures.push({ key: "Measured", value: amount(resource.measured), full: false });
  }
  return {
    label: `${resource.name}: ${amount(resource.in_use)} in use of ${amount(scale)}`,
    segments,
    legend,
    figures,
  };
}
