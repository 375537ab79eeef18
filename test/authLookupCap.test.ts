import { randomBytes, randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { LOOKUPS_WAITING_PER_SLOT } from '../api/auth/failureThrottle';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { startApi } from '../api/main';
import { insertOrganization } from '../api/orgs/orgs.repository';
import { waitFor } from '../harness/wait';
import { loadConfig } from '../shared/config';
import type { Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { TABLE } from '../shared/tables';
import { freshDatabase, onCitus } from './helpers/database';

// Made-up well-formed keys from many addresses against the API as it runs (api/main.ts), its
// reads of keys held by a lock on the keys table: a reviewer's 600 addresses, each within its own
// limits, filled the pool every route shares, every org's requests waited seconds and failed, and
// /healthz answered "database down" while PostgreSQL was up. TRUST_PROXY=loopback lets one test
// play every address with X-Forwarded-For.

const logger = createLogger({ level: 'silent', name: 'test' });
const ONE_LOCK = { skip: onCitus() && 'locks the keys table every test shares' };

async function world(t: Test, env: Record<string, string>) {
  const { db, url } = await freshDatabase(t);
  const org = await insertOrganization(db, 'acme');
  const service = createApiKeysService({ db, pepper: loadConfig({ NODE_ENV: 'test' }).api.keyPepper, defaultGraceSeconds: 60, now: Date.now });
  // The first may revoke keys; the others have no scope.
  const keys = await Promise.all(
    [1, 2, 3, 4, 5, 6].map(async (n) => (await service.create(org.id, { name: `k${n}`, scopes: n === 1 ? ['keys:write'] : [], expiresAt: null })).plaintext),
  );
  const config = loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    API_METRICS_PORT: '0',
    USAGE_TRACKING: 'false',
    TRUST_PROXY: 'loopback',
    DATABASE_POOL_MAX: '4',
    // The cached key stays cached however long the test takes.
    KEY_CACHE_TTL_MS: '60000',
    ...env,
  });
  const api = await startApi(config, logger, url);
  // The lock goes first: the stop would wait for the reads held on it.
  let release = async () => {};
  t.teardown(async () => {
    await release();
    await api.stop();
  });
  // Every read of api_keys waits for the lock until the test lets it go.
  const lockKeys = async () => {
    const held = await db.transaction();
    await held.raw(`lock table ${TABLE.apiKeys} in access exclusive mode`);
    release = async () => {
      await held.rollback().catch(() => undefined);
    };
    return () => release();
  };
  const get = async (path: string, ip: string, key?: string, method = 'GET') => {
    const response = await fetch(`http://127.0.0.1:${api.port}${path}`, {
      method,
      headers: { 'x-forwarded-for': ip, ...(key ? { authorization: `Bearer ${key}` } : {}) },
    });
    return { status: response.status, retryAfter: response.headers.get('retry-after'), body: (await response.json()) as any };
  };
  return { db, api, org, keys, get, lockKeys };
}

const unknownKey = () => `ku_${randomBytes(16).toString('hex')}_${randomBytes(32).toString('base64url')}`;

// With AUTH_THROTTLE_MAX_LOOKUPS=2: the reads that run, and those that wait their turn.
const LET_IN = 2 + LOOKUPS_WAITING_PER_SLOT * 2;

const waitingOnLock = async (db: Db, applicationName: string): Promise<number> =>
  (
    await db.raw(`select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name = ? and wait_event_type = 'Lock'`, [
      applicationName,
    ])
  ).rows[0].n;

