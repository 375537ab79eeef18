import { randomBytes, randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// Failed attempts throttled on the real HTTP path. TRUST_PROXY=loopback lets each request claim its
// client address with X-Forwarded-For, so one test plays many clients.

const THROTTLE = {
  TRUST_PROXY: 'loopback',
  AUTH_THROTTLE_MAX_FAILURES_PER_IP: '4',
  AUTH_THROTTLE_MAX_FAILURES_PER_KEY: '3',
  AUTH_THROTTLE_WINDOW_MS: '60000',
};

async function world(t: Test) {
  const { db } = await freshDatabase(t);
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock, env: THROTTLE });
  const { adminKey, adminKeyId } = await seedOrg(api, db);
  const whoami = (ip: string, key?: string) => api.request('GET', '/api/whoami', { key, headers: { 'x-forwarded-for': ip } });
  const wrongSecret = `${adminKey.slice(0, 36)}${randomBytes(32).toString('base64url')}`;
  const unknownKey = () => `ku_${randomBytes(16).toString('hex')}_${randomBytes(32).toString('base64url')}`;
  return { db, api, adminKey, adminKeyId, whoami, wrongSecret, unknownKey, advance: (ms: number) => (clock += ms) };
}

t.test('an address that fails too often gets 429 with Retry-After, whatever it presents; other addresses are served', async (t) => {
  const { api, adminKey, whoami, wrongSecret, unknownKey, advance } = await world(t);
  const attacker = '203.0.113.66';
  const failures = [
    await whoami(attacker, 'not-a-key'),
    await whoami(attacker, unknownKey()),
    await whoami(attacker, wrongSecret),
    await whoami(attacker, unknownKey()),
  ];
  t.same(
    failures.map((r) => r.status),
    [401, 401, 401, 401],
    'malformed, unknown, wrong secret: each a 401, each counted',
  );

  const refused = await whoami(attacker, adminKey);
  t.equal(refused.status, 429, 'the next request from that address is refused, even with a right key');
  t.equal(refused.headers.get('retry-after'), '60', 'Retry-After: the rest of the window, in seconds');
  t.same(Object.keys(refused.body.error).sort(), ['code', 'message', 'requestId']);
  t.equal(refused.body.error.code, 'too_many_requests');

  for (let i = 0; i < 10; i += 1) await whoami('192.0.2.10');
  t.equal((await whoami('192.0.2.10', adminKey)).status, 200, 'another address is served; requests with no key are not failures');

  advance(30_000);
  t.equal((await whoami(attacker, adminKey)).headers.get('retry-after'), '30');
  advance(30_000);
  t.equal((await whoami(attacker, adminKey)).status, 200, 'served again when the window ends');

  t.match(api.throttle.stats, { failures: 4, refusedByIp: 2, refusedByKey: 0, lockouts: 1 }, 'counted');
  const logged = api.evidence.logLines.map((line) => JSON.parse(line)).filter((line) => line.kind === 'auth_throttle_ip');
  t.match(logged, [{ ip: attacker, msg: 'too many failed authentication attempts: throttled' }], 'the lockout is logged once, with the address');
});

// With IP_TRUNCATE no full address is written down: the lockout's warning logged it whole, in a
// log beyond retention and erasure (found by a review; fails without the fix).
t.test('with IP_TRUNCATE the lockout warning names the truncated address', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { ...THROTTLE, IP_TRUNCATE: 'true' } });
  const attacker = '203.0.113.66';
  for (let i = 0; i < 5; i += 1) await api.request('GET', '/api/whoami', { key: 'not-a-key', headers: { 'x-forwarded-for': attacker } });
  const logged = api.evidence.logLines.map((line) => JSON.parse(line)).filter((line) => line.kind === 'auth_throttle_ip');
  t.match(logged, [{ ip: '203.0.113.0' }], 'the lockout is logged with the /24');
  t.notOk(
    api.evidence.logLines.some((line) => line.includes(attacker)),
    'the full address in no log line',
  );
});

