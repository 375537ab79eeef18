import type { Db } from '../../shared/db';
import { findApiKeyById, type ApiKeyRecord } from '../keys/apiKeys.repository';
import { secretMatches, toPepper, type Pepper, type PresentedKey } from '../keys/keyMaterial';
import { setBounded } from './boundedMap';
import { pepperUpgrader } from './pepperUpgrade';

/** Which of the key's secrets the request proved: the previous one only during a rotation's grace period. */
export type MatchedSecret = 'current' | 'previous';

export type Verification =
  { outcome: 'ok' | 'expired' | 'revoked'; key: ApiKeyRecord; secret: MatchedSecret } | { outcome: 'bad_secret'; key: ApiKeyRecord } | { outcome: 'unknown' };

export interface KeyCacheStats {
  /** Verifications answered from the cache (a known key, or an id known not to exist). */
  hits: number;
  /** Verifications that read the key from PostgreSQL (or joined a read in flight). */
  misses: number;
  /** Wrong secrets on a cached key, read again in case it was rotated elsewhere. */
  reloads: number;
}

export interface KeyVerifier {
  readonly stats: Readonly<KeyCacheStats>;
  /**
   * `fresh`: read the key from PostgreSQL whatever the cache holds, for a request whose effect
   * outlives the cache's TTL (changing keys and webhooks).
   */
  verify(presented: PresentedKey, options?: { fresh?: boolean }): Promise<Verification>;
  /** Drops a key from this process's cache, so its own revocations and rotations apply at once. */
  invalidate(keyId: string): void;
  /**
   * Whether verify() would read the key from PostgreSQL for a key the cache cannot vouch for (the
   * auth throttle's beginLookup caps those reads). A fresh read of a cached key the cache shows
   * allowed to make the change (its current secret, not revoked or expired, and `allows`: the
   * route's scopes and org) is not one: its holder's changes (a revocation during a leak) are
   * never held behind a flood of made-up ids. Any other fresh read is: a revoked secret or a key
   * without the scope, refused after its read, could otherwise fill the pool with reads.
   */
  willRead(presented: PresentedKey, options?: { fresh?: boolean; allows?: (key: ApiKeyRecord) => boolean }): boolean;
}

// A request's time on both clocks: the wall's for expiry, the steady one's for the cache.
interface Instant {
  now: number;
  elapsed: number;
}

const MAX_CACHED_KEYS = 10_000;
const MAX_UNKNOWN_KEYS = 10_000;

// The peppers a secret is tried with, current first, and those a hash may stay on: KEY_PEPPER, and
// KEY_PEPPER_NEXT, which instances further along a rotation already hash with. Rehashed away from
// here, a key used on both kinds of instance was rewritten, back and forth, on nearly every use.
interface Keyring {
  tried: readonly Pepper[];
  kept: ReadonlySet<Pepper>;
}

function keyring(configured: readonly string[], next: string | null | undefined): Keyring {
  const [current, ...previous] = configured.map(toPepper);
  const upcoming = next == null ? [] : [toPepper(next)];
  return { tried: [current, ...previous, ...upcoming], kept: new Set([current, ...upcoming]) };
}

// A recorded pepper id names the one pepper to try (one comparison, as before pepper rotation); a
// hash from before ids were recorded may have been made with any configured pepper, current first.
function matchingPepper(secret: string, hash: Buffer, storedId: string | null, peppers: readonly Pepper[]): Pepper | undefined {
  for (const pepper of peppers) {
    if (storedId !== null && pepper.id !== storedId) continue;
    if (secretMatches(secret, hash, pepper.secret)) return pepper;
  }
  return undefined;
}

/** The verdict, and whether the matched hash should be remade with the current pepper. */
function judge(key: ApiKeyRecord, secret: string, peppers: Keyring, now: number): { verdict: Verification; stalePepper: boolean } {
  const current = matchingPepper(secret, key.secretHash, key.secretPepperId, peppers.tried);
  const previous =
    current === undefined && key.previousSecretHash !== null && key.previousSecretExpiresAt !== null && key.previousSecretExpiresAt.getTime() > now
      ? matchingPepper(secret, key.previousSecretHash, key.previousSecretPepperId, peppers.tried)
      : undefined;
  // The secret is checked before the status, so only the key's holder learns it is revoked or expired.
  const pepper = current ?? previous;
  if (!pepper) return { verdict: { outcome: 'bad_secret', key }, stalePepper: false };
  const matched: MatchedSecret = current ? 'current' : 'previous';
  const storedId = current ? key.secretPepperId : key.previousSecretPepperId;
  const stalePepper = !peppers.kept.has(pepper) || storedId === null;
  if (key.revokedAt) return { verdict: { outcome: 'revoked', key, secret: matched }, stalePepper };
  if (key.expiresAt && key.expiresAt.getTime() <= now) return { verdict: { outcome: 'expired', key, secret: matched }, stalePepper };
  return { verdict: { outcome: 'ok', key, secret: matched }, stalePepper };
}

