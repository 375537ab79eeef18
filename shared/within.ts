/**
 * The work's value, or undefined once `ms` have passed without it; the work itself goes on. For
 * a stop that keeps its deadline while a write waits (on a lock, up to COLLECTOR_LOCK_TIMEOUT_MS).
 */
export function within<T>(work: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), Math.max(0, ms)).unref()));
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}
