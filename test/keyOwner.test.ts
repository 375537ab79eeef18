import t from 'tap';
import { twoOrgWorld } from './helpers/api';
import { backdatedKey } from './helpers/backdatedKey';

// A key names who answers for it (owner), set on create and changed, with its name, by PATCH: an
// operator about to clean up a key needs whom to ask, which neither the name nor the creator's id
// says.

const START = Date.parse('2026-12-01T00:00:00Z');

async function ownerWorld(t: Parameters<typeof twoOrgWorld>[0]) {
  const world = await twoOrgWorld(t, START);
  const { api, acme } = world;
  const keys = `/api/orgs/${acme.org.id}/api-keys`;
  const auth = { key: acme.adminKey };
  const patch = (id: string, body: unknown, key = acme.adminKey) => api.request('PATCH', `${keys}/${id}`, { key, body });
  const auditOf = async (action: string) =>
    (await api.request('GET', `/api/orgs/${acme.org.id}/audit-log`, auth)).body.data.filter((entry: { action: string }) => entry.action === action);
  return { ...world, keys, auth, patch, auditOf };
}

t.test('an owner given on create is shown wherever the key is, and filters the usage list', async (t) => {
  const { api, db, acme, keys, auth, auditOf } = await ownerWorld(t);
  const created = await api.request('POST', keys, { ...auth, body: { name: 'billing sync', owner: 'payments team', scopes: ['keys:read'] } });
  t.equal(created.status, 201);
  t.match(created.body, { name: 'billing sync', owner: 'payments team' });
  const id = created.body.id;
  const other = await api.request('POST', keys, { ...auth, body: { name: 'other', owner: 'Payments team', scopes: ['keys:read'] } });
  const unowned = await api.request('POST', keys, { ...auth, body: { name: 'no owner', scopes: ['keys:read'] } });
  t.equal(unowned.body.owner, null, 'none given: null');

  t.equal((await api.request('GET', `${keys}/${id}`, auth)).body.owner, 'payments team', "the key's view");
  const listed = (await api.request('GET', keys, auth)).body.data;
  t.same(
    listed.map((key: { name: string; owner: string | null }) => [key.name, key.owner]),
    [
      ['admin', null],
      ['billing sync', 'payments team'],
      ['other', 'Payments team'],
      ['no owner', null],
    ],
    'the key list',
  );
  const owned = await api.request('GET', `${keys}/usage?owner=${encodeURIComponent('payments team')}`, auth);
  t.same(
    owned.body.data.map((key: { id: string; owner: string }) => [key.id, key.owner]),
    [[id, 'payments team']],
    'the usage list, filtered by the owner exactly (not Payments team)',
  );
  t.equal(owned.body.page.total, 1);
  // Busiest first reads the usage rows alone and joins the keys only for a filter.
  await db('api_key_usage').insert(
    [
      [id, 5],
      [other.body.id, 9],
    ].map(([keyId, uses]) => ({ org_id: acme.org.id, key_id: keyId, request_count: uses, ok_count: uses, last_used_at: new Date(START) })),
  );
  const busiest = await api.request('GET', `${keys}/usage?sort=requestCount&order=desc&owner=${encodeURIComponent('payments team')}`, auth);
  t.same(
    [busiest.body.data.map((key: { id: string }) => key.id), busiest.body.page.total],
    [[id], 1],
    'busiest first, filtered: the busier key of another owner is left out',
  );
  t.equal((await api.request('GET', `${keys}/usage`, auth)).body.page.total, 4, 'unfiltered: every key');
  const searched = await api.request('GET', `${keys}/usage?q=PAYMENTS&sort=createdAt&order=asc`, auth);
  t.same(
    searched.body.data.map((key: { name: string }) => key.name),
    ['billing sync', 'other'],
    'the search finds keys by their owner too, case-insensitively',
  );
  t.match(
    await auditOf('key.create'),
    [
      { targetKeyId: unowned.body.id, details: { owner: null } },
      { targetKeyId: other.body.id, details: { owner: 'Payments team' } },
      { targetKeyId: id, details: { owner: 'payments team' } },
    ],
    'the create entries record the owner, newest first',
  );
});

t.test('PATCH renames a key and names or clears its owner, audited with what it replaced', async (t) => {
  const { api, clock, db, acme, keys, auth, patch, auditOf } = await ownerWorld(t);
  const key = await backdatedKey(api, db, acme.org.id, 'old name', null, clock.now);

  t.match((await api.request('GET', '/api/whoami', { key: key.plaintext })).body, { name: 'old name' }, 'the key in use (and so cached)');
  const renamed = await patch(key.id, { name: '  new name ', owner: 'ops@example.com' });
  t.equal(renamed.status, 200);
  t.match(renamed.body, { id: key.id, name: 'new name', owner: 'ops@example.com', status: 'active' }, 'trimmed as a create trims');
  t.notOk(renamed.text.includes(key.plaintext), 'no key material');
  t.match((await api.request('GET', `${keys}/${key.id}`, auth)).body, { name: 'new name', owner: 'ops@example.com' }, 'stored');
  t.match((await api.request('GET', '/api/whoami', { key: key.plaintext })).body, { name: 'new name' }, 'the key works, by its new name at once');

  t.equal((await patch(key.id, { owner: 'ops@example.com' })).status, 200, 'the same owner again');
  const cleared = await patch(key.id, { owner: null });
  t.match(cleared.body, { name: 'new name', owner: null }, 'null: nobody named; the name left as it is');
  t.same(
    (await auditOf('key.update')).map((entry: { details: unknown }) => entry.details),
    [{ owner: { from: 'ops@example.com', to: null } }, { name: { from: 'old name', to: 'new name' }, owner: { from: null, to: 'ops@example.com' } }],
    'newest first; the PATCH that changed nothing recorded nothing',
  );

  t.equal((await api.request('POST', `${keys}/${key.id}/revoke`, auth)).status, 200);
  const revokedRenamed = await patch(key.id, { name: 'leaked, revoked', owner: 'security' });
  t.match([revokedRenamed.status, revokedRenamed.body], [200, { status: 'revoked', name: 'leaked, revoked', owner: 'security' }], 'a revoked key too');
  t.equal((await api.request('GET', '/api/whoami', { key: key.plaintext })).status, 401, 'and it stays revoked');
});

