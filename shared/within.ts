/**
 * The work's value, or undefined once `ms` have passed without it; the work itself goes on. For
 * a stop that keeps its deadline while a write waits (on a lock, up to COLLECTOR_LOCK_TIMEOUT_MS).
 * The timer is not unref'd: it is cleared when the work ends, and the caller waits for the one or
 * the other, so the process must not exit in between for want of a pending socket.
 */
export function within<T>(work: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), Math.max(0, ms))));
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}
