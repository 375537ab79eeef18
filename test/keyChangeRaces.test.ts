import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { rehashSecret } from '../api/keys/apiKeys.repository';
import { createDb, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, heldAuditLock } from './helpers/database';

// Rotate and revoke decided on a read made before their write: a revocation that committed in
// between let the rotation answer 200 with a new secret for a revoked key, and two revocations
// at once both wrote a key.revoke audit entry. The key's row is held here so that both changes
// have read it before either writes; they then write in the order they queued.

type Api = Awaited<ReturnType<typeof startTestApi>>;
type Change = (api: Api, orgId: string, keyId: string, db: Db) => Promise<unknown>;

const waitingOnLocks = async (db: Db) =>
  Number((await db.raw(`select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()`)).rows[0].n);

async function raced(t: Test, changes: Change[], options: { now?: () => number; before?: Change } = {}) {
  const { db, url } = await freshDatabase(t, { poolMax: 6 });
  const api = await startTestApi(t, db, { now: options.now });
  const { org } = await seedOrg(api, db);
  const { id } = (await api.services.apiKeys.create(org.id, { name: 'raced', scopes: ['keys:read'], expiresAt: null })).key;
  await options.before?.(api, org.id, id, db);
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const trx = await holder.transaction();
  await trx('api_keys').where({ id }).forUpdate();
  const outcomes: Array<Promise<unknown>> = [];
  for (const change of changes) {
    outcomes.push(
      change(api, org.id, id, db).then(
        (value) => value,
        (error: Error) => error,
      ),
    );
    const queued = outcomes.length;
    await waitFor('the change waiting on the row', async () => ((await waitingOnLocks(db)) >= queued ? true : undefined));
  }
  await trx.commit();
  return { db, id, outcomes: await Promise.all(outcomes) };
}

t.test('a rotation queued behind a revocation answers 409, not a new secret', async (t) => {
  const { db, id, outcomes } = await raced(t, [
    (api, orgId, keyId) => api.services.apiKeys.revoke(orgId, keyId),
    (api, orgId, keyId) => api.services.apiKeys.rotate(orgId, keyId),
  ]);
  t.match(outcomes[1], { code: 'conflict', message: 'Cannot rotate a revoked API key' });
  t.strictSame(
    await db('audit_log').where({ target_key_id: id }).orderBy('id').pluck('action'),
    ['key.create', 'key.revoke'],
    'no key.rotate after the revocation',
  );
});

// A pepper upgrade rehashes the secret a rotation read: the same secret, so the rotation goes on.
t.test('a rotation queued behind a pepper rehash of the key rotates it', async (t) => {
  const { db, id, outcomes } = await raced(t, [
    async (_api, _orgId, keyId, db) => {
      const { secret_hash: from } = await db('api_keys').where({ id: keyId }).first('secret_hash');
      return rehashSecret(db, keyId, 'current', { from, to: randomBytes(32), pepperId: 'rehashed' });
    },
    (api, orgId, keyId) => api.services.apiKeys.rotate(orgId, keyId),
  ]);
  t.equal(outcomes[0], true, 'the rehash went first');
  t.match(outcomes[1], { key: { id }, plaintext: String }, 'a new secret, not a conflict');
  t.strictSame(await db('audit_log').where({ target_key_id: id }).orderBy('id').pluck('action'), ['key.create', 'key.rotate']);
});

// The write is conditioned on the rotation time read: two rotations in the millisecond of the one
// they both read (a clock behind, or stepped back) each found it unchanged, and both answered 200.
t.test('two rotations at once in the millisecond of the previous one: one wins, the other is a 409', async (t) => {
  const clock = Date.parse('2026-12-05T12:00:00Z');
  // Without a grace period: a rotation with one, while the previous one's runs, is refused.
  const rotate: Change = (api, orgId, keyId) => api.services.apiKeys.rotate(orgId, keyId, { graceSeconds: 0 });
  const { db, id, outcomes } = await raced(t, [rotate, rotate], { now: () => clock, before: rotate });
  t.match(outcomes[0], { key: { id }, plaintext: String });
  t.match(outcomes[1], { code: 'conflict', message: /rotated by another request/ });
  t.strictSame(await db('audit_log').where({ target_key_id: id }).orderBy('id').pluck('action'), ['key.create', 'key.rotate', 'key.rotate']);
  t.equal((await db('api_keys').where({ id }).first('rotated_at')).rotated_at.getTime(), clock + 1, 'a millisecond after the one it replaced');
});

t.test('two revocations at once write one audit entry', async (t) => {
  const revoke: Change = (api, orgId, keyId) => api.services.apiKeys.revoke(orgId, keyId);
  const { db, id, outcomes } = await raced(t, [revoke, revoke]);
  t.match(outcomes, [{ status: 'revoked' }, { status: 'revoked' }], 'both answer the revoked key');
  t.equal((outcomes[0] as { revokedAt: string }).revokedAt, (outcomes[1] as { revokedAt: string }).revokedAt, 'at the one time');
  t.strictSame(await db('audit_log').where({ target_key_id: id, action: 'key.revoke' }).count<{ n: string }[]>({ n: '*' }), [{ n: 1 }]);
});

