import { randomBytes, randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { createKeyVerifier, LOCKED_RELOAD_GAP_MS } from '../api/auth/keyVerifier';
import type { PresentedKey } from '../api/keys/keyMaterial';
import { parsePresentedKey } from '../api/keys/keyMaterial';
import { createDb, databaseUnavailable } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { PgProxy } from './helpers/faults';

// The verifier's cache against a real PostgreSQL: what matters under hostile traffic is how many
// queries an attacker can make it run, so every test counts them.

const TTL = 2000;

// PostgreSQL through a proxy that can go down, for the verifier alone: the API beside it, another
// instance, keeps the database.
async function proxiedDb(t: Test, url: string) {
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const db = createDb(proxy.url, { poolMax: 2 });
  t.teardown(() => db.destroy());
  return { proxy, db };
}

async function world(t: Test, options: { mayReload?: (keyId: string) => boolean; proxied?: boolean } = {}) {
  const { db: direct, url } = await freshDatabase(t);
  const { proxy, db } = options.proxied ? await proxiedDb(t, url) : { proxy: undefined, db: direct };
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, direct, { now: () => clock });
  const { org, adminKey, adminKeyId } = await seedOrg(api, direct);
  const verifier = createKeyVerifier({
    db,
    peppers: [api.config.api.keyPepper],
    cacheTtlMs: TTL,
    now: () => clock,
    elapsed: () => clock,
    mayReload: options.mayReload,
  });
  const counter = { queries: 0 };
  db.on('query', () => (counter.queries += 1));
  const key = parsePresentedKey(adminKey)!;
  return {
    db,
    proxy,
    api,
    org,
    adminKeyId,
    verifier,
    counter,
    key,
    wrong: (): PresentedKey => ({ keyId: key.keyId, secret: randomBytes(32).toString('base64url') }),
    advance: (ms: number) => (clock += ms),
  };
}

const times = <T>(n: number, fn: () => Promise<T>) => Promise.all(Array.from({ length: n }, fn));

t.test('an unknown key id is cached negatively: random well-formed keys cost no query each', async (t) => {
  const { verifier, counter, advance } = await world(t);
  const stranger: PresentedKey = { keyId: randomUUID(), secret: randomBytes(32).toString('base64url') };
  t.same(await times(20, () => verifier.verify(stranger)), Array(20).fill({ outcome: 'unknown' }), '20 concurrent');
  for (let i = 0; i < 20; i += 1) t.same(await verifier.verify(stranger), { outcome: 'unknown' });
  t.equal(counter.queries, 1, '40 attempts with one unknown id: one query');
  advance(TTL);
  await verifier.verify(stranger);
  t.equal(counter.queries, 2, 'asked again once the entry is older than the TTL');
  t.same(verifier.stats, { hits: 20, misses: 21, reloads: 0 }, 'the 20 concurrent and the expired one missed the cache (they joined or ran a read)');
});

t.test('a flood of wrong secrets on a cached key: one reload at a time, the good record kept', async (t) => {
  const { verifier, counter, key, wrong } = await world(t);
  t.equal((await verifier.verify(key)).outcome, 'ok');
  t.equal(counter.queries, 1, 'the first use loads the key');

  const verdicts = await times(50, () => verifier.verify(wrong()));
  t.same(new Set(verdicts.map((v) => v.outcome)), new Set(['bad_secret']));
  t.equal(counter.queries, 2, '50 concurrent wrong secrets share one reload');

  t.equal((await verifier.verify(key)).outcome, 'ok');
  t.equal(counter.queries, 2, 'the right secret is served from the cache, no query');
  t.same(verifier.stats, { hits: 51, misses: 1, reloads: 50 }, 'every wrong secret on the cached key asked for the shared reload');
});

