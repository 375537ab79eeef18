import type { Logger } from './logger';
import { steadyNow } from './steadyClock';

// Failures that can repeat thousands of times a second (a collector that is down, a flood of
// bad datagrams) are logged at most once per interval per kind, with the number suppressed.
export function rateLimitedWarn(logger: Logger, intervalMs: number, now: () => number = steadyNow) {
  const lastLogged = new Map<string, { at: number; suppressed: number }>();
  return (kind: string, fields: Record<string, unknown>, message: string): void => {
    const at = now();
    const previous = lastLogged.get(kind);
    if (previous && at - previous.at < intervalMs) {
      previous.suppressed += 1;
      return;
    }
    logger.warn({ ...fields, kind, suppressed: previous?.suppressed ?? 0 }, message);
    lastLogged.set(kind, { at, suppressed: 0 });
  };
}