t.test('two expected-network changes at once: each audit entry records what it replaced', async (t) => {
  const networks =
    (list: string[]): Change =>
    (api, orgId, keyId) =>
      api.services.apiKeys.update(orgId, keyId, { expectedNetworks: list });
  const { db, id } = await raced(t, [networks(['10.0.0.0/8']), networks(['192.0.2.0/24'])]);
  const entries = await db('audit_log').where({ target_key_id: id, action: 'key.update' }).orderBy('id').pluck('details');
  t.strictSame(
    entries.map((details) => details.expectedNetworks),
    [
      { from: null, to: ['10.0.0.0/8'] },
      { from: ['10.0.0.0/8'], to: ['192.0.2.0/24'] },
    ],
    'the second replaced the first, not the value both read before either wrote',
  );
});

t.test('an expected-network change queued behind a deletion of the key (by SQL) answers not_found', async (t) => {
  const { outcomes } = await raced(t, [
    (_api, orgId, keyId, db) => db('api_keys').where({ org_id: orgId, id: keyId }).delete(),
    (api, orgId, keyId) => api.services.apiKeys.update(orgId, keyId, { expectedNetworks: ['10.0.0.0/8'] }),
  ]);
  t.match(outcomes[1], { code: 'not_found', message: 'API key not found' });
});

// revoked_at is the revoking instance's clock. One running an hour ahead wrote a time the others
// took as still to come: they served, listed as active and rotated the revoked key for that hour.
t.test('a revocation by an instance whose clock runs ahead holds at once on the others', async (t) => {
  const { db } = await freshDatabase(t);
  const ahead = await startTestApi(t, db, { now: () => Date.now() + 3_600_000 });
  const api = await startTestApi(t, db, { env: { KEY_CACHE_TTL_MS: '0' } });
  const { org, adminKey } = await seedOrg(api, db);
  const created = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'revoked-ahead', scopes: ['keys:read'] } });
  const base = `/api/orgs/${org.id}/api-keys/${created.body.id}`;
  t.equal((await ahead.request('POST', `${base}/revoke`, { key: adminKey })).status, 200);
  t.equal((await api.request('GET', '/api/whoami', { key: created.body.key })).status, 401, 'refused');
  t.equal((await api.request('GET', base, { key: adminKey })).body.status, 'revoked', 'shown revoked');
  const listed = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?status=active`, { key: adminKey });
  t.notOk(
    listed.body.data.some((k: { id: string }) => k.id === created.body.id),
    'not among the active',
  );
  t.equal((await api.request('POST', `${base}/rotate`, { key: adminKey, body: {} })).status, 409, 'not rotated');
});

// Every audited change waits for its org's audit lock, up to API_STATEMENT_TIMEOUT_MS, and was
// judged by the time read before that wait: a key that expired meanwhile was rotated (200 and a
// new plaintext) and, acting, created a key (201, audited as its doing); a webhook's grace period
// began when its rotation started waiting, and ended that much early. The org's audit lock is held
// here until the changes wait for it; the clock moves on before it is released.
const waitingFor = (db: Db, count: number) =>
  waitFor(`${count} change(s) waiting on the lock`, async () => ((await waitingOnLocks(db)) >= count ? true : undefined));

t.test('a key that expires while its rotation, or its own create, waits for the org: 409 and 401, nothing changed', async (t) => {
  const { db, url } = await freshDatabase(t, { poolMax: 6 });
  const clock = { now: Date.now() };
  const api = await startTestApi(t, db, { now: () => clock.now, env: { API_MAX_CONCURRENT_PER_ORG: '4' } });
  const { org, adminKey } = await seedOrg(api, db);
  const expiresAt = new Date(clock.now + 1_000);
  const rotated = (await api.services.apiKeys.create(org.id, { name: 'rotated', scopes: ['keys:read'], expiresAt })).key;
  const actor = await api.services.apiKeys.create(org.id, { name: 'actor', scopes: ['keys:read', 'keys:write'], expiresAt });
  const held = await heldAuditLock(t, url, org.id);
  const rotation = api.request('POST', `/api/orgs/${org.id}/api-keys/${rotated.id}/rotate`, { key: adminKey, body: {} });
  const creation = api.request('POST', `/api/orgs/${org.id}/api-keys`, {
    key: actor.plaintext,
    body: { name: 'made', scopes: ['keys:read'], expiresAt: expiresAt.toISOString() },
  });
  await waitingFor(db, 2);
  clock.now += 2_000;
  await held.commit();
  const [rotateAnswer, createAnswer] = await Promise.all([rotation, creation]);
  t.equal(rotateAnswer.status, 409, 'the expired key is not rotated');
  t.match(rotateAnswer.body.error, { code: 'conflict', message: 'Cannot rotate a expired API key' });
  t.equal(createAnswer.status, 401, 'the expired actor creates nothing');
  t.match(createAnswer.body.error, { code: 'unauthorized', message: /expired or given an earlier expiry after the request was authorized/ });
  t.strictSame(
    await db('audit_log').where({ org_id: org.id }).whereIn('action', ['key.rotate', 'key.create']).pluck('action'),
    ['key.create', 'key.create', 'key.create'],
    'the three keys made before, no key.rotate, no key.create by the expired key',
  );
  t.equal(await db('api_keys').where({ org_id: org.id, name: 'made' }).first(), undefined, 'no key made');
  t.equal((await db('api_keys').where({ id: rotated.id }).first('rotated_at')).rotated_at, null, 'the expired key keeps its secret');
});

// Found by a review of the renewal: an expiring key's rotate or revoke was judged on the key as read
// before the org's turn, and a renewal queued ahead of it made the key one it may not change.
for (const verb of ['rotate', 'revoke'] as const) {
  t.test(`an expiring key's ${verb} queued behind a renewal of its target past the caller: 403, nothing changed`, async (t) => {
    const { db, url } = await freshDatabase(t, { poolMax: 6 });
    const api = await startTestApi(t, db, { env: { API_MAX_CONCURRENT_PER_ORG: '4' } });
    const { org, adminKey } = await seedOrg(api, db);
    const base = `/api/orgs/${org.id}/api-keys`;
    const caller = await api.services.apiKeys.create(org.id, {
      name: 'caller',
      scopes: ['keys:read', 'keys:write'],
      expiresAt: new Date(Date.now() + 86_400_000),
    });
    const target = (await api.services.apiKeys.create(org.id, { name: 'target', scopes: ['keys:read'], expiresAt: new Date(Date.now() + 3_600_000) })).key;
    const held = await heldAuditLock(t, url, org.id);
    const renewal = api.request('PATCH', `${base}/${target.id}`, { key: adminKey, body: { expiresAt: null } });
    await waitingFor(db, 1);
    const change = api.request('POST', `${base}/${target.id}/${verb}`, { key: caller.plaintext, body: verb === 'rotate' ? {} : undefined });
    await waitingFor(db, 2);
    await held.commit();
    const [renewed, changed] = await Promise.all([renewal, change]);
    t.equal(renewed.status, 200, 'renewed: it never expires');
    t.equal(changed.status, 403, `the caller, expiring first, may not ${verb} it now`);
    t.match(changed.body.error, { code: 'forbidden' });
    const row = await db('api_keys').where({ id: target.id }).first('expires_at', 'revoked_at', 'rotated_at');
    t.strictSame(row, { expires_at: null, revoked_at: null, rotated_at: null }, 'renewed, and nothing else');
  });
}

