// The colour of each service, the same in its row and in every resource bar:
// distinct colours by config position (stable across reloads), then a colour
// from a hash of the name.  Pure.

/** The first colours, one per service in config order. */
export const PALETTE = Object.freeze([
  "#6366f1",
  "#10b981",
  "#f59e0b",
  "#06b6d4",
  "#a855f7",
  "#84cc16",
  "#ec4899",
  "#0ea5e9",
  "#f97316",
  "#14b8a6",
]);

/**
 * The colour of a service.
 * @param {string} name
 * @param {Array<string>} names every service's name, in config order.
 * @returns {string} a CSS colour.
 */
export function serviceColor(name, names) {
  const position = names.indexOf(name);
  if (position >= 0 && position < PALETTE.length) return PALETTE[position];
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 62% 52%)`;
}
