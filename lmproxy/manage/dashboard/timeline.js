// The last hour, drawn (the "Last hour" panel): a lane per service, its
// states in its colour (faint while waiting, lighter while it starts or
// stops), a red cross per failed start and an orange triangle per eviction,
// each with its tooltip.  A service holds its resources exactly while its lane
// is coloured, so the lanes show which service held which resource when.
// Fetched from GET /timeline on load, after a service changes, and every
// 30 s; redrawn every 5 s as time passes (timelinelayout.js lays it out).

import { serviceColor } from "./colors.js";
import { svg } from "./dom.js";
import { layoutTimeline } from "./timelinelayout.js";

const LANE = 22;
const MARGIN = 20; // left of the labels
const LABELS = MARGIN + 190; // where the strip begins
const RIGHT = 28; // room for the "now" tick
const AXIS = 18;
const REFETCH_MS = 30000;
const REDRAW_MS = 5000;
const CHANGED_MS = 500;

export class TimelineView {
  /**
   * @param {object} parts
   * @param {HTMLElement} parts.root where the drawing goes.
   * @param {(url: string, init?: object) => Promise<Response>} parts.fetch
   * @param {() => number} parts.now the time (ms since the epoch).
   * @param {() => Array<object>} parts.requirements each service's name and needs, in order.
   */
  constructor({ root, fetch, now, requirements }) {
    this.root = root;
    this.fetch = fetch;
    this.now = now;
    this.requirements = requirements;
    this.doc = null;
    this.skew = 0; // lmproxy's clock less the page's
    this.refetch = null;
  }

  /** Fetch now, then every REFETCH_MS; redraw every REDRAW_MS. */
  start() {
    this.load();
    setInterval(() => this.load(), REFETCH_MS);
    setInterval(() => this.draw(), REDRAW_MS);
  }

  /** A service changed: fetch again soon (changes of a moment come as one). */
  changed() {
    if (this.refetch !== null) return;
    this.refetch = setTimeout(() => {
      this.refetch = null;
      this.load();
    }, CHANGED_MS);
  }

  async load() {
    try {
      const response = await this.fetch("/timeline", { cache: "no-store" });
      if (!response.ok) return;
      this.doc = await response.json();
      this.skew = Date.parse(this.doc.now) - this.now();
      this.draw();
    } catch {
      // lmproxy unreachable: the top bar says so; the drawing stays as it was.
    }
  }

  draw() {
    if (this.doc === null) return;
    const width = Math.max(200, this.root.clientWidth - LABELS - RIGHT);
    const layout = layoutTimeline(this.doc, width, this.now() + this.skew);
    const names = layout.lanes.map((lane) => lane.name);
    const needs = new Map(this.requirements().map((s) => [s.name, s.needs]));
    const height = layout.lanes.length * LANE + AXIS;
    const drawing = svg("svg", {
      class: "timeline-drawing",
      width: LABELS + width + RIGHT,
      height,
      role: "img",
      "aria-label": "What each service did in the last hour",
    });
    layout.lanes.forEach((lane, i) => {
      const y = i * LANE;
      const color = serviceColor(lane.name, names);
      const label = svg("text", { x: MARGIN, y: y + 15, class: "lane-label" });
      // A long name is cut (its lane's tooltip has it whole).
      label.textContent = lane.name.length > 28 ? `${lane.name.slice(0, 27)}…` : lane.name;
      label.append(svg("title", {}, document.createTextNode(laneTitle(lane.name, needs))));
      drawing.append(
        svg("rect", { x: LABELS, y: y + 4, width, height: LANE - 8, class: "lane-track" }),
        label,
      );
      for (const rect of lane.rects) {
        const shape = svg("rect", {
          x: LABELS + rect.x,
          y: y + 4,
          width: rect.width,
          height: LANE - 8,
          fill: color,
          "fill-opacity": rect.opacity,
          class: `span ${rect.state}`,
        });
        shape.append(svg("title", {}, document.createTextNode(spanTitle(lane.name, rect))));
        drawing.append(shape);
      }
      for (const marker of lane.markers) drawing.append(markerShape(marker, LABELS, y));
    });
    for (const tick of layout.ticks) {
      const text = svg("text", { x: LABELS + tick.x, y: height - 4, class: "tick" });
      text.textContent = tick.label;
      const x = LABELS + tick.x;
      drawing.append(svg("line", { x1: x, x2: x, y1: 0, y2: height - AXIS, class: "grid" }), text);
    }
    this.root.replaceChildren(drawing);
  }
}

function markerShape(marker, left, y) {
  const cx = left + marker.x;
  const cy = y + LANE / 2;
  const cross = `M${cx - 4} ${cy - 4}L${cx + 4} ${cy + 4}M${cx + 4} ${cy - 4}L${cx - 4} ${cy + 4}`;
  const triangle = `M${cx - 5} ${cy - 6}H${cx + 5}L${cx} ${cy + 3}Z`;
  const failed = marker.kind === "failed";
  const shape = svg("path", { d: failed ? cross : triangle, class: `marker ${marker.kind}` });
  const what = failed ? `start failed: ${marker.reason ?? "?"}` : "evicted";
  shape.append(svg("title", {}, document.createTextNode(`${clock(marker.at)} ${what}`)));
  return shape;
}

function laneTitle(name, needs) {
  const held = Object.entries(needs.get(name) || {}).map(([r, n]) => `${r} ${n}`);
  return held.length ? `${name}: holds ${held.join(", ")} while coloured` : name;
}

function spanTitle(name, rect) {
  const to = rect.to === null ? "now" : clock(rect.to);
  return `${name}: ${rect.state.replaceAll("_", " ")}, ${clock(rect.from)} to ${to}`;
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString();
}
