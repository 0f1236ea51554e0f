// What the page tells a person in passing: toasts, and the question before a
// stop that would cut connections off (the <dialog id="confirm">).

import { el } from "./dom.js";
import { forceQuestion } from "./messages.js";

/** How long a toast stays. */
export const TOAST_MS = 6000;

export class Feedback {
  /**
   * @param {object} parts
   * @param {HTMLElement} parts.toasts the toasts' parent.
   * @param {HTMLDialogElement} parts.dialog with #confirm-text, #confirm-cancel
   *     and #confirm-force inside.
   */
  constructor({ toasts, dialog }) {
    this.toasts = toasts;
    this.dialog = dialog;
    this.question = dialog.querySelector("#confirm-text");
    dialog.querySelector("#confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
    dialog.querySelector("#confirm-force").addEventListener("click", () => dialog.close("force"));
  }

  /**
   * Show a message for a while.
   * @param {string} text
   * @param {"info" | "error"} [kind]
   */
  toast(text, kind = "info") {
    const role = kind === "error" ? "alert" : "status";
    const node = el("div", { class: `toast ${kind}`, role }, text);
    this.toasts.append(node);
    setTimeout(() => node.remove(), TOAST_MS);
  }

  /**
   * Ask whether to stop a service although it has clients.
   * @param {string} name
   * @param {object | undefined} service its service object, if known.
   * @returns {Promise<boolean>} whether to stop it all the same.
   */
  confirmForce(name, service) {
    this.question.textContent = forceQuestion(name, service ? service.proxied_connections : 0);
    this.dialog.returnValue = "";
    this.dialog.showModal();
    return new Promise((resolve) => {
      this.dialog.addEventListener("close", () => resolve(this.dialog.returnValue === "force"), {
        once: true,
      });
    });
  }
}
