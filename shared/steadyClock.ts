/**
 * Milliseconds on a clock that never steps back, near the epoch: for backoff, deadlines and
 * intervals. A wall clock stepped back (NTP, a restored VM) held every retry scheduled on it for
 * as long as the step. Times that are written down stay on Date.now.
 */
export const steadyNow = (): number => performance.timeOrigin + performance.now();
