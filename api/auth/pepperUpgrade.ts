import type { Db } from '../../shared/db';
import { rehashSecret, type ApiKeyRecord } from '../keys/apiKeys.repository';
import { hashSecret, type Pepper } from '../keys/keyMaterial';
import type { MatchedSecret } from './keyVerifier';

// Pepper rotation: a secret that verified with a previous pepper (or a hash that predates pepper
// ids) is rehashed with the current pepper, so keys move to it as they are used and the old pepper
// can be dropped once `npm run cli -- pepper status` shows none left. Never one verified with
// KEY_PEPPER_NEXT: instances already on it made that hash (keyVerifier.ts, keyring). The request that proved the
// secret does not wait: the update runs after it, at most one per key at a time, and a failure
// is reported to onError and retried on a later use, never thrown into the auth path.
export function pepperUpgrader(deps: { db: Db; current: Pepper; onUpgraded: (keyId: string) => void; onError: (error: Error) => void }) {
  const inFlight = new Set<string>();
  return (key: ApiKeyRecord, which: MatchedSecret, secret: string): void => {
    const from = which === 'current' ? key.secretHash : key.previousSecretHash;
    if (from === null || inFlight.has(key.id)) return;
    inFlight.add(key.id);
    void Promise.resolve()
      .then(() => rehashSecret(deps.db, key.id, which, { from, to: hashSecret(secret, deps.current.secret), pepperId: deps.current.id }))
      .then((changed) => changed && deps.onUpgraded(key.id))
      .catch((error: Error) => deps.onError(error))
      .finally(() => inFlight.delete(key.id));
  };
}
