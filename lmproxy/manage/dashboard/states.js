// The states of a service as lmproxy names them, and what each one means for
// the page: its label, how its resource use is drawn, which buttons it offers.
//
// SERVICE_STATES must equal lmproxy.interfaces.ServiceState (a Python StrEnum);
// tests/test_dashboard_js.py checks it.  Pure: no DOM, no clock.

/** Every state of a service, in the order of its life. */
export const SERVICE_STATES = Object.freeze([
  "stopped",
  "waiting_for_resources",
  "starting",
  "running",
  "stopping",
]);

/** What the page calls each state. */
export const STATE_LABELS = Object.freeze({
  stopped: "Stopped",
  waiting_for_resources: "Waiting for resources",
  starting: "Starting",
  running: "Running",
  stopping: "Stopping",
});

/**
 * The label of a state; an unknown state shows as it is named.
 * @param {string} state
 * @returns {string}
 */
export function stateLabel(state) {
  return Object.hasOwn(STATE_LABELS, state) ? STATE_LABELS[state] : String(state);
}

/**
 * How a service's share of a resource is drawn, by the service's state: the
 * class name of its bar segment and legend entry.
 * @param {string | undefined} state
 * @returns {"reserved" | "wanted" | "held"} reserved while it starts, wanted
 *     while it waits for resources (no segment), held otherwise.
 */
export function usageKind(state) {
  if (state === "starting") return "reserved";
  if (state === "waiting_for_resources") return "wanted";
  return "held";
}

/**
 * The start and stop buttons of a service row.
 * @param {string | undefined} state the service's state.
 * @param {"start" | "stop" | null} busy the action the page is waiting for.
 * @returns {{start: ButtonLook, stop: ButtonLook}}
 * @typedef {{hidden: boolean, disabled: boolean, text: string}} ButtonLook
 */
export function actionButtons(state, busy) {
  const stopped = state === "stopped";
  return {
    start: {
      hidden: !stopped && busy !== "start",
      disabled: busy !== null,
      text: busy === "start" ? "Starting…" : "Start",
    },
    stop: {
      hidden: stopped && busy !== "stop",
      disabled: busy !== null || state === "stopping",
      text: busy === "stop" ? "Stopping…" : "Stop",
    },
  };
}