// Verified keys are cached for `cacheTtlMs` so the auth path does not query PostgreSQL on every
// request. Revocation by another API instance therefore takes effect within cacheTtlMs; this
// instance's own changes invalidate the entry immediately. Ids that do not exist are cached too, for
// as long, in a map of their own: random well-formed keys then cost no query each, and cannot push
// real keys out. Loads are single-flight per key, and a failed load never evicts a cached record.
// A secret that does not match the cached record is checked once more against a fresh read, so a key
// rotated elsewhere works at once; `mayReload` lets the caller refuse that read for a key whose
// wrong secrets come too often (a flood then costs no query each). A secret proven with a previous
// pepper is rehashed with the current one after the request (api/auth/pepperUpgrade.ts); the
// entry is then dropped so the next use reads the new hash.
/** How often a key whose reloads the throttle refuses is read again for a secret its cache does not match. */
export const LOCKED_RELOAD_GAP_MS = 250;

export function createKeyVerifier(deps: {
  db: Db;
  /** KEY_PEPPER, then KEY_PEPPER_PREVIOUS, current first. */
  peppers: readonly string[];
  /** KEY_PEPPER_NEXT: verifies, and is never rehashed away from. */
  nextPepper?: string | null;
  cacheTtlMs: number;
  /** The wall clock, for expiry and the grace period's end (times written down). */
  now: () => number;
  /** The clock of the cache's TTL: steady, so a wall clock stepped back does not keep entries fresh. */
  elapsed: () => number;
  mayReload?: (keyId: string) => boolean;
  onRehashError?: (error: Error) => void;
}): KeyVerifier {
  const peppers = keyring(deps.peppers, deps.nextPepper);
  const records = new Map<string, { record: ApiKeyRecord; fetchedAt: number }>();
  const unknown = new Map<string, number>();
  const loading = new Map<string, Promise<ApiKeyRecord | undefined>>();
  const fresh = (fetchedAt: number | undefined, elapsed: number) => fetchedAt !== undefined && elapsed - fetchedAt < deps.cacheTtlMs;
  const stats: KeyCacheStats = { hits: 0, misses: 0, reloads: 0 };

  function remember(keyId: string, record: ApiKeyRecord | undefined, fetchedAt: number): void {
    if (deps.cacheTtlMs === 0) return;
    if (record) {
      unknown.delete(keyId);
      setBounded(records, keyId, { record, fetchedAt }, MAX_CACHED_KEYS);
    } else {
      records.delete(keyId);
      setBounded(unknown, keyId, fetchedAt, MAX_UNKNOWN_KEYS);
    }
  }

  function load(keyId: string): Promise<ApiKeyRecord | undefined> {
    const pending = loading.get(keyId);
    if (pending) return pending;
    const startedAt = deps.elapsed();
    // invalidate() drops the pending load, so a read that raced a revocation is not remembered.
    const current = () => loading.get(keyId) === query;
    const query: Promise<ApiKeyRecord | undefined> = findApiKeyById(deps.db, keyId).then((record) => {
      if (current()) remember(keyId, record, startedAt);
      return record;
    });
    loading.set(keyId, query);
    const settle = () => current() && loading.delete(keyId);
    query.then(settle, settle);
    return query;
  }

  const upgrade = pepperUpgrader({
    db: deps.db,
    current: peppers.tried[0],
    onUpgraded: (keyId) => invalidate(keyId),
    onError: deps.onRehashError ?? (() => {}),
  });
  function decided(key: ApiKeyRecord, secret: string, now: number): Verification {
    const { verdict, stalePepper } = judge(key, secret, peppers, now);
    // Only a key that can still be used is worth a write: a revoked or expired one never succeeds again.
    if (stalePepper && verdict.outcome === 'ok') upgrade(key, verdict.secret, secret);
    return verdict;
  }

  // A key whose reloads the throttle refuses (anyone who knows its id can lock it with wrong
  // secrets) is still read again once per LOCKED_RELOAD_GAP_MS, on either path: with none, a
  // secret rotated on another instance was refused for the cache's whole TTL and counted as a
  // failure of its owner's address. The gap runs from the record's fetch, or from when the last
  // such read started, taken before it: a read that fails or outlasts the gap still was this
  // gap's one (counted from the fetch alone, a database failing or slow let every wrong secret
  // read again).
  const lockedReads = new Map<string, number>();
  function lockedReadNow(keyId: string, fetchedAt: number, elapsed: number): boolean {
    const last = Math.max(fetchedAt, lockedReads.get(keyId) ?? -Infinity);
    if (elapsed - last < Math.min(LOCKED_RELOAD_GAP_MS, deps.cacheTtlMs)) return false;
    setBounded(lockedReads, keyId, elapsed, MAX_CACHED_KEYS);
    return true;
  }

  // An id read as not existing within the TTL: answered from the cache, a hit.
  function knownUnknown(keyId: string, elapsed: number): boolean {
    if (!fresh(unknown.get(keyId), elapsed)) return false;
    stats.hits += 1;
    return true;
  }

  // Not single-flight: a read in flight may have begun before a revocation committed. What the
  // cache can refuse it refuses without a read, as on the cached path: an id known not to exist
  // (within the TTL: a key created elsewhere since waits that long), and a wrong secret on a key
  // whose reloads the throttle refuses, but once a gap (lockedReadNow). Otherwise every request
  // costs one primary-key read.
  async function verifyFresh(keyId: string, secret: string, at: Instant): Promise<Verification> {
    if (knownUnknown(keyId, at.elapsed)) return { outcome: 'unknown' };
    const cached = records.get(keyId);
    const refusable = cached !== undefined && fresh(cached.fetchedAt, at.elapsed) && deps.mayReload?.(keyId) === false;
    if (refusable && judge(cached.record, secret, peppers, at.now).verdict.outcome === 'bad_secret' && !lockedReadNow(keyId, cached.fetchedAt, at.elapsed)) {
      stats.hits += 1;
      return { outcome: 'bad_secret', key: cached.record };
    }
    stats.misses += 1;
    const key = await findApiKeyById(deps.db, keyId);
    if (!key) remember(keyId, undefined, at.elapsed);
    return key ? decided(key, secret, at.now) : { outcome: 'unknown' };
  }

  function invalidate(keyId: string): void {
    records.delete(keyId);
    unknown.delete(keyId);
    loading.delete(keyId);
  }

  return {
    stats,
    async verify({ keyId, secret }, options = {}) {
      const at: Instant = { now: deps.now(), elapsed: deps.elapsed() };
      if (options.fresh) return verifyFresh(keyId, secret, at);
      if (knownUnknown(keyId, at.elapsed)) return { outcome: 'unknown' };
      const cached = records.get(keyId);
      const cachedFresh = cached !== undefined && fresh(cached.fetchedAt, at.elapsed);
      stats[cachedFresh ? 'hits' : 'misses'] += 1;
      const key = cachedFresh ? cached.record : await load(keyId);
      if (!key) return { outcome: 'unknown' };
      const verdict = decided(key, secret, at.now);
      if (verdict.outcome !== 'bad_secret' || !cachedFresh || (deps.mayReload?.(keyId) === false && !lockedReadNow(keyId, cached.fetchedAt, at.elapsed)))
        return verdict;
      stats.reloads += 1;
      // A read that fails is thrown, as on a miss (the database down answers 503): the cached record
      // may be the stale one the read was for, so a 401 could refuse a secret rotated elsewhere and
      // count a failure against its owner's address and key.
      const reloaded = await load(keyId);
      return reloaded ? decided(reloaded, secret, at.now) : verdict;
    },
    invalidate,
    willRead({ keyId, secret }, options = {}) {
      const elapsed = deps.elapsed();
      if (fresh(unknown.get(keyId), elapsed)) return false;
      const cached = records.get(keyId);
      if (cached === undefined || !fresh(cached.fetchedAt, elapsed)) return true;
      if (options.fresh !== true) return false;
      const { verdict } = judge(cached.record, secret, peppers, deps.now());
      return !(verdict.outcome === 'ok' && verdict.secret === 'current' && (options.allows?.(verdict.key) ?? true));
    },
  };
}
