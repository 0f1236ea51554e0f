// Where the timeline draws what (a GET /timeline document: each service's
// states as spans, evictions and failed starts) on a strip of a given width:
// one lane per service, a rectangle per state worth showing, a marker per
// event, ticks counted back from now.  Pure: timeline.js draws it.

/** The states drawn, each with how strongly its service's colour shows. */
export const SHOWN = Object.freeze({
  waiting_for_resources: 0.25,
  starting: 0.55,
  running: 1,
  stopping: 0.35,
});

const MINUTE_MS = 60 * 1000;

/** A tick every minute for up to 10 min, every 5 up to 30, else every 10. */
function tickEvery(spanMs) {
  if (spanMs <= 10 * MINUTE_MS) return MINUTE_MS;
  return spanMs <= 30 * MINUTE_MS ? 5 * MINUTE_MS : 10 * MINUTE_MS;
}

/**
 * The layout of a timeline document.
 * @param {object} doc a GET /timeline document.
 * @param {number} width the strip's width in pixels.
 * @param {number} nowMs the time at the strip's right end (ms since the epoch).
 * @returns {{lanes: Array<{name: string, rects: Array<object>, markers: Array<object>}>,
 *     ticks: Array<{x: number, label: string}>}}
 *     each rect: {x, width, state, opacity, from, to}; each marker: {x, kind, reason, at}.
 */
export function layoutTimeline(doc, width, nowMs) {
  const since = Date.parse(doc.since);
  const span = Math.max(1, nowMs - since);
  const x = (ms) => Math.max(0, Math.min(width, ((ms - since) / span) * width));
  const lanes = doc.services.map((service) => {
    const rects = [];
    for (const state of service.states) {
      if (!(state.state in SHOWN)) continue;
      const from = Date.parse(state.from);
      const to = state.to === null ? nowMs : Date.parse(state.to);
      const left = x(from);
      // At least a pixel: a start that took 50 ms still shows.
      rects.push({
        x: left,
        width: Math.max(1, x(to) - left),
        state: state.state,
        opacity: SHOWN[state.state],
        from: state.from,
        to: state.to,
      });
    }
    const markers = doc.events
      .filter((event) => event.service === service.name)
      .map((event) => ({
        x: x(Date.parse(event.at)),
        kind: event.kind,
        reason: event.reason,
        at: event.at,
      }));
    return { name: service.name, rects, markers };
  });
  const ticks = [];
  const every = tickEvery(span);
  for (let back = 0; nowMs - back >= since; back += every) {
    const t = nowMs - back;
    const minutes = Math.round(back / MINUTE_MS);
    ticks.unshift({ x: x(t), label: minutes === 0 ? "now" : `−${minutes} min` });
  }
  return { lanes, ticks };
}
