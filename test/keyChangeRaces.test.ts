import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { rehashSecret } from '../api/keys/apiKeys.repository';
import { createDb, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

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
      api.services.apiKeys.setExpectedNetworks(orgId, keyId, list);
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
    (api, orgId, keyId) => api.services.apiKeys.setExpectedNetworks(orgId, keyId, ['10.0.0.0/8']),
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
