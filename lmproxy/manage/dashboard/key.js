// The management API key (ManagementApi.ApiKeys), when lmproxy asks for one:
// kept in the tab's sessionStorage (never localStorage, never in a URL or the
// page), sent as "Authorization: Bearer <key>" on every request the page
// makes, and asked for again when the API answers 401.  Without a key
// configured, the API never answers 401 and none of this shows.

/** The sessionStorage item that holds the key. */
export const KEY_ITEM = "lmproxy.managementKey";

export class ManagementKey {
  /**
   * @param {object} options
   * @param {Storage | null} options.storage the tab's sessionStorage; null
   *     (storage disabled): the key lasts until a reload.
   * @param {typeof fetch} options.fetch the browser's fetch.
   * @param {(message: string, wrong: boolean) => void} options.onRefused
   *     told when the API refused the key (wrong: true) or its absence: the
   *     server's error message.
   */
  constructor({ storage, fetch, onRefused }) {
    Object.assign(this, { storage, onRefused });
    this.send = fetch;
    this.current = null;
    try {
      this.current = storage?.getItem(KEY_ITEM) ?? null;
    } catch {
      // Storage refused: no key yet.
    }
    // The page's fetch: every part calls this one, never the browser's own.
    this.fetch = (url, init) => this.request(url, init);
  }

  /** @returns {string | null} the key, if one was given. */
  get() {
    return this.current;
  }

  /**
   * Keep a key for this tab (null: forget it).
   * @param {string | null} key
   */
  set(key) {
    this.current = key;
    try {
      if (key === null) this.storage?.removeItem(KEY_ITEM);
      else this.storage?.setItem(KEY_ITEM, key);
    } catch {
      // Storage refused (full, disabled): the key lasts until a reload.
    }
  }

  /**
   * fetch, with the key: a 401 forgets the key and tells onRefused, unless
   * the key changed meanwhile (a late answer to an old key is no news).
   * @param {string} url
   * @param {RequestInit} [init]
   * @returns {Promise<Response>} the response, whatever its status.
   */
  async request(url, init = {}) {
    const key = this.get();
    const headers = new Headers(init.headers);
    if (key !== null) headers.set("Authorization", `Bearer ${key}`);
    const response = await this.send(url, { ...init, headers });
    if (response.status === 401 && key === this.get()) {
      this.set(null);
      this.onRefused(await refusal(response), key !== null);
    }
    return response;
  }
}

/**
 * What the form says when the API refused: its error message, else the status.
 * @param {Response} response a 401.
 * @returns {Promise<string>}
 */
export async function refusal(response) {
  const fallback = `lmproxy asks for its management key (HTTP ${response.status}).`;
  try {
    const body = await response.clone().json();
    return typeof body.error === "string" && body.error ? body.error : fallback;
  } catch {
    return fallback;
  }
}

/**
 * Whether a key can be sent: printable ASCII (a header carries other
 * characters as Latin-1 bytes at best, which never match the key lmproxy
 * reads as UTF-8), so that the form says so rather than every request failing.
 * @param {string} key
 * @returns {boolean}
 */
export function sendable(key) {
  return /^[\x20-\x7e]+$/.test(key);
}
