import type { Db } from '../../shared/db';
import { findApiKeyById, type ApiKeyRecord } from '../keys/apiKeys.repository';
import { secretMatches, type PresentedKey } from '../keys/keyMaterial';
import { setBounded } from './boundedMap';

/** Which of the key's secrets the request proved: the previous one only during a rotation's grace period. */
export type MatchedSecret = 'current' | 'previous';

export type Verification =
  | { outcome: 'ok' | 'expired' | 'revoked'; key: ApiKeyRecord; secret: MatchedSecret }
  | { outcome: 'bad_secret'; key: ApiKeyRecord }
  | { outcome: 'unknown' };

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
  verify(presented: PresentedKey): Promise<Verification>;
  /** Drops a key from this process's cache, so its own revocations and rotations apply at once. */
  invalidate(keyId: string): void;
}

const MAX_CACHED_KEYS = 10_000;
const MAX_UNKNOWN_KEYS = 10_000;

function judge(key: ApiKeyRecord, secret: string, pepper: string, now: number): Verification {
  const currentMatches = secretMatches(secret, key.secretHash, pepper);
  const previousMatches =
    !currentMatches &&
    key.previousSecretHash !== null &&
    key.previousSecretExpiresAt !== null &&
    key.previousSecretExpiresAt.getTime() > now &&
    secretMatches(secret, key.previousSecretHash, pepper);
  // The secret is checked before the status, so only the key's holder learns it is revoked or expired.
  if (!currentMatches && !previousMatches) return { outcome: 'bad_secret', key };
  const matched: MatchedSecret = currentMatches ? 'current' : 'previous';
  if (key.revokedAt && key.revokedAt.getTime() <= now) return { outcome: 'revoked', key, secret: matched };
  if (key.expiresAt && key.expiresAt.getTime() <= now) return { outcome: 'expired', key, secret: matched };
  return { outcome: 'ok', key, secret: matched };
}

// Verified keys are cached for `cacheTtlMs` so the auth path does not query PostgreSQL on every
// request. Revocation by another API instance therefore takes effect within cacheTtlMs; this
// instance's own changes invalidate the entry immediately. Ids that do not exist are cached too, for
// as long, in a map of their own: random well-formed keys then cost no query each, and cannot push
// real keys out. Loads are single-flight per key, and a failed load never evicts a cached record.
// A secret that does not match the cached record is checked once more against a fresh read, so a key
// rotated elsewhere works at once; `mayReload` lets the caller refuse that read for a key whose
// wrong secrets come too often (a flood then costs no query each).
export function createKeyVerifier(deps: {
  db: Db;
  pepper: string;
  cacheTtlMs: number;
  now: () => number;
  mayReload?: (keyId: string) => boolean;
}): KeyVerifier {
  const records = new Map<string, { record: ApiKeyRecord; fetchedAt: number }>();
  const unknown = new Map<string, number>();
  const loading = new Map<string, Promise<ApiKeyRecord | undefined>>();
  const fresh = (fetchedAt: number | undefined, now: number) => fetchedAt !== undefined && now - fetchedAt < deps.cacheTtlMs;
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
    const startedAt = deps.now();
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

  return {
    stats,
    async verify({ keyId, secret }) {
      const now = deps.now();
      if (fresh(unknown.get(keyId), now)) {
        stats.hits += 1;
        return { outcome: 'unknown' };
      }
      const cached = records.get(keyId);
      const cachedFresh = cached !== undefined && fresh(cached.fetchedAt, now);
      stats[cachedFresh ? 'hits' : 'misses'] += 1;
      const key = cachedFresh ? cached.record : await load(keyId);
      if (!key) return { outcome: 'unknown' };
      const verdict = judge(key, secret, deps.pepper, now);
      if (verdict.outcome !== 'bad_secret' || !cachedFresh || deps.mayReload?.(keyId) === false) return verdict;
      stats.reloads += 1;
      // The cached verdict stands if the fresh read fails: the database being down is no reason to 500.
      const reloaded = await load(keyId).catch(() => undefined);
      return reloaded ? judge(reloaded, secret, deps.pepper, now) : verdict;
    },
    invalidate(keyId) {
      records.delete(keyId);
      unknown.delete(keyId);
      loading.delete(keyId);
    },
  };
}