async function webhookWorld(t: Test) {
  const { db, url } = await freshDatabase(t, { poolMax: 6 });
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  const { org, adminKey } = await seedOrg(api, db);
  const hooks = `/api/orgs/${org.id}/webhooks`;
  const created = await api.request('POST', hooks, { key: adminKey, body: { url: 'http://127.0.0.1:9/in', events: ['*'] } });
  const rotate = (gracePeriodSeconds: number) =>
    api.request('POST', `${hooks}/${created.body.id}/rotate-secret`, { key: adminKey, body: { gracePeriodSeconds } });
  return { db, url, org, webhookId: created.body.id as string, rotate };
}

const databaseTime = async (db: Db): Promise<Date> => (await db.raw('select clock_timestamp() as at')).rows[0].at;

t.test('a webhook rotation that waited for the org starts its grace period when its turn comes', async (t) => {
  const { db, url, org, webhookId, rotate } = await webhookWorld(t);
  const held = await heldAuditLock(t, url, org.id);
  const rotation = rotate(5);
  await waitingFor(db, 1);
  const released = await databaseTime(held);
  await held.commit();
  const answer = await rotation;
  t.equal(answer.status, 200);
  const { previous_secret_expires_at: ends } = await db('webhooks').where({ id: webhookId }).first('previous_secret_expires_at');
  t.ok(
    ends.getTime() >= released.getTime() + 5_000,
    `the previous secret signs 5 s from the lock's release (${ends.toISOString()}, released ${released.toISOString()})`,
  );
  t.equal(answer.body.previousSecretExpiresAt, ends.toISOString(), 'as answered');
});

t.test('a grace period that ends while the next rotation waits for the org is no bar to it', async (t) => {
  const { db, url, org, webhookId, rotate } = await webhookWorld(t);
  t.equal((await rotate(60)).status, 200);
  const held = await heldAuditLock(t, url, org.id);
  const rotation = rotate(60);
  await waitingFor(db, 1);
  // The open grace period ends after the rotation began waiting, and before its turn comes.
  const ends = new Date((await databaseTime(db)).getTime() + 200);
  await db('webhooks').where({ id: webhookId }).update({ previous_secret_expires_at: ends });
  await waitFor('the grace period to end', async () => ((await databaseTime(held)) > ends ? true : undefined));
  await held.commit();
  const answer = await rotation;
  t.equal(answer.status, 200, 'not refused by a grace period that had ended');
  t.ok(Date.parse(answer.body.previousSecretExpiresAt) > ends.getTime() + 59_000, 'a new grace period');
});
