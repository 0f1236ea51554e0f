// The form that asks for the management key when lmproxy refuses the page's
// requests (index.html's #key-panel): a password input, a button, and the
// server's reason.  While it shows, the body has the class "locked" (the
// tables hide).  The key goes from the input to onKey and nowhere else: the
// input is emptied, the key is never written into the page.

import { sendable } from "./key.js";

export class KeyForm {
  /**
   * @param {object} parts
   * @param {HTMLElement} parts.root gets the class "locked" while the form shows.
   * @param {HTMLElement} parts.panel the form's panel.
   * @param {HTMLFormElement} parts.form
   * @param {HTMLInputElement} parts.input the password input.
   * @param {HTMLElement} parts.message where the reason is said.
   * @param {(key: string) => void} parts.onKey told the key typed in.
   */
  constructor({ root, panel, form, input, message, onKey }) {
    Object.assign(this, { root, panel, input, message, onKey });
    form.addEventListener("submit", (event) => {
      event.preventDefault(); // Nothing is posted anywhere (CSP: form-action 'none').
      this.submit();
    });
  }

  /**
   * Ask for the key (shown already: the reason changes, what is typed stays).
   * @param {string} reason the server's error message.
   * @param {boolean} [wrong] whether a key was given and refused (an error).
   */
  show(reason, wrong = false) {
    this.say(reason, wrong);
    this.panel.hidden = false;
    this.root.classList.add("locked");
    this.input.focus?.();
  }

  /** Hide the form. */
  hide() {
    this.panel.hidden = true;
    this.root.classList.remove("locked");
  }

  submit() {
    const key = this.input.value.trim();
    if (key === "") {
      this.say("Enter the key.", true);
      return;
    }
    if (!sendable(key)) {
      this.say("A key is printable ASCII: this one cannot be sent.", true);
      return;
    }
    this.input.value = "";
    this.hide();
    this.onKey(key);
  }

  say(text, wrong) {
    this.message.textContent = text;
    this.message.classList.toggle("wrong", wrong);
  }
}
