import t, { type Test } from 'tap';
import { recordAudit } from '../api/audit/audit.repository';
import { parsePresentedKey } from '../api/keys/keyMaterial';
import { main as cliMain } from '../scripts/cli';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { insertKeys } from '../bench/lib/database';
import { DAY_MS as DAY } from '../shared/timeUnits';

// The audit log: every create, rotate and revoke records who, what, when and from where, in the
// change's transaction; GET /api/orgs/:id/audit-log pages it newest first; nothing can change it.

async function setup(t: Test) {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db, 'acme');
  return { db, url, api, acme };
}

t.test('creating and deleting a webhook is recorded, with the URL and never the signing secret (fails without the fix)', async (t) => {
  const { db, api, acme } = await setup(t);
  const hooks = `/api/orgs/${acme.org.id}/webhooks`;
  const auth = { key: acme.adminKey };
  const created = await api.request('POST', hooks, { ...auth, body: { url: 'https://203.0.113.10/hook', events: ['key.new_ip'] } });
  t.equal(created.status, 201);
  t.equal((await api.request('DELETE', `${hooks}/${created.body.id}`, auth)).status, 204);
  const log = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, auth);
  const actor = { type: 'key', keyId: acme.adminKeyId };
  const details = { webhookId: created.body.id, url: 'https://203.0.113.10/hook', events: ['key.new_ip'] };
  t.match(log.body.data.slice(0, 2), [
    { action: 'webhook.delete', actor, targetKeyId: null, ip: '127.0.0.1', details },
    { action: 'webhook.create', actor, targetKeyId: null, ip: '127.0.0.1', details },
  ]);
  t.notOk(log.text.includes(created.body.secret) || JSON.stringify(await db('audit_log').select()).includes(created.body.secret), 'no signing secret');
});

// The webhook list shows a key without keys:write a URL's origin only (its path or query may carry
// the receiver's token), while the audit log, which keys:read reads too, showed it whole. Fails
// without the fix.
t.test("a key without keys:write reads a webhook entry's URL as its origin only; one with it, whole", async (t) => {
  const { api, acme } = await setup(t);
  const reader = await api.services.apiKeys.create(acme.org.id, { name: 'reader', scopes: ['keys:read'], expiresAt: null });
  const hooks = `/api/orgs/${acme.org.id}/webhooks`;
  const created = await api.request('POST', hooks, { key: acme.adminKey, body: { url: 'https://203.0.113.12/h?token=abc', events: ['*'] } });
  t.equal(created.status, 201);
  t.equal((await api.request('DELETE', `${hooks}/${created.body.id}`, { key: acme.adminKey })).status, 204);
  const urls = (log: { body: { data: Array<{ action: string; details: { url?: string } }> } }) =>
    log.body.data.filter((entry) => entry.action.startsWith('webhook.')).map((entry) => [entry.action, entry.details.url]);

  const read = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, { key: reader.plaintext });
  t.equal(read.status, 200);
  t.same(
    urls(read),
    [
      ['webhook.delete', 'https://203.0.113.12/…'],
      ['webhook.create', 'https://203.0.113.12/…'],
    ],
    'the origin, "/…" for the path and query',
  );
  t.notOk(read.text.includes('token=abc'), 'not the token');
  t.notOk(read.text.includes('/h'), 'nor the path');

  const whole = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, { key: acme.adminKey });
  t.same(
    urls(whole),
    [
      ['webhook.delete', 'https://203.0.113.12/h?token=abc'],
      ['webhook.create', 'https://203.0.113.12/h?token=abc'],
    ],
    'keys:write: whole',
  );
});