t.test('mayReload refuses the reload: wrong secrets then cost no query', async (t) => {
  const { verifier, counter, key, wrong } = await world(t, { mayReload: () => false });
  await verifier.verify(key);
  for (let i = 0; i < 20; i += 1) t.equal((await verifier.verify(wrong())).outcome, 'bad_secret');
  t.equal(counter.queries, 1, 'only the first load');
});

// A key id locked by wrong secrets (anyone who knows it can) on this instance, rotated on another:
// its owner's new secret was judged against the cached record and refused for the cache's whole
// TTL, each refusal a failure of the owner's address (found by a review; fails without the fix).
t.test(`a locked key is read again at most every ${LOCKED_RELOAD_GAP_MS} ms: a secret rotated elsewhere works after that`, async (t) => {
  const { api, org, adminKeyId, verifier, counter, key, wrong, advance } = await world(t, { mayReload: () => false });
  t.equal((await verifier.verify(key)).outcome, 'ok');
  const rotated = parsePresentedKey((await api.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 0 })).plaintext)!;
  const before = counter.queries;
  t.equal((await verifier.verify(rotated)).outcome, 'bad_secret', 'at once: the cached record, no read');
  t.equal(counter.queries, before);
  advance(LOCKED_RELOAD_GAP_MS);
  t.equal((await verifier.verify(rotated)).outcome, 'ok', 'a gap later: read again, the new secret works');
  t.equal(counter.queries, before + 1);
  for (let i = 0; i < 10; i += 1) t.equal((await verifier.verify(wrong())).outcome, 'bad_secret');
  t.equal(counter.queries, before + 1, 'wrong secrets within the gap cost no read');
});

// The same on the path of changes, which reads fresh: it refused from the cache for the whole TTL.
t.test('a locked key on the path of changes: read again once a gap, the rotated secret works', async (t) => {
  const { api, org, adminKeyId, verifier, counter, key, wrong, advance } = await world(t, { mayReload: () => false });
  t.equal((await verifier.verify(key)).outcome, 'ok');
  const rotated = parsePresentedKey((await api.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 0 })).plaintext)!;
  const before = counter.queries;
  t.equal((await verifier.verify(rotated, { fresh: true })).outcome, 'bad_secret', 'at once: the cached record, no read');
  advance(LOCKED_RELOAD_GAP_MS);
  t.equal((await verifier.verify(rotated, { fresh: true })).outcome, 'ok', 'a gap later: read, the new secret works');
  for (let i = 0; i < 10; i += 1) t.equal((await verifier.verify(wrong(), { fresh: true })).outcome, 'bad_secret');
  t.equal(counter.queries, before + 1, 'then wrong secrets within the gap cost no read');
  advance(LOCKED_RELOAD_GAP_MS);
  await verifier.verify(wrong(), { fresh: true });
  t.equal(counter.queries, before + 2, 'one more a gap later');
});

// Counted from the record's fetch time, a read that failed (or outlasted the gap) left the gap
// open: with the database failing, every wrong secret read again (found by a review).
t.test('a locked key whose reads fail costs one read a gap, not one a wrong secret', async (t) => {
  const { db, verifier, counter, key, wrong, advance } = await world(t, { mayReload: () => false });
  t.equal((await verifier.verify(key)).outcome, 'ok');
  advance(LOCKED_RELOAD_GAP_MS);
  await db.raw('alter table api_keys rename to api_keys_away');
  t.teardown(() => db.raw('alter table api_keys_away rename to api_keys'));
  const before = counter.queries;
  await t.rejects(verifier.verify(wrong()), { code: '42P01' }, "the gap's read: its error");
  for (let i = 0; i < 19; i += 1) t.equal((await verifier.verify(wrong())).outcome, 'bad_secret', 'then the cached verdict, within the gap');
  t.equal(counter.queries, before + 1, 'one read, failed, for the 20');
});