t.test(
  'made-up keys from many addresses: at most AUTH_THROTTLE_MAX_LOOKUPS reads at once, the rest 429; cached keys and /healthz served',
  ONE_LOCK,
  async (t) => {
    const { db, org, keys, get, lockKeys } = await world(t, { AUTH_THROTTLE_MAX_LOOKUPS: '2' });
    const [cachedKey] = keys;
    const scopeless = keys[5];
    t.equal((await get('/api/whoami', '192.0.2.200', cachedKey)).status, 200, 'a key read before the flood, now cached');
    t.equal((await get('/api/whoami', '192.0.2.201', scopeless)).status, 200, 'and one without a scope');
    const release = await lockKeys();

    const answers: Array<Awaited<ReturnType<typeof get>>> = [];
    const flood = Array.from({ length: LET_IN + 30 }, (_, i) => get('/api/whoami', `198.51.100.${i + 1}`, unknownKey()).then((answer) => answers.push(answer)));
    // 2 reads run, LOOKUPS_WAITING_PER_SLOT × 2 wait their turn, the other 30 are answered at once (or, past the cap,
    // more reads are on the lock).
    await waitFor('the refused reads', async () => (answers.length === 30 || (await waitingOnLock(db, 'keyusage-api')) > 2 ? true : undefined));
    await waitFor('the reads let in to reach the lock', async () => ((await waitingOnLock(db, 'keyusage-api')) >= 2 ? true : undefined));
    t.equal(await waitingOnLock(db, 'keyusage-api'), 2, 'two reads of keys in flight, the cap, however many addresses ask');
    t.same(
      answers.map((answer) => [answer.status, answer.retryAfter, answer.body.error.code]),
      Array(30).fill([429, '1', 'too_many_requests']),
      'the rest refused at once, with Retry-After',
    );
    t.match(
      answers[0]?.body.error.message,
      /server is busy verifying other API keys \(AUTH_THROTTLE_MAX_LOOKUPS/,
      'the message says the server is busy, not that the caller failed',
    );

    t.equal((await get('/api/whoami', '203.0.113.7', cachedKey)).status, 200, 'a cached key from another address is served meanwhile');
    t.same(await get('/healthz', '203.0.113.8'), { status: 200, retryAfter: null, body: { status: 'ok', database: 'up' } }, '/healthz: the database is up');
    t.equal(await waitingOnLock(db, 'keyusage-api'), 2, 'still two');
    // A change route reads its key afresh (currentSecret): for a cached key the cache shows allowed
    // to make the change, outside the cap, or a flood of made-up ids held a leaked key's revocation
    // back with 429. A key refused after its read (no scope; a revoked secret) stays inside: such
    // reads, outside, filled the pool again.
    const revoke = (key: string, ip: string) => get(`/api/orgs/${org.id}/api-keys/${randomUUID()}/revoke`, ip, key, 'POST');
    t.match(
      await revoke(scopeless, '203.0.113.10'),
      { status: 429, body: { error: { code: 'too_many_requests' } } },
      'a key without the scope: its read is capped',
    );
    const change = revoke(cachedKey, '203.0.113.9');
    await waitFor("the change's read on the lock, beside the two", async () => ((await waitingOnLock(db, 'keyusage-api')) === 3 ? true : undefined));

    await release();
    await Promise.all(flood);
    t.equal((await change).status, 404, "the cached key's change is read afresh and made (no such key to revoke here), not refused as busy");
    t.same(
      answers.slice(30).map((answer) => answer.status),
      Array(LET_IN).fill(401),
      'the reads that ran or waited their turn are answered once the lock goes: unknown keys',
    );
    const burst = await Promise.all(keys.slice(1, 5).map((key, i) => get('/api/whoami', `192.0.2.${i + 1}`, key)));
    t.same(
      burst.map((answer) => answer.status),
      [200, 200, 200, 200],
      'an honest burst of uncached keys, twice the cap, waits its turn and is served',
    );
  },
);

t.test("/healthz asks its own pool: the database is up while key reads hold every connection of the routes' pool", ONE_LOCK, async (t) => {
  const { db, api, keys, get, lockKeys } = await world(t, { AUTH_THROTTLE_MAX_LOOKUPS: '4' });
  t.equal((await get('/api/whoami', '192.0.2.200', keys[0])).status, 200, 'a key read before the flood, now cached');
  const release = await lockKeys();
  const flood = Array.from({ length: 8 }, (_, i) => get('/api/whoami', `198.51.100.${i + 1}`, unknownKey()));
  await waitFor('every connection of the pool on the lock', async () => ((await waitingOnLock(db, 'keyusage-api')) === 4 ? true : undefined));

  t.same(
    await get('/healthz', '203.0.113.8'),
    { status: 200, retryAfter: null, body: { status: 'ok', database: 'up' } },
    'the database is up, and /healthz says so',
  );
  t.equal((await get('/api/whoami', '203.0.113.7', keys[0])).status, 200, 'a cached key is served');
  const health = async () =>
    (await db.raw(`select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name = 'keyusage-api-health'`)).rows[0].n;
  t.equal(await health(), 1, "/healthz's own connection");

  await release();
  t.same(
    (await Promise.all(flood)).map((answer) => answer.status),
    Array(8).fill(401),
    'the flood answered once the lock goes',
  );
  await api.stop();
  await waitFor("/healthz's connection closed at stop", async () => ((await health()) === 0 ? true : undefined));
  t.pass('the stop destroys the pool /healthz asks');
});
