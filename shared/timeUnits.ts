// Milliseconds in an hour and a day: hour buckets, retention periods and dormancy are counted in them.
export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;

/** The start of the UTC clock hour `ms` falls in. */
export const hourOf = (ms: number): number => ms - (ms % HOUR_MS);
