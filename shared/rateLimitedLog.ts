import type { Logger } from './logger';
import { steadyNow } from './steadyClock';

/** Logs a warning of a kind, unless one of that kind was logged within the interval. */
export type RateLimitedWarn = (kind: string, fields: Record<string, unknown>, message: string) => void;

// Failures that can repeat thousands of times a second (a collector that is down, a flood of
// bad datagrams) are logged at most once per interval per kind, with the number suppressed.
export function rateLimitedWarn(logger: Logger, intervalMs: number, now: () => number = steadyNow) {
  const lastLogged = new Map<string, { at: number; suppressed: number }>();
  let lastSweep = now();
  // Kinds may be open-ended (one per webhook): a process that saw many kept them all. Once an
  // interval at most, a kind quiet for an interval with nothing suppressed is dropped (its next
  // warning is logged as it would be), and one quiet for six with its suppressed count.
  const sweep = (at: number) => {
    if (at - lastSweep < intervalMs) return;
    lastSweep = at;
    for (const [kind, entry] of lastLogged) {
      if (at - entry.at >= intervalMs * (entry.suppressed === 0 ? 1 : 6)) lastLogged.delete(kind);
    }
  };
  const warn = (kind: string, fields: Record<string, unknown>, message: string): void => {
    const at = now();
    sweep(at);
    const previous = lastLogged.get(kind);
    if (previous && at - previous.at < intervalMs) {
      previous.suppressed += 1;
      return;
    }
    logger.warn({ ...fields, kind, suppressed: previous?.suppressed ?? 0 }, message);
    lastLogged.set(kind, { at, suppressed: 0 });
  };
  /** How many kinds it remembers now. */
  return Object.assign(warn, { trackedKinds: () => lastLogged.size });
}