t.test('wrong secrets on one key from many addresses: 429 for failures only, the holder is served from anywhere, bounded queries', async (t) => {
  const { db, api, adminKey, adminKeyId, whoami, wrongSecret } = await world(t);
  t.equal((await whoami('192.0.2.1', adminKey)).status, 200, 'the holder warms the cache');
  let queries = 0;
  db.on('query', () => (queries += 1));

  const statuses: number[] = [];
  for (let i = 1; i <= 30; i += 1) {
    const response = await whoami(`198.51.100.${i}`, wrongSecret);
    statuses.push(response.status);
    if (response.status === 429) t.equal(response.headers.get('retry-after'), '60');
  }
  t.same(statuses, [...Array(3).fill(401), ...Array(27).fill(429)], 'after 3 failures on the key, its failures answer 429');
  t.ok(queries <= 3, `30 wrong secrets cost ${queries} queries (a reload each until the key locked, none after)`);

  t.equal((await whoami('192.0.2.99', adminKey)).status, 200, 'the right secret from a new address is served');
  t.equal((await whoami('198.51.100.30', adminKey)).status, 200, 'and from an address that failed once');
  t.equal(api.uses.filter((use) => use.keyId === adminKeyId && use.outcome === 'bad_secret').length, 30, 'every failure is still recorded as bad_secret');
  t.match(api.throttle.stats, { failures: 30, refusedByKey: 27, refusedByIp: 0, lockouts: 1 });
});

t.test("an id that names no key counts against the address only: it never locks, and cannot push a real key's window out", async (t) => {
  const { db } = await freshDatabase(t);
  // Room for 3 windows per map: without the fix, a few unknown ids evict the real key's window.
  const env = { ...THROTTLE, AUTH_THROTTLE_MAX_FAILURES_PER_IP: '100', AUTH_THROTTLE_MAX_ENTRIES: '3' };
  const api = await startTestApi(t, db, { now: () => Date.parse('2026-11-25T12:00:00Z'), env });
  const { adminKey } = await seedOrg(api, db);
  const whoami = (ip: string, key: string) => api.request('GET', '/api/whoami', { key, headers: { 'x-forwarded-for': ip } });
  const wrongSecret = `${adminKey.slice(0, 36)}${randomBytes(32).toString('base64url')}`;
  const unknownKey = () => `ku_${randomUUID().replace(/-/g, '')}_${randomBytes(32).toString('base64url')}`;

  t.same([(await whoami('198.51.100.1', wrongSecret)).status, (await whoami('198.51.100.1', wrongSecret)).status], [401, 401], 'two failures on the real key');
  const stranger = unknownKey();
  const statuses = [];
  for (let i = 0; i < 5; i += 1) statuses.push((await whoami('203.0.113.9', stranger)).status);
  for (let i = 0; i < 10; i += 1) statuses.push((await whoami('203.0.113.9', unknownKey())).status);
  t.same(statuses, Array(15).fill(401), 'unknown ids, the same one or random ones: 401 each, never a key lockout');
  t.same(
    [(await whoami('198.51.100.1', wrongSecret)).status, (await whoami('198.51.100.1', wrongSecret)).status],
    [401, 429],
    "the real key's window survived: its 4th failure answers 429",
  );
  t.match(api.throttle.stats, { failures: 19, refusedByKey: 1, lockouts: 1, evicted: 0 });
});

// The cache's TTL and the throttle's windows were on the wall clock: stepped back an hour (NTP, a
// restored VM), a key revoked on another instance went on working here for the hour, and a
// throttled address was told to wait an hour.
t.test('a wall clock stepped back neither keeps a revoked key cached nor stretches a lockout', async (t) => {
  const { db } = await freshDatabase(t);
  const wall = { at: Date.parse('2026-11-25T12:00:00Z') };
  const steady = { at: 0 };
  const api = await startTestApi(t, db, { now: () => wall.at, elapsed: () => steady.at, env: THROTTLE });
  const { adminKey, adminKeyId } = await seedOrg(api, db);
  const whoami = (ip: string, key?: string) => api.request('GET', '/api/whoami', { key, headers: { 'x-forwarded-for': ip } });
  t.equal((await whoami('198.51.100.1', adminKey)).status, 200, 'the key is cached');
  await db('api_keys')
    .where({ id: adminKeyId })
    .update({ revoked_at: new Date(wall.at) });
  wall.at -= 3_600_000;
  steady.at += api.config.api.keyCacheTtlMs;
  t.equal((await whoami('198.51.100.1', adminKey)).status, 401, 'revoked elsewhere: refused once the TTL has passed, whatever the wall clock did');

  const attacker = '203.0.113.77';
  for (let i = 0; i < 4; i += 1) await whoami(attacker, 'not-a-key');
  wall.at -= 3_600_000;
  const refused = await whoami(attacker, 'not-a-key');
  t.equal(refused.status, 429);
  t.equal(refused.headers.get('retry-after'), '60', 'the rest of the window, not the window plus the step');
});