t.test('bad names and owners are 400s that say what is wrong, and change nothing', async (t) => {
  const { api, keys, auth, patch, acme } = await ownerWorld(t);
  const other = await api.services.apiKeys.create(acme.org.id, { name: 'deployed', scopes: ['keys:read'], expiresAt: null });
  const cases: Array<[string, unknown, string]> = [
    ['an empty owner', { owner: '  ' }, 'Invalid body: owner: must not be empty'],
    ['a long owner', { owner: 'o'.repeat(201) }, 'Invalid body: owner: must be at most 200 characters'],
    ['an owner with ESC', { owner: 'ops\x1b[2J' }, 'Invalid body: owner: must not contain control characters (such as NUL, tab, newline or ESC)'],
    ['an owner holding a key', { owner: `ask ${other.plaintext}` }, 'Invalid body: owner: must not contain an API key'],
    ['an owner not a string', { owner: 7 }, 'Invalid body: owner: Invalid input: expected string, received number'],
    ['a null name', { name: null }, 'Invalid body: name: Invalid input: expected string, received null'],
    ['an empty name', { name: '' }, 'Invalid body: name: must not be empty'],
    ['no field', {}, 'Invalid body: body: must set at least one of name, owner, expectedNetworks, expiresAt'],
  ];
  for (const [label, body, message] of cases) {
    const response = await patch(other.key.id, body);
    t.same([response.status, response.body.error?.code, response.body.error?.message], [400, 'invalid_request', message], `PATCH: ${label}`);
  }
  const create = await api.request('POST', keys, { ...auth, body: { name: 'x', owner: '', scopes: ['keys:read'] } });
  t.same([create.status, create.body.error?.message], [400, 'Invalid body: owner: must not be empty'], 'create: an empty owner');
  const search = await api.request('GET', `${keys}/usage?owner=${encodeURIComponent(other.plaintext)}`, auth);
  t.same([search.status, search.body.error?.message], [400, 'Invalid query: owner: must not contain an API key'], 'the filter: a key');
  t.match((await api.request('GET', `${keys}/${other.key.id}`, auth)).body, { name: 'deployed', owner: null }, 'unchanged');
});

t.test("another org's key is a 404, and a key cannot rename one with scopes it lacks", async (t) => {
  const { api, acme, globex, keys, auth, patch } = await ownerWorld(t);
  const target = await api.services.apiKeys.create(acme.org.id, { name: 'acme key', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  const fromGlobex = await api.request('PATCH', `/api/orgs/${globex.org.id}/api-keys/${target.key.id}`, { key: globex.adminKey, body: { owner: 'mallory' } });
  t.same([fromGlobex.status, fromGlobex.body.error?.message], [404, 'API key not found'], "this org's key on the other org's path");
  const crossed = await api.request('PATCH', `${keys}/${target.key.id}`, { key: globex.adminKey, body: { owner: 'mallory' } });
  t.same([crossed.status, crossed.body.error?.message], [404, 'Organization not found'], "a key of another org on this org's path");
  const writer = await api.services.apiKeys.create(acme.org.id, { name: 'writer', scopes: ['keys:write'], expiresAt: null });
  const narrower = await patch(target.key.id, { name: 'renamed by a narrower key' }, writer.plaintext);
  t.equal(narrower.status, 403, 'a key with fewer scopes than the target');
  t.match((await api.request('GET', `${keys}/${target.key.id}`, auth)).body, { name: 'acme key', owner: null }, 'unchanged');
});

t.test('the dormant clean-up lists each key with its owner, and its audit entries record it', async (t) => {
  const { api, db, clock, acme, keys, auth, patch, auditOf } = await ownerWorld(t);
  const idle = await backdatedKey(api, db, acme.org.id, 'idle', null, clock.now);
  await patch(idle.id, { owner: 'data team' });
  await db('api_key_usage').insert({ org_id: acme.org.id, key_id: acme.adminKeyId, request_count: 1, ok_count: 1, last_used_at: new Date(clock.now) });
  const dry = await api.request('POST', `${keys}/revoke-dormant`, { ...auth, body: { dormantDays: 30 } });
  t.match(dry.body.keys, [{ id: idle.id, owner: 'data team' }], 'the dry run says whom to ask');
  const applied = await api.request('POST', `${keys}/revoke-dormant`, { ...auth, body: { dormantDays: 30, dryRun: false, keyIds: [idle.id] } });
  t.match(applied.body.keys, [{ id: idle.id, status: 'revoked', owner: 'data team' }]);
  t.match(await auditOf('keys.revoke_dormant'), [{ targetKeyId: idle.id, details: { name: 'idle', owner: 'data team' } }]);
});