t.test('create, rotate and revoke through the API are recorded with the acting key, the IP and no key material', async (t) => {
  const { db, api, acme } = await setup(t);
  const keys = `/api/orgs/${acme.org.id}/api-keys`;
  const auth = { key: acme.adminKey };
  const created = await api.request('POST', keys, { ...auth, body: { name: 'ci', scopes: ['keys:read'], expiresAt: '2999-01-01T00:00:00Z' } });
  const rotated = await api.request('POST', `${keys}/${created.body.id}/rotate`, { ...auth, body: { gracePeriodSeconds: 60 } });
  t.equal((await api.request('POST', `${keys}/${created.body.id}/revoke`, auth)).status, 200);
  t.equal((await api.request('POST', `${keys}/${created.body.id}/revoke`, auth)).status, 200, 'a second revoke changes nothing');
  t.equal((await api.request('POST', `${keys}/${created.body.id}/rotate`, { ...auth, body: {} })).status, 409, 'a refused rotation');

  const log = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, auth);
  t.equal(log.status, 200);
  const actor = { type: 'key', keyId: acme.adminKeyId, displayPrefix: `ku_${acme.adminKeyId.replace(/-/g, '').slice(0, 8)}` };
  t.match(log.body.data, [
    { action: 'key.revoke', actor, targetKeyId: created.body.id, ip: '127.0.0.1', details: { name: 'ci', revokedAt: String } },
    { action: 'key.rotate', actor, targetKeyId: created.body.id, ip: '127.0.0.1', details: { gracePeriodSeconds: 60, previousSecretExpiresAt: String } },
    {
      action: 'key.create',
      actor,
      targetKeyId: created.body.id,
      ip: '127.0.0.1',
      details: { name: 'ci', scopes: ['keys:read'], expiresAt: '2999-01-01T00:00:00.000Z' },
    },
    { action: 'key.create', actor: { type: 'cli' }, targetKeyId: acme.adminKeyId, ip: null, details: { name: 'admin' } },
  ]);
  t.equal(log.body.data.length, 4, 'the no-op revoke and the refused rotation record nothing');
  t.ok(
    log.body.data.every((entry: { occurredAt: string }) => !Number.isNaN(Date.parse(entry.occurredAt))),
    'when',
  );
  t.same(log.body.page, { limit: 50, nextCursor: null });

  const secrets = [acme.adminKey, created.body.key, rotated.body.key].flatMap((key) => [key, parsePresentedKey(key)!.secret]);
  const hashes = (await db('api_keys').select('secret_hash', 'previous_secret_hash'))
    .flatMap((row) => [row.secret_hash, row.previous_secret_hash])
    .filter(Boolean);
  const stored = JSON.stringify(await db('audit_log').select());
  for (const secret of [...secrets, ...hashes.map((hash: Buffer) => hash.toString('hex')), ...hashes.map((hash: Buffer) => hash.toString('base64'))]) {
    t.notOk(log.text.includes(secret) || stored.includes(secret), 'no key, secret or hash in the audit log');
  }
});

t.test('a PATCH that leaves the expected networks as they were records nothing (fails without the fix)', async (t) => {
  const { db, api, acme } = await setup(t);
  const key = (await api.services.apiKeys.create(acme.org.id, { name: 'office', scopes: ['keys:read'], expiresAt: null })).key;
  const patch = (expectedNetworks: string[] | null) =>
    api.request('PATCH', `/api/orgs/${acme.org.id}/api-keys/${key.id}`, { key: acme.adminKey, body: { expectedNetworks } });
  const networks = ['10.0.0.0/8', '2001:db8::/32'];
  t.equal((await patch(networks)).status, 200);
  t.equal((await patch(networks)).status, 200, 'the same body again');
  t.equal((await patch(['10.1.2.3/8', '2001:db8::/32'])).status, 200, 'the same networks once normalised');
  t.equal((await patch(null)).status, 200, 'a real change');
  t.equal((await patch([])).status, 200, 'none again, spelled otherwise');
  const updates = await db('audit_log').where({ action: 'key.update', target_key_id: key.id }).orderBy('id');
  t.strictSame(
    updates.map((entry) => entry.details),
    [{ expectedNetworks: { from: null, to: networks } }, { expectedNetworks: { from: networks, to: null } }],
    'one entry per change, none for the PATCHes that changed nothing',
  );
});

