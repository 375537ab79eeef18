import { setBounded } from './boundedMap';

// Failed authentication attempts, counted per client address and per key id in fixed windows.
// Pure logic: the clock is injected and nothing runs on a timer; a window past its end is replaced
// when its subject fails again, or pushed out when the map is full. Every check is a Map lookup.

export interface ThrottleLimits {
  /** Failures from one address within a window before it is refused outright; 0 disables. */
  maxFailuresPerIp: number;
  /** Failures naming one key id within a window before further failures on it answer 429; 0 disables. */
  maxFailuresPerKey: number;
  windowMs: number;
  /** Addresses (and, apart, ids of existing keys) tracked at once; the oldest window is forgotten first. */
  maxEntries: number;
}

export interface ThrottleStats {
  failures: number;
  refusedByIp: number;
  refusedByKey: number;
  /** Times an address or a key id reached its limit. */
  lockouts: number;
  /** Windows forgotten early because a map was full. */
  evicted: number;
}

export type LockoutListener = (scope: 'ip' | 'key', subject: string) => void;

export interface AuthThrottle {
  readonly stats: Readonly<ThrottleStats>;
  /** Before verification: ms the address must wait after too many failures (counted as refused), or 0. */
  refuseIp(ip: string): number;
  /** Whether failures naming this key id reached the limit: the verifier then skips its reload. */
  keyLocked(keyId: string): boolean;
  /**
   * A failed attempt from `ip`, naming `keyId` when it is an existing key's (not for a malformed key
   * or an id that names no key: those count against the address only). Returns the ms the key id
   * is locked for (the caller answers 429 instead of 401, counted as refused), or 0.
   */
  failed(ip: string, keyId?: string): number;
}

function failureWindows(maxFailures: number, limits: ThrottleLimits, now: () => number, stats: ThrottleStats, onLockout: (subject: string) => void) {
  const windows = new Map<string, { since: number; failures: number }>();
  return {
    retryAfterMs(subject: string): number {
      const window = windows.get(subject);
      if (maxFailures === 0 || window === undefined || window.failures < maxFailures) return 0;
      return Math.max(0, window.since + limits.windowMs - now());
    },
    record(subject: string): void {
      if (maxFailures === 0) return;
      const at = now();
      const window = windows.get(subject);
      if (window !== undefined && at - window.since < limits.windowMs) window.failures += 1;
      else if (setBounded(windows, subject, { since: at, failures: 1 }, limits.maxEntries)) stats.evicted += 1;
      if (windows.get(subject)!.failures === maxFailures) {
        stats.lockouts += 1;
        onLockout(subject);
      }
    },
  };
}

// An address that fails too often is refused whatever it presents. A key id is locked only for
// failures: a request with the right secret is never refused because others failed on its key.
export function createAuthThrottle(limits: ThrottleLimits, now: () => number, onLockout: LockoutListener = () => {}): AuthThrottle {
  const stats: ThrottleStats = { failures: 0, refusedByIp: 0, refusedByKey: 0, lockouts: 0, evicted: 0 };
  const byIp = failureWindows(limits.maxFailuresPerIp, limits, now, stats, (ip) => onLockout('ip', ip));
  const byKey = failureWindows(limits.maxFailuresPerKey, limits, now, stats, (keyId) => onLockout('key', keyId));
  return {
    stats,
    refuseIp(ip) {
      const wait = byIp.retryAfterMs(ip);
      if (wait > 0) stats.refusedByIp += 1;
      return wait;
    },
    keyLocked: (keyId) => byKey.retryAfterMs(keyId) > 0,
    failed(ip, keyId) {
      stats.failures += 1;
      const wait = keyId === undefined ? 0 : byKey.retryAfterMs(keyId);
      if (wait > 0) stats.refusedByKey += 1;
      byIp.record(ip);
      if (keyId !== undefined) byKey.record(keyId);
      return wait;
    },
  };
}
