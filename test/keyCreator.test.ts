import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { runCli } from '../scripts/cli';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A leaked key L (keys:write) created key P; the owner revoked L as the docs said, and nothing led
// to P: the key list took no creator, the audit log no actor, and the key view named no creator.
// P stayed active and revoked the owner's admin key. Each case fails without the feature.

async function world(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const keys = (orgId = acme.org.id) => `/api/orgs/${orgId}/api-keys`;
  const create = async (key: string, name: string) => {
    const created = await api.request('POST', keys(), { key, body: { name, scopes: ['keys:read', 'keys:write'] } });
    t.equal(created.status, 201, `${name} created`);
    return created.body as { id: string; key: string; createdByKeyId: string | null };
  };
  return { db, api, acme, globex, keys, create };
}

const ids = (body: { data: Array<{ id: string }> }) => body.data.map((key) => key.id);
const notFound = { status: 404, body: { error: { code: 'not_found', message: 'API key not found', requestId: String } } };

t.test('a key names the key that created it, and the key list and usage list find those a key created, after its revocation too', async (t) => {
  const { db, api, acme, globex, keys, create } = await world(t);
  const auth = { key: acme.adminKey };
  const leaked = await create(acme.adminKey, 'leaked');
  t.equal(leaked.createdByKeyId, acme.adminKeyId, 'the create answer names its creator');
  const planted = await create(leaked.key, 'planted');
  const second = await create(leaked.key, 'second');
  t.equal(planted.createdByKeyId, leaked.id);
  const cli: string[] = [];
  const cliCode = await runCli(['key', 'create', acme.org.id, '--name', 'by-cli', '--scopes', 'keys:read', '--json'], {
    db,
    pepper: api.config.api.keyPepper,
    now: Date.now,
    out: (text) => cli.push(text),
    err: () => undefined,
  });
  t.equal(cliCode, 0);
  const byCli = JSON.parse(cli.join('\n')) as { id: string };
  t.equal((await api.request('POST', `${keys()}/${leaked.id}/revoke`, auth)).status, 200);

  const byLeaked = await api.request('GET', `${keys()}?createdByKeyId=${leaked.id}`, auth);
  t.same(ids(byLeaked.body), [planted.id, second.id], 'the keys the revoked key created, oldest first');
  t.equal(byLeaked.body.page.total, 2, 'counted with the same filter');
  t.same(ids((await api.request('GET', `${keys()}?createdByKeyId=${leaked.id}&limit=1&offset=1`, auth)).body), [second.id], 'paged');
  t.equal((await api.request('GET', `${keys()}/${planted.id}`, auth)).body.createdByKeyId, leaked.id, "the key's view names its creator");
  const all = await api.request('GET', keys(), auth);
  t.same(
    Object.fromEntries(all.body.data.map((key: { name: string; createdByKeyId: string | null }) => [key.name, key.createdByKeyId])),
    { admin: null, leaked: acme.adminKeyId, planted: leaked.id, second: leaked.id, 'by-cli': null },
    'the CLI (and the first run) create with no key: null',
  );
  t.equal((await api.request('GET', `${keys()}/${byCli.id}`, auth)).body.createdByKeyId, null);

  // The usage list carries the key's fields too, and its keyset pages keep to the filter.
  const usage = (query: string) => api.request('GET', `${keys()}/usage?createdByKeyId=${leaked.id}&${query}`, auth);
  const first = await usage('sort=createdAt&order=asc&limit=1');
  t.same(ids(first.body), [planted.id]);
  t.equal(first.body.data[0].createdByKeyId, leaked.id);
  t.equal(first.body.page.total, 2);
  t.same(ids((await usage(`sort=createdAt&order=asc&limit=1&after=${first.body.page.nextAfter}`)).body), [second.id], 'after continues within the filter');
  t.same(ids((await usage(`sort=createdAt&order=asc&after=${second.id}`)).body), [], 'and ends there');
  t.same(ids((await usage('sort=requestCount&order=desc')).body).sort(), [planted.id, second.id].sort(), 'busiest first, filtered');
  t.same(ids((await usage('status=active')).body).sort(), [planted.id, second.id].sort(), 'with the other filters');

  // An empty page would read as "this key made none" (as webhooks: not_found).
  for (const keyId of [leaked.id, randomUUID()]) {
    for (const path of [keys(globex.org.id), `${keys(globex.org.id)}/usage`]) {
      t.match(await api.request('GET', `${path}?createdByKeyId=${keyId}`, { key: globex.adminKey }), notFound, `${path}: another org's key, or none`);
    }
  }
  for (const path of [keys(), `${keys()}/usage`]) {
    const bad = await api.request('GET', `${path}?createdByKeyId=not-a-key`, auth);
    t.equal(bad.status, 400);
    t.match(bad.body.error.message, /createdByKeyId: must be a UUID/, `${path}: names the parameter`);
  }
});

t.test("the audit log lists one key's entries by actorKeyId, paged with its cursor", async (t) => {
  const { db, api, acme, globex, keys, create } = await world(t);
  const auth = { key: acme.adminKey };
  const leaked = await create(acme.adminKey, 'leaked');
  const planted = await create(leaked.key, 'planted');
  const patched = await api.request('PATCH', `${keys()}/${planted.id}`, { key: leaked.key, body: { expectedNetworks: ['203.0.113.0/24'] } });
  t.equal(patched.status, 200);
  const hook = await api.request('POST', `/api/orgs/${acme.org.id}/webhooks`, { key: leaked.key, body: { url: 'https://127.0.0.1/theirs', events: ['*'] } });
  t.equal(hook.status, 201);
  await create(acme.adminKey, 'unrelated');
  await api.request('POST', `${keys()}/${leaked.id}/revoke`, auth);

  const log = `/api/orgs/${acme.org.id}/audit-log?actorKeyId=${leaked.id}&limit=2`;
  const first = await api.request('GET', log, auth);
  t.equal(first.status, 200);
  const second = await api.request('GET', `${log}&cursor=${first.body.page.nextCursor}`, auth);
  t.equal(second.body.page.nextCursor, null, 'the last page');
  const entries = [...first.body.data, ...second.body.data];
  t.same(
    entries.map((entry: { action: string; targetKeyId: string | null }) => [entry.action, entry.targetKeyId]),
    [
      ['webhook.create', null],
      ['key.update', planted.id],
      ['key.create', planted.id],
    ],
    "exactly its entries, newest first: not the admin's create of it, nor its revocation",
  );
  t.ok(
    entries.every((entry: { actor: { keyId: string } }) => entry.actor.keyId === leaked.id),
    'each names it',
  );
  const stored = await db('audit_log').where({ org_id: acme.org.id, actor_key_id: leaked.id }).orderBy('seq', 'desc').pluck('seq');
  t.same(
    entries.map((entry: { id: string }) => entry.id),
    stored.map(String),
  );
  t.equal((await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, auth)).body.data.length, 7, 'unfiltered, every entry');

  for (const keyId of [leaked.id, randomUUID()]) {
    t.match(await api.request('GET', `/api/orgs/${globex.org.id}/audit-log?actorKeyId=${keyId}`, { key: globex.adminKey }), notFound);
  }
  const bad = await api.request('GET', `/api/orgs/${acme.org.id}/audit-log?actorKeyId=x`, auth);
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /actorKeyId: must be a UUID/);
});