// Failures were counted as verifications ended, so the limit checked before them let one address
// send any number at once: each an api_keys read, none refused, every org's reads queued behind
// them in the pool (a review sent 10,000; fails without the fix).
t.test('verifications in flight count against the address: at once, no more are read than it may fail', async (t) => {
  const { db, whoami, unknownKey } = await world(t);
  let keyReads = 0;
  const countRead = (query: { sql: string }) => void (/from "api_keys"/.test(query.sql) && (keyReads += 1));
  db.on('query', countRead);
  t.teardown(() => void db.off('query', countRead));
  const answers = await Promise.all(Array.from({ length: 300 }, () => whoami('203.0.113.77', unknownKey())));
  const statuses = answers.map((r) => r.status);
  t.ok(keyReads <= 4, `at most 4 keys read (read ${keyReads})`);
  t.equal(statuses.filter((status) => status === 401).length, keyReads, 'each read answered 401');
  t.equal(statuses.filter((status) => status === 429).length, 300 - keyReads, 'the rest refused, unread');
});

// Capped by refusing, the reads in flight answered an honest burst from one address (or a proxy's)
// with 429 and a message about failed attempts, the throttle turned off or not: they wait their
// turn instead (found by a review of the first version).
t.test('an honest burst of uncached keys from one address, more than the pool holds, is served in turn', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { ...THROTTLE, AUTH_THROTTLE_MAX_FAILURES_PER_IP: '0', KEY_CACHE_TTL_MS: '0', DATABASE_POOL_MAX: '1' } });
  const { org } = await seedOrg(api, db);
  const keys = await Promise.all(
    Array.from(
      { length: 15 },
      async (_, i) => (await api.services.apiKeys.create(org.id, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null })).plaintext,
    ),
  );
  const answers = await Promise.all(keys.map((key) => api.request('GET', '/api/whoami', { key, headers: { 'x-forwarded-for': '203.0.113.78' } })));
  t.same([...new Set(answers.map((r) => r.status))], [200]);
  t.equal(api.throttle.stats.refusedByIp, 0);
});

// The per-address refusals come before the key is looked up, so they are in no key's usage, only
// in auth_refused_by_ip_total: docs/api-keys.md says so, and this keeps it true.
t.test("a right key refused for its address's failures records no use", async (t) => {
  const { api, adminKey, whoami, unknownKey } = await world(t);
  const attacker = '203.0.113.66';
  for (let i = 0; i < 3; i += 1) await whoami(attacker, 'not-a-key');
  // The address's 4th failure in flight, held: a new read would be one more than it may fail.
  let held!: () => void;
  const hold = new Promise<void>((resolve) => (held = resolve));
  let verifying!: () => void;
  const reached = new Promise<void>((resolve) => (verifying = resolve));
  const verify = api.verifier.verify.bind(api.verifier);
  api.verifier.verify = async (...args) => {
    verifying();
    await hold;
    return verify(...args);
  };
  const inFlight = whoami(attacker, unknownKey());
  await reached;
  const waited = await whoami(attacker, adminKey);
  held();
  t.equal((await inFlight).status, 401);
  api.verifier.verify = verify;
  const refused = await whoami(attacker, adminKey);

  t.same([waited.status, refused.status], [429, 429], 'refused waiting for a verification, then by the address');
  t.match(api.throttle.stats, { refusedByIp: 2 }, 'counted where the metric reads');
  t.same(api.uses, [], 'recorded as no use of the key');
});
