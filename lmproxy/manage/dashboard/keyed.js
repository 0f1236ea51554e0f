// A keyed list of DOM nodes: rendering it again with new values updates the
// node of each key in place, creates the nodes of new keys, removes those of
// keys that left, and moves a node only when it is out of place (moving
// resets a log panel's scroll).  Works on any node with insertBefore,
// firstChild and nextSibling, so node can test it with a small fake.

export class KeyedList {
  /**
   * @param {Node} container the parent of the nodes.
   * @param {object} parts
   * @param {(key: string, value: any) => {node: Node}} parts.create a new
   *     item (an object with its `node`) for a key.
   * @param {(item: object, value: any) => void} parts.update shows a value.
   * @param {(item: object) => void} [parts.destroy] before its node is removed.
   * @param {Node | null} [after] the nodes follow this child of the container
   *     (the start when null).
   */
  constructor(container, { create, update, destroy = () => {} }, after = null) {
    this.container = container;
    this.parts = { create, update, destroy };
    this.after = after;
    /** @type {Map<string, {node: Node}>} the items by key. */
    this.items = new Map();
  }

  /**
   * Show these values, in this order.
   * @param {Iterable<[string, any]>} entries key and value pairs; keys unique.
   */
  render(entries) {
    const wanted = new Map(entries);
    for (const [key, item] of this.items) {
      if (!wanted.has(key)) {
        this.parts.destroy(item);
        item.node.remove();
        this.items.delete(key);
      }
    }
    let next = this.after ? this.after.nextSibling : this.container.firstChild;
    for (const [key, value] of wanted) {
      let item = this.items.get(key);
      if (!item) {
        item = this.parts.create(key, value);
        this.items.set(key, item);
      }
      this.parts.update(item, value);
      if (item.node === next) next = next.nextSibling;
      else this.container.insertBefore(item.node, next);
    }
  }

  /**
   * The item of a key.
   * @param {string} key
   * @returns {object | undefined}
   */
  get(key) {
    return this.items.get(key);
  }
}
