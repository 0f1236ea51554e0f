// Starting and stopping a service from the page: POST the action, show the
// row as busy meanwhile, ask before a stop that would cut connections off
// (the API answers 409), and put the service object the API answers with
// into the store.

import { servicePath } from "./format.js";
import { actionFailed } from "./messages.js";

export class Actions {
  /**
   * @param {object} parts
   * @param {import("./store.js").Store} parts.store
   * @param {import("./feedback.js").Feedback} parts.feedback
   * @param {(name: string) => {setBusy: Function} | undefined} parts.rowOf
   * @param {typeof fetch} parts.fetch the page's fetch (with the key).
   */
  constructor({ store, feedback, rowOf, fetch }) {
    Object.assign(this, { store, feedback, rowOf, fetch });
  }

  /**
   * Start or stop a service.
   * @param {string} name
   * @param {"start" | "stop"} action
   * @param {boolean} [force] stop even if it has clients.
   * @returns {Promise<void>} settles when the API answered (never rejects).
   */
  async run(name, action, force = false) {
    const row = this.rowOf(name);
    row?.setBusy(action);
    try {
      const url = servicePath(name, action) + (force ? "?force=1" : "");
      const response = await this.fetch(url, { method: "POST" });
      const body = await response.json().catch(() => ({}));
      if (response.status === 409 && !force) {
        row?.setBusy(null);
        if (await this.feedback.confirmForce(name, body.service)) {
          await this.run(name, action, true);
        }
        return;
      }
      if (body.service) this.store.apply("service", body.service);
      else if (response.ok && body.name === name) this.store.apply("service", body);
      if (!response.ok) {
        const why = { error: body.error, status: response.status };
        this.feedback.toast(actionFailed(action, name, why), "error");
      }
    } catch (error) {
      this.feedback.toast(actionFailed(action, name, { reason: error.message }), "error");
    } finally {
      row?.setBusy(null);
    }
  }
}
