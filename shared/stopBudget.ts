// How long a stop may take, in one place: the launcher's SIGKILL (scripts/lib/supervisor.ts) is
// derived from the processes' budget, so the two cannot drift apart. They did: the collector's
// 10 s final flush and 5 s pool wait met the launcher's 15 s, and a stop with a fold waiting on
// a lock was killed and `npm start` exited 1.

/**
 * The whole stop of a process the launcher runs (the API, the collector, each of its receivers),
 * from its signal to its exit.
 */
export const STOP_BUDGET_MS = 12_000;

/**
 * Of the collector's budget, what is left, after its final flush and folds, to close its pools:
 * a write or fold still waiting (on a lock) is given up, the fold thread terminated.
 */
export const COLLECTOR_CLOSE_MS = 2_000;

// Between the launcher's SIGTERM and the stop's start (a receive loop or a fold's JavaScript
// busy when the signal comes), and after the stop (the exit itself, on a loaded host).
const KILL_MARGIN_MS = 3_000;

/** How long the launcher waits after its SIGTERM before its SIGKILL. */
export const KILL_AFTER_MS = STOP_BUDGET_MS + KILL_MARGIN_MS;