// A wrong secret's read is for a key rotated elsewhere: failed, it proves nothing either way.
t.test('a wrong secret while the database is down: the outage, not a verdict; the cached key kept', async (t) => {
  const { proxy, verifier, key, wrong } = await world(t, { proxied: true });
  t.equal((await verifier.verify(key)).outcome, 'ok');
  await proxy!.down();
  const error = await verifier.verify(wrong()).catch((e: unknown) => e);
  t.ok(databaseUnavailable(error), "the read's error, an outage (503)");
  t.equal((await verifier.verify(key)).outcome, 'ok', 'the holder is still served from the cache');
});

t.test('a key rotated on another instance works at once with its new secret', async (t) => {
  const { api, org, adminKeyId, verifier, counter, key } = await world(t);
  t.equal((await verifier.verify(key)).outcome, 'ok');
  const rotated = await api.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 60 });
  const before = counter.queries;
  t.equal((await verifier.verify(parsePresentedKey(rotated.plaintext)!)).outcome, 'ok', 'the new secret');
  t.equal(counter.queries, before + 1, 'after one reload');
  t.equal((await verifier.verify(key)).outcome, 'ok', 'the old secret, in its grace period');
});

// Instance A caches a key, B rotates it, and its new secret reaches A while PostgreSQL is down: A's
// re-read failed and it kept the cached verdict, 401, recording a bad_secret use and a failure
// against the owner's address and key (found by an outage review; fails without the fix).
t.test('a secret rotated elsewhere, presented while the database is down: 503, no use or failure recorded', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { proxy, db: proxied } = await proxiedDb(t, url);
  const here = await startTestApi(t, proxied, { env: { KEY_CACHE_TTL_MS: '60000' } });
  const elsewhere = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(elsewhere, db);
  t.equal((await here.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'cached here');
  const rotated = (await elsewhere.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 0 })).plaintext;
  await proxy.down();
  const answer = await here.request('GET', '/api/whoami', { key: rotated });
  t.match(answer, { status: 503, body: { error: { code: 'service_unavailable' } } });
  t.same(
    here.uses.map((use) => use.outcome),
    ['ok'],
    'no use recorded but the first',
  );
  t.equal(here.throttle.stats.failures, 0, 'no failure counted');
  await proxy.up();
  t.equal((await here.request('GET', '/api/whoami', { key: rotated })).status, 200, 'the database back: the new secret works');
});

t.test('cold loads are single-flight, and a load raced by invalidate() is not remembered', async (t) => {
  const { db, adminKeyId, verifier, counter, key } = await world(t);
  t.same(new Set((await times(20, () => verifier.verify(key))).map((v) => v.outcome)), new Set(['ok']));
  t.equal(counter.queries, 1, '20 concurrent first uses: one query');

  // The read starts before the revocation and is invalidated while in flight, as the service does.
  verifier.invalidate(adminKeyId);
  const racing = verifier.verify(key);
  verifier.invalidate(adminKeyId);
  t.equal((await racing).outcome, 'ok', 'the racing read saw the key before its revocation');
  await db('api_keys')
    .where({ id: adminKeyId })
    .update({ revoked_at: new Date(Date.parse('2026-11-25T11:00:00Z')) });
  t.equal((await verifier.verify(key)).outcome, 'revoked', 'that read was not remembered: the next use reads again');
});

t.test('a fresh verification reads the key whatever the cache holds; the cache is left as it was', async (t) => {
  const { db, adminKeyId, verifier, counter, key } = await world(t);
  t.equal((await verifier.verify(key)).outcome, 'ok');
  await db('api_keys')
    .where({ id: adminKeyId })
    .update({ revoked_at: new Date(Date.parse('2026-11-25T11:00:00Z')) });
  t.equal((await verifier.verify(key)).outcome, 'ok', 'the cached record, within its TTL (documented)');
  const before = counter.queries;
  t.equal((await verifier.verify(key, { fresh: true })).outcome, 'revoked', 'read fresh: revoked');
  t.equal(counter.queries, before + 1, 'one query');
});

