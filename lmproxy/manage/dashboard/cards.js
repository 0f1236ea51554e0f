// The resource cards: one per resource, each with its bar (a segment per
// service), its figures and its legend, all keyed and updated in place.

import { serviceColor } from "./colors.js";
import { el, setText, swatch } from "./dom.js";
import { KeyedList } from "./keyed.js";
import { resourceCard } from "./usage.js";

class ResourceCard {
  /**
   * @param {string} name the resource.
   * @param {() => Array<string>} names every service's name, in config order.
   */
  constructor(name, names) {
    const colorOf = (service) => serviceColor(service, names());
    this.bar = el("div", { class: "bar", role: "img" });
    const figures = el("dl", { class: "figures" });
    this.nobody = el("li", { class: "muted", text: "Nobody uses it." });
    const legend = el("ul", { class: "legend" }, this.nobody);
    const title = el("h3", { text: name });
    this.node = el("article", { class: "resource" }, title, this.bar, figures, legend);
    this.segments = new KeyedList(this.bar, {
      create: () => ({ node: el("div") }),
      update: ({ node }, segment) => {
        node.className = `segment ${segment.kind}`;
        node.title = segment.title;
        node.style.width = segment.width;
        node.style.backgroundColor = colorOf(segment.key);
      },
    });
    this.figures = new KeyedList(figures, {
      create: (label) => {
        const value = el("dd");
        return { node: el("div", {}, el("dt", { text: label }), value), value };
      },
      update: (item, figure) => {
        item.node.className = figure.full ? "figure full" : "figure";
        setText(item.value, figure.value);
      },
    });
    this.legend = new KeyedList(
      legend,
      {
        create: (service) => {
          const item = {
            dot: swatch(colorOf(service)),
            amount: el("span", { class: "legend-amount" }),
            tag: el("span", { class: "tag" }),
          };
          const label = el("span", { class: "legend-name", text: service });
          item.node = el("li", {}, item.dot, label, item.amount, item.tag);
          return item;
        },
        update: (item, entry) => {
          item.node.className = entry.kind;
          item.dot.style.backgroundColor = colorOf(entry.key);
          setText(item.amount, entry.amount);
          item.tag.hidden = entry.tag === null;
          setText(item.tag, entry.tag ?? "");
        },
      },
      this.nobody,
    );
  }

  /**
   * @param {object} resource a resource object of /status.
   * @param {(service: string) => string | undefined} stateOf
   */
  update(resource, stateOf) {
    const card = resourceCard(resource, stateOf);
    this.bar.setAttribute("aria-label", card.label);
    this.segments.render(card.segments.map((s) => [s.key, s]));
    this.figures.render(card.figures.map((f) => [f.key, f]));
    this.legend.render(card.legend.map((e) => [e.key, e]));
    this.nobody.hidden = card.legend.length > 0;
  }
}

export class ResourcesView {
  /**
   * @param {object} parts
   * @param {HTMLElement} parts.section hidden while there are no resources.
   * @param {HTMLElement} parts.grid the cards' parent.
   * @param {import("./store.js").Store} parts.store
   */
  constructor({ section, grid, store }) {
    this.section = section;
    this.store = store;
    const names = () => store.serviceNames();
    const stateOf = (service) => store.stateOf(service);
    this.cards = new KeyedList(grid, {
      create: (name) => new ResourceCard(name, names),
      update: (card, resource) => card.update(resource, stateOf),
    });
  }

  /** Show the store's resources (a card's segments follow the services' states). */
  render() {
    this.cards.render(this.store.resources.entries());
    this.section.hidden = this.store.resources.size === 0;
  }
}
