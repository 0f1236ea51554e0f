// The services table: one keyed row per service, in the chosen order, and the
// controls of that order (the select, the direction button, the sortable
// column headers), the choice remembered in localStorage.

import { serviceColor } from "./colors.js";
import { KeyedList } from "./keyed.js";
import { ServiceRow } from "./rows.js";
import {
  SORT_DEFAULT_DIR,
  columnIndicator,
  directionButton,
  loadSort,
  nextSort,
  saveSort,
  sortServices,
} from "./sorting.js";

export class ServicesView {
  /**
   * @param {object} parts
   * @param {HTMLTableElement} parts.table
   * @param {HTMLElement} parts.empty the body shown when there are no services.
   * @param {HTMLSelectElement} parts.sortKey
   * @param {HTMLButtonElement} parts.sortDir
   * @param {import("./store.js").Store} parts.store
   * @param {Storage | null} parts.storage where the order is remembered.
   * @param {(name: string, action: string) => void} parts.act runs an action.
   * @param {() => number} parts.now the clock (ms).
   * @param {{fetch: Function, openStream: Function}} parts.api for the log
   *     panels (see logs.js).
   */
  constructor({ table, empty, sortKey, sortDir, store, storage, act, now, api }) {
    Object.assign(this, { table, empty, sortKey, sortDir, store, storage });
    this.sort = loadSort(storage);
    this.headers = [...table.querySelectorAll("th[data-sort]")];
    this.rows = new KeyedList(
      table,
      {
        create: (name) => new ServiceRow(name, { act, now, api }),
        update: (row, service) => row.update(service, serviceColor(row.name, this.names)),
        destroy: (row) => row.destroy(),
      },
      empty,
    );
    this.names = [];
    sortKey.addEventListener("change", () =>
      this.setSort(sortKey.value, SORT_DEFAULT_DIR[sortKey.value]),
    );
    sortDir.addEventListener("click", () => this.setSort(this.sort.key, -this.sort.dir));
    for (const th of this.headers) {
      th.querySelector("button").addEventListener("click", () => this.setSort(th.dataset.sort));
    }
    this.renderControls();
  }

  /**
   * Choose an order, remember it, and show it.
   * @param {string} key
   * @param {1 | -1} [dir] the default: see nextSort.
   */
  setSort(key, dir) {
    this.sort = nextSort(this.sort, key, dir);
    saveSort(this.storage, this.sort);
    this.render();
  }

  /** Show the store's services, in the chosen order. */
  render() {
    this.names = this.store.serviceNames();
    const ordered = sortServices([...this.store.services.values()], this.sort);
    this.rows.render(ordered.map((service) => [service.name, service]));
    this.empty.hidden = ordered.length > 0;
    this.renderControls();
  }

  /**
   * The row of a service.
   * @param {string} name
   * @returns {ServiceRow | undefined}
   */
  row(name) {
    return this.rows.get(name);
  }

  /** Ages by the second: show them again. */
  tick() {
    for (const row of this.rows.items.values()) row.tick();
  }

  renderControls() {
    this.sortKey.value = this.sort.key;
    const button = directionButton(this.sort.dir);
    this.sortDir.textContent = button.text;
    this.sortDir.setAttribute("aria-label", button.label);
    for (const th of this.headers) {
      const { ariaSort, arrow } = columnIndicator(this.sort, th.dataset.sort);
      th.setAttribute("aria-sort", ariaSort);
      th.querySelector(".arrow").textContent = arrow;
    }
  }
}