t.test('a fresh verification of a wrong secret costs no query once reloads are refused', async (t) => {
  const { verifier, counter, key, wrong } = await world(t, { mayReload: () => false });
  await verifier.verify(key);
  for (let i = 0; i < 5; i += 1) t.equal((await verifier.verify(wrong(), { fresh: true })).outcome, 'bad_secret');
  t.equal(counter.queries, 1, 'only the first load');
  t.equal((await verifier.verify(key, { fresh: true })).outcome, 'ok', 'the right secret is still read fresh');
  t.equal(counter.queries, 2);
});

// Changing keys trusted the cached verdict: within KEY_CACHE_TTL_MS of a revocation made by the
// CLI or another instance, the revoked key could still mint a key that outlives it.
t.test('a key revoked elsewhere can no longer change keys on an instance that cached it', async (t) => {
  const { db } = await freshDatabase(t);
  const first = await startTestApi(t, db);
  const second = await startTestApi(t, db, { env: { KEY_CACHE_TTL_MS: '60000' } });
  const { org, adminKey, adminKeyId } = await seedOrg(first, db);
  t.equal((await second.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the second instance caches the key');
  await first.services.apiKeys.revoke(org.id, adminKeyId);
  t.equal((await second.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'reads: the cached verdict, within the TTL (documented)');
  const minted = await second.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'escape', scopes: ['keys:read'] } });
  t.equal(minted.status, 401, 'a change: refused');
  t.equal(await db('api_keys').where({ name: 'escape' }).first(), undefined, 'no key minted');
});

// The shortcut that refuses a wrong secret without a read used a cached record of any age: a key
// rotated elsewhere, whose reloads the throttle refuses, had its owner's new secret refused on the
// routes that change keys.
t.test('a fresh verification refuses from the cache only within its TTL', async (t) => {
  const { api, org, adminKeyId, verifier, key, advance } = await world(t, { mayReload: () => false });
  t.equal((await verifier.verify(key)).outcome, 'ok');
  const rotated = await api.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 0 });
  advance(TTL);
  t.equal((await verifier.verify(parsePresentedKey(rotated.plaintext)!, { fresh: true })).outcome, 'ok', 'the new secret, read fresh');
});

t.test('a fresh verification of an unknown id reads once per TTL, as the cached path does', async (t) => {
  const { verifier, counter, advance } = await world(t);
  const stranger: PresentedKey = { keyId: randomUUID(), secret: randomBytes(32).toString('base64url') };
  for (let i = 0; i < 10; i += 1) t.same(await verifier.verify(stranger, { fresh: true }), { outcome: 'unknown' });
  t.equal(counter.queries, 1, 'ten attempts, one query');
  advance(TTL);
  await verifier.verify(stranger, { fresh: true });
  t.equal(counter.queries, 2, 'read again after the TTL');
});

// The secret is checked before the status: a revoked or expired key's id, known to anyone who saw
// it, must not tell whoever presents it that the key is revoked or expired.
t.test('a wrong secret on a revoked or an expired key is bad_secret; only the right secret learns the status', async (t) => {
  const { api, org, verifier, advance } = await world(t);
  const create = (expiresAt: Date | null) => api.services.apiKeys.create(org.id, { name: 'judged', scopes: ['keys:read'], expiresAt });
  const revoked = await create(null);
  await api.services.apiKeys.revoke(org.id, revoked.key.id);
  const expiring = await create(new Date(Date.parse('2026-11-25T12:00:01Z')));
  advance(2_000);
  for (const [created, status] of [
    [revoked, 'revoked'],
    [expiring, 'expired'],
  ] as const) {
    const right = parsePresentedKey(created.plaintext)!;
    const wrong = { keyId: right.keyId, secret: randomBytes(32).toString('base64url') };
    t.equal((await verifier.verify(wrong)).outcome, 'bad_secret', `${status}: a wrong secret`);
    t.equal((await verifier.verify(right)).outcome, status, `${status}: the right secret`);
  }
});