t.test('cursor pagination, newest first, and org isolation', async (t) => {
  const { db, api, acme } = await setup(t);
  const globex = await seedOrg(api, db, 'globex');
  for (let i = 0; i < 4; i += 1) await api.services.apiKeys.create(acme.org.id, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null });
  const seen: string[] = [];
  let path = `/api/orgs/${acme.org.id}/audit-log?limit=2`;
  for (let page = 0; page < 5; page += 1) {
    const response = await api.request('GET', path, { key: acme.adminKey });
    t.equal(response.status, 200);
    seen.push(...response.body.data.map((entry: { details: { name: string } }) => entry.details.name));
    if (!response.body.page.nextCursor) break;
    path = `/api/orgs/${acme.org.id}/audit-log?limit=2&cursor=${response.body.page.nextCursor}`;
  }
  t.same(seen, ['k3', 'k2', 'k1', 'k0', 'admin'], 'every entry once, newest first, in three pages');

  const other = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, { key: globex.adminKey });
  t.equal(other.status, 404, "another org's log answers 404");
  const own = await api.request('GET', `/api/orgs/${globex.org.id}/audit-log`, { key: globex.adminKey });
  t.same(
    own.body.data.map((entry: { details: { name: string } }) => entry.details.name),
    ['admin'],
    'an org sees only its own entries',
  );
  // The cursor of a page served before the per-org numbers (a global id): refused, not misread.
  const before = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log?cursor=${Buffer.from('3').toString('base64url')}`, { key: acme.adminKey });
  t.equal(before.status, 400, "a cursor of the global ids' time is refused");
  const forged = Buffer.from('abc').toString('base64url');
  const bad = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log?cursor=${forged}`, { key: acme.adminKey });
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /cursor: must be a nextCursor/);
  // Shaped like ours but past the bigint range: PostgreSQL would refuse the comparison (a 500 before).
  const huge = Buffer.from('seq:9999999999999999999').toString('base64url');
  const tooBig = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log?cursor=${huge}`, { key: acme.adminKey });
  t.equal(tooBig.status, 400, 'a cursor beyond the id range is refused');
});

t.test("entry ids count the org's own entries, not every org's: no count of other tenants' changes (fails without the fix)", async (t) => {
  const { db, api, acme } = await setup(t);
  const globex = await seedOrg(api, db, 'globex');
  const create = (orgId: string, name: string) => api.services.apiKeys.create(orgId, { name, scopes: ['keys:read'], expiresAt: null });
  await create(acme.org.id, 'before');
  for (let i = 0; i < 3; i += 1) await create(globex.org.id, `globex ${i}`);
  await create(acme.org.id, 'after');
  const ids = async (org: { org: { id: string }; adminKey: string }) =>
    (await api.request('GET', `/api/orgs/${org.org.id}/audit-log`, { key: org.adminKey })).body.data.map((entry: { id: string }) => entry.id);
  t.strictSame(await ids(acme), ['3', '2', '1'], "acme's entries are 1, 2, 3: globex's three changes between them do not show");
  t.strictSame(await ids(globex), ['4', '3', '2', '1'], "globex's own numbering");
});

t.test('a rolled-back change gives its entry number back: the next entry takes it, no gap', async (t) => {
  const { db, acme } = await setup(t);
  const entry = { orgId: acme.org.id, actor: { type: 'cli' as const }, action: 'key.revoke' as const, targetKeyId: null, details: {}, ip: null };
  await db
    .transaction(async (trx) => {
      await recordAudit(trx, entry);
      throw new Error('the change failed after its entry');
    })
    .catch(() => undefined);
  await recordAudit(db, entry);
  t.strictSame(await db('audit_log').where({ org_id: acme.org.id }).orderBy('seq').pluck('seq'), [1, 2]);
});

t.test('the CLI is recorded as "cli"', async (t) => {
  const { db, url, acme } = await setup(t);
  const out: string[] = [];
  const io = { out: (text: string) => out.push(text), err: () => {} };
  t.equal(await cliMain(['key', 'revoke', acme.org.id, acme.adminKeyId], { NODE_ENV: 'test', DATABASE_URL: url }, io), 0);
  const entry = await db('audit_log').where({ action: 'key.revoke' }).first();
  t.match(entry, { actor_type: 'cli', actor_key_id: null, actor_display_prefix: null, target_key_id: acme.adminKeyId, ip: null });
});

t.test('revoke-dormant records one keys.revoke_dormant entry per revoked key, through the API and the CLI; a dry run none', async (t) => {
  const { db, url, api, acme } = await setup(t);
  const now = Date.now();
  const longAgo = new Date(now - 100 * DAY);
  const lastUse = new Date(now - 95 * DAY);
  const key = async (name: string, usedAt: Date | null) => {
    const { id } = (await api.services.apiKeys.create(acme.org.id, { name, scopes: ['keys:read'], expiresAt: null })).key;
    await db('api_keys').where({ id }).update({ created_at: longAgo });
    if (usedAt) await db('api_key_usage').insert({ org_id: acme.org.id, key_id: id, request_count: 1, last_used_at: usedAt });
    return id;
  };
  const [never, usedOnce, byCli] = [await key('never used', null), await key('used once', lastUse), await key('left for the CLI', null)];
  // A use within the 90 days: the CLI's --apply alone is refused where none is recorded.
  await db('api_key_usage').insert({ org_id: acme.org.id, key_id: acme.adminKeyId, request_count: 1, last_used_at: new Date(now) });
  // The API's entries first, by name: one apply revokes its keys in no set order.
  const entries = () => db('audit_log').where({ action: 'keys.revoke_dormant' }).orderBy('actor_type', 'desc').orderByRaw("details->>'name'");
  const cleanUp = (body: object) =>
    api.request('POST', `/api/orgs/${acme.org.id}/api-keys/revoke-dormant`, { key: acme.adminKey, body: { dormantDays: 90, ...body } });
  const out: string[] = [];
  const cli = (...args: string[]) =>
    cliMain(
      ['key', 'revoke-dormant', acme.org.id, '--days', '90', ...args],
      { NODE_ENV: 'test', DATABASE_URL: url },
      { out: (text) => out.push(text), err: () => {} },
    );

  t.equal((await cleanUp({ dryRun: true })).body.keys.length, 3);
  t.equal(await cli(), 0);
  t.strictSame(await entries(), [], 'the dry runs record nothing');

  t.equal((await cleanUp({ dryRun: false, keyIds: [never, usedOnce] })).status, 200);
  t.equal(await cli('--apply'), 0);
  const apiActor = { actor_type: 'key', actor_key_id: acme.adminKeyId, ip: '127.0.0.1' };
  const cliActor = { actor_type: 'cli', actor_key_id: null, actor_display_prefix: null, ip: null };
  // Why each was dormant (created long ago, never rotated), when it was revoked, and how chosen.
  const why = { createdAt: longAgo.toISOString(), rotatedAt: null, revokedAt: String };
  t.match(await entries(), [
    {
      ...apiActor,
      org_id: acme.org.id,
      target_key_id: never,
      details: { name: 'never used', dormantDays: 90, lastUsedAt: null, ...why, selectedBy: 'keyIds', usesRecorded: true },
    },
    {
      ...apiActor,
      org_id: acme.org.id,
      target_key_id: usedOnce,
      details: { name: 'used once', dormantDays: 90, lastUsedAt: lastUse.toISOString(), ...why, selectedBy: 'keyIds', usesRecorded: true },
    },
    {
      ...cliActor,
      org_id: acme.org.id,
      target_key_id: byCli,
      details: { name: 'left for the CLI', dormantDays: 90, lastUsedAt: null, ...why, selectedBy: 'dormancy', usesRecorded: true },
    },
  ]);
  t.equal((await entries()).length, 3, 'one entry per revoked key');
});

t.test('append-only: UPDATE, DELETE and TRUNCATE are refused; deleting the organization takes its entries', async (t) => {
  const { db, acme } = await setup(t);
  await recordAudit(db, {
    orgId: acme.org.id,
    actor: { type: 'cli' },
    action: 'key.update',
    targetKeyId: acme.adminKeyId,
    details: { scopes: ['keys:read'] },
    ip: null,
  });
  t.equal((await db('audit_log').where({ org_id: acme.org.id })).length, 2);
  await t.rejects(db('audit_log').update({ action: 'key.create' }), /append-only: UPDATE refused/);
  await t.rejects(db('audit_log').where({ org_id: acme.org.id }).del(), /append-only: DELETE refused/);
  await t.rejects(db.raw('truncate audit_log'), /append-only: TRUNCATE refused/);
  t.equal((await db('audit_log').where({ org_id: acme.org.id })).length, 2, 'still there');
  await db('organizations').where({ id: acme.org.id }).del();
  t.equal((await db('audit_log').where({ org_id: acme.org.id })).length, 0, 'ON DELETE CASCADE from organizations still works');
});

// Ids are taken at the insert and seen at the commit: two changes at once committed in the other
// order, and a reader following the log by the newest id it had read skipped the late one.
t.test("an org's entries become visible in id order: none appears below one already read", async (t) => {
  const { db, api, acme } = await setup(t);
  const [first, second] = await Promise.all(
    ['one', 'two'].map((name) => api.services.apiKeys.create(acme.org.id, { name, scopes: ['keys:read'], expiresAt: null })),
  );
  const visible = async () => (await db('audit_log').where({ org_id: acme.org.id }).pluck('id')).map(Number);
  const slow = await db.transaction();
  await api.services.apiKeys.revoke(acme.org.id, first.key.id, { db: slow });
  const quick = api.request('POST', `/api/orgs/${acme.org.id}/api-keys/${second.key.id}/revoke`, { key: acme.adminKey });
  await Promise.race([quick, new Promise((resolve) => setTimeout(resolve, 500))]);
  const read = await visible();
  await slow.commit();
  t.equal((await quick).status, 200);
  const newest = Math.max(...read);
  t.strictSame(
    (await visible()).filter((id) => id < newest && !read.includes(id)),
    [],
    'no entry committed later below the newest one a reader had seen',
  );
});

// One insert per revoked key: an org's clean-up of up to KEYS_MAX_PER_ORG keys held their rows
// locked for as many round trips.
t.test("a clean-up's entries go in a few inserts, not one a key", async (t) => {
  const { db, api, acme } = await setup(t);
  await insertKeys(db, acme.org.id, 2500, 'dormant-');
  await db('api_keys')
    .where({ org_id: acme.org.id })
    .whereNot({ id: acme.adminKeyId })
    .update({ created_at: new Date(Date.now() - 100 * DAY) });
  // A use of the org recorded: an apply may select again.
  await db('api_key_usage').insert({
    org_id: acme.org.id,
    key_id: acme.adminKeyId,
    request_count: 1,
    ok_count: 1,
    last_used_at: new Date(),
    last_used_ip: '192.0.2.1',
  });
  const inserts: string[] = [];
  const onQuery = ({ sql }: { sql: string }) => {
    if (/insert into "audit_log"/.test(sql)) inserts.push(sql);
  };
  db.on('query', onQuery);
  const applied = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys/revoke-dormant`, {
    key: acme.adminKey,
    body: { dormantDays: 90, dryRun: false },
  });
  db.off('query', onQuery);
  t.equal(applied.body.keys.length, 2500);
  t.equal(
    await db('audit_log')
      .where({ action: 'keys.revoke_dormant' })
      .count()
      .first()
      .then((row) => Number(row!.count)),
    2500,
    'one entry a key',
  );
  t.equal(inserts.length, 3, 'in inserts of 1,000');
});
