import { networkOf } from '../../shared/ipTruncation';
import { setBounded } from './boundedMap';

// Failed authentication attempts, counted per client address (an IPv6 client's /64) and per key id
// in fixed windows; and the reads of keys in flight, per address and from all of them.
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
  /** Reads of keys in flight at once from every address (see beginLookup); no limit when not given. */
  maxLookups?: number;
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

/** The reads of keys from every address (beginLookup). */
export interface LookupStats {
  /** In flight now, and the most there ever were at once. */
  running: number;
  peak: number;
  /** Refused because maxLookups ran and LOOKUPS_WAITING_PER_SLOT times as many waited. */
  refused: number;
}

/** `subject`: the key id, or the address (an IPv6 client's /64, throttledSubject). */
export type LockoutListener = (scope: 'ip' | 'key', subject: string) => void;

export interface AuthThrottle {
  readonly stats: Readonly<ThrottleStats>;
  readonly lookupStats: Readonly<LookupStats>;
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
  /**
   * A read of `keyId` from PostgreSQL (a verification the cache cannot answer), from any address:
   * `end` to call when it ends, at once or once a read in flight ends, or undefined when too many
   * wait (refuse it: the server is busy). Per address, the limits cost an attacker nothing: made-up
   * well-formed ids (the checksum is public) from 600 addresses, each within its limits, filled
   * the pool every route and /healthz share, so every org's requests waited seconds and failed
   * with 503, and /healthz said the database was down. A fresh read is one of its own, those of one
   * key id share one (the verifier's load).
   */
  beginLookup(keyId: string, fresh: boolean): (() => void) | Promise<() => void> | undefined;
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

// An IPv6 client is counted by its /64 (2001:db8:1:2::/64), an IPv4 client by its address: a
// subscriber is given a whole /64, and each of its addresses had windows of its own, so one
// client could fail without limit.
export function throttledSubject(ip: string): string {
  return ip.includes(':') ? `${networkOf(ip)}::/64` : ip;
}

// Reads of keys waiting for one in flight to end, at most this many times maxLookups: an honest
// burst of uncached keys waits its turn (a read is a database round trip, about a millisecond, so
// the queue drains in tens of milliseconds); a flood beyond it is refused at once rather than held
// in a queue without end. Not fewer: an API process starting cold behind a busy load balancer meets
// hundreds of distinct keys in its first milliseconds: at 4 times the cap, most would be refused.
export const LOOKUPS_WAITING_PER_SLOT = 32;

interface WaitingLookup {
  keyId: string;
  fresh: boolean;
  start: (end: () => void) => void;
}

// Process-wide reads of keys, at most `cap` at once. A read that ends hands its place to the
// next waiting one; the reads of a key id waiting when a read of it begins join that one.
function lookupSlots(cap: number, stats: LookupStats) {
  const sharing = new Map<string, number>();
  const waiting: WaitingLookup[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next.start(started(next.keyId, next.fresh));
    else stats.running -= 1;
  };
  const join = (keyId: string) => {
    if (addTo(sharing, keyId, 1) === 1) joinWaiting(keyId);
    return () => {
      if (addTo(sharing, keyId, -1) === 0) release();
    };
  };
  const joinWaiting = (keyId: string) => {
    for (let i = waiting.length - 1; i >= 0; i--) {
      const { keyId: waitingFor, fresh, start } = waiting[i];
      if (fresh || waitingFor !== keyId) continue;
      waiting.splice(i, 1);
      start(join(keyId));
    }
  };
  // With a place held.
  const started = (keyId: string, fresh: boolean) => (fresh ? release : join(keyId));
  return (keyId: string, fresh: boolean): (() => void) | Promise<() => void> | undefined => {
    if (!fresh && sharing.has(keyId)) return join(keyId);
    if (stats.running < cap) {
      stats.running += 1;
      stats.peak = Math.max(stats.peak, stats.running);
      return started(keyId, fresh);
    }
    if (waiting.length >= LOOKUPS_WAITING_PER_SLOT * cap) {
      stats.refused += 1;
      return undefined;
    }
    return new Promise((start) => waiting.push({ keyId, fresh, start }));
  };
}

// An address that fails too often is refused whatever it presents. A key id is locked only for
// failures: a request with the right secret is never refused because others failed on its key.
export function createAuthThrottle(limits: ThrottleLimits, now: () => number, onLockout: LockoutListener = () => {}): AuthThrottle {
  const stats: ThrottleStats = { failures: 0, refusedByIp: 0, refusedByKey: 0, lockouts: 0, evicted: 0 };
  const lookupStats: LookupStats = { running: 0, peak: 0, refused: 0 };
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
    lookupStats,
    refuseIp: (ip) => refused(byIp.retryAfterMs(throttledSubject(ip))),
    beginVerification(ip, keyId, fresh) {
      const subject = throttledSubject(ip);
      const entry = verifying.get(subject) ?? { reads: 0, byKey: new Map<string, number>(), waiting: [] };
      verifying.set(subject, entry);
      // Decided at once but for a read over the cap: no promise on the auth path's common way.
      return start(subject, entry, keyId, fresh) ?? waitTurn(subject, entry, keyId, fresh);
    },
    keyLocked: (keyId) => byKey.retryAfterMs(keyId) > 0,
    failed(ip, keyId) {
      stats.failures += 1;
      const wait = keyId === undefined ? 0 : byKey.retryAfterMs(keyId);
      if (wait > 0) stats.refusedByKey += 1;
      byIp.record(throttledSubject(ip));
      if (keyId !== undefined) byKey.record(keyId);
      return wait;
    },
    beginLookup: lookupSlots(limits.maxLookups ?? Infinity, lookupStats),
  };
}
