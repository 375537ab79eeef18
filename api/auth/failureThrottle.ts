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
  /** Verifications one address may have waiting on PostgreSQL at once (see beginVerification). */
  maxVerifyingPerIp?: number;
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
  /**
   * Before a verification of `keyId` from `ip`: a wait in ms (refused, counted as refused by
   * address), or 0 and `end`, to call when it ends. Failures are counted when a verification ends,
   * so the limit checked before it let one address send any number at once: 10,000 requests of
   * unknown ids from one address were all read, none refused, and the pool's queue held every
   * org's reads behind them. The reads an address has in flight count against its remaining
   * failures (refused beyond them), and at most maxVerifyingPerIp run at once: the next ones wait
   * for one to end (an honest burst of uncached keys from one address, or a proxy's, is served,
   * in turn). A fresh verification is a read of its own, those of one key id share one (the
   * verifier's load), and a key answered from the cache is in flight for a microtask.
   */
  beginVerification(ip: string, keyId: string, fresh: boolean): Verification | Promise<Verification>;
  /** Whether failures naming this key id reached the limit: the verifier then skips its reload. */
  keyLocked(keyId: string): boolean;
  /**
   * A failed attempt from `ip`, naming `keyId` when it is an existing key's (not for a malformed key
   * or an id that names no key: those count against the address only). Returns the ms the key id
   * is locked for (the caller answers 429 instead of 401, counted as refused), or 0.
   */
  failed(ip: string, keyId?: string): number;
}

/** A verification's place: refused (a wait in ms), or begun, with `end` to call when it ends. */
export interface Verification {
  waitMs: number;
  end: () => void;
}

interface Verifying {
  reads: number;
  byKey: Map<string, number>;
  waiting: Array<() => void>;
}

// A count kept only while it is above 0; returns the new count.
function addTo(counts: Map<string, number>, subject: string, delta: number): number {
  const count = (counts.get(subject) ?? 0) + delta;
  if (count > 0) counts.set(subject, count);
  else counts.delete(subject);
  return count;
}

// The wait told to an address refused for its verifications in flight (not for failures): they
// end within a database round trip.
const VERIFYING_RETRY_MS = 1000;

function failureWindows(maxFailures: number, limits: ThrottleLimits, now: () => number, stats: ThrottleStats, onLockout: (subject: string) => void) {
  const windows = new Map<string, { since: number; failures: number }>();
  return {
    retryAfterMs(subject: string, pending = 0): number {
      const window = windows.get(subject);
      const failures = window === undefined || now() - window.since >= limits.windowMs ? 0 : window.failures;
      if (maxFailures === 0 || failures + pending < maxFailures) return 0;
      // Short of the limit, the verifications in flight make up the rest.
      return failures < maxFailures ? VERIFYING_RETRY_MS : Math.max(0, window!.since + limits.windowMs - now());
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
  // Bounded by the requests in progress: an address leaves it when its last one ends.
  const verifying = new Map<string, Verifying>();
  const refused = (wait: number) => {
    if (wait > 0) stats.refusedByIp += 1;
    return wait;
  };
  const cap = limits.maxVerifyingPerIp ?? Infinity;
  // The next verification waiting its turn, if there is room: it runs in a microtask, after the
  // failure of the one that ended is counted. Else the address leaves the map once nothing of it
  // is in flight or waiting.
  const next = (ip: string, entry: Verifying) => {
    if (entry.reads < cap && entry.waiting.length > 0) entry.waiting.shift()!();
    else if (entry.reads === 0 && entry.byKey.size === 0 && entry.waiting.length === 0) verifying.delete(ip);
  };
  // Refused, started, or undefined: to wait for a read to end.
  function start(ip: string, entry: Verifying, keyId: string, fresh: boolean): Verification | undefined {
    const newRead = fresh || !entry.byKey.has(keyId);
    // Checked as it starts, after the failures of the reads it waited for are counted.
    const waitMs = newRead ? refused(byIp.retryAfterMs(ip, entry.reads)) : 0;
    if (waitMs > 0) {
      next(ip, entry);
      return { waitMs, end: () => {} };
    }
    if (newRead && entry.reads >= cap) return undefined;
    if (fresh) entry.reads += 1;
    else if (addTo(entry.byKey, keyId, 1) === 1) entry.reads += 1;
    const end = () => {
      if (fresh) entry.reads -= 1;
      else if (addTo(entry.byKey, keyId, -1) === 0) entry.reads -= 1;
      next(ip, entry);
    };
    return { waitMs: 0, end };
  }
  async function waitTurn(ip: string, entry: Verifying, keyId: string, fresh: boolean): Promise<Verification> {
    for (;;) {
      await new Promise<void>((resolve) => entry.waiting.push(resolve));
      const started = start(ip, entry, keyId, fresh);
      if (started) return started;
    }
  }
  return {
    stats,
    refuseIp: (ip) => refused(byIp.retryAfterMs(ip)),
    beginVerification(ip, keyId, fresh) {
      const entry = verifying.get(ip) ?? { reads: 0, byKey: new Map<string, number>(), waiting: [] };
      verifying.set(ip, entry);
      // Decided at once but for a read over the cap: no promise on the auth path's common way.
      return start(ip, entry, keyId, fresh) ?? waitTurn(ip, entry, keyId, fresh);
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
