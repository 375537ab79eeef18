import type { Db } from '../../shared/db';
import { findApiKeyById, type ApiKeyRecord } from '../keys/apiKeys.repository';
import { secretMatches, type PresentedKey } from '../keys/keyMaterial';

/** Which of the key's secrets the request proved: the previous one only during a rotation's grace period. */
export type MatchedSecret = 'current' | 'previous';

export type Verification =
  | { outcome: 'ok' | 'expired' | 'revoked'; key: ApiKeyRecord; secret: MatchedSecret }
  | { outcome: 'bad_secret'; key: ApiKeyRecord }
  | { outcome: 'unknown' };

export interface KeyVerifier {
  verify(presented: PresentedKey): Promise<Verification>;
  /** Drops a key from this process's cache, so its own revocations and rotations apply at once. */
  invalidate(keyId: string): void;
}

const MAX_CACHED_KEYS = 10_000;

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
// instance's own changes invalidate the entry immediately. A secret that does not match the
// cached record is checked once more against the database, so a key rotated elsewhere works at once.
export function createKeyVerifier(deps: { db: Db; pepper: string; cacheTtlMs: number; now: () => number }): KeyVerifier {
  const cache = new Map<string, { record: Promise<ApiKeyRecord | undefined>; fetchedAt: number }>();

  function load(keyId: string, now: number): Promise<ApiKeyRecord | undefined> {
    const record = findApiKeyById(deps.db, keyId);
    if (deps.cacheTtlMs > 0) {
      if (cache.size >= MAX_CACHED_KEYS) cache.delete(cache.keys().next().value as string);
      cache.set(keyId, { record, fetchedAt: now });
      record.then(
        (found) => found === undefined && cache.delete(keyId),
        () => cache.delete(keyId),
      );
    }
    return record;
  }

  return {
    async verify({ keyId, secret }) {
      const now = deps.now();
      const cached = cache.get(keyId);
      const fresh = cached !== undefined && now - cached.fetchedAt < deps.cacheTtlMs;
      let key = await (fresh ? cached.record : load(keyId, now));
      if (!key) return { outcome: 'unknown' };
      let verdict = judge(key, secret, deps.pepper, now);
      if (verdict.outcome === 'bad_secret' && fresh) {
        key = await load(keyId, now);
        verdict = key ? judge(key, secret, deps.pepper, now) : { outcome: 'unknown' };
      }
      return verdict;
    },
    invalidate(keyId) {
      cache.delete(keyId);
    },
  };
}
