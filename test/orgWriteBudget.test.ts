import t from 'tap';
import { orgWriteBudget } from '../api/auth/orgWriteBudget';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A key with keys:write PATCHing a key in a loop wrote an audit entry per request, never
// deleted, into the database every org shares: API_WRITES_PER_ORG_MINUTE bounds an org's changes.

t.test('the budget: a minute of changes at once, then one as each share of the minute refills', async (t) => {
  let clock = 0;
  const budget = orgWriteBudget(3, () => clock);
  t.strictSame([budget.take('a'), budget.take('a'), budget.take('a')], [0, 0, 0], 'three at once');
  t.equal(budget.take('a'), 20_000, 'the fourth waits for a third of a minute');
  t.equal(budget.take('b'), 0, "another org's budget is its own");
  clock += 19_999;
  t.ok(budget.take('a') > 0, 'not before');
  clock += 1;
  t.equal(budget.take('a'), 0, 'then one more');
  clock += 10 * 60_000;
  t.strictSame([budget.take('a'), budget.take('a'), budget.take('a'), budget.take('a') > 0], [0, 0, 0, true], 'a long pause refills a minute, no more');
  t.strictSame(budget.stats, { refused: 3 }, 'counted for the metrics');
  budget.giveBack('a');
  t.equal(budget.take('a'), 0, 'a change refused before it could change anything gives its place back');
  for (let i = 0; i < 5; i += 1) budget.giveBack('a');
  t.strictSame([budget.take('a'), budget.take('a'), budget.take('a'), budget.take('a') > 0], [0, 0, 0, true], 'never more than a minute of changes');
  t.throws(() => orgWriteBudget(0, () => 0), RangeError);
});

t.test('an org over API_WRITES_PER_ORG_MINUTE gets 429 for its changes, not its reads; other orgs change on (fails without the fix)', async (t) => {
  const { db } = await freshDatabase(t);
  // The budget's clock stands still: no share of the minute refills while the test runs.
  const api = await startTestApi(t, db, { env: { API_WRITES_PER_ORG_MINUTE: '3' }, elapsed: () => 1_000_000 });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const fence = (org: typeof acme, i: number, key = org.adminKey) =>
    api.request('PATCH', `/api/orgs/${org.org.id}/api-keys/${org.adminKeyId}`, { key, body: { expectedNetworks: [`192.0.2.${i}/32`] } });
  // A key that may not change anything does not spend its org's budget.
  const reader = (await api.services.apiKeys.create(acme.org.id, { name: 'reader', scopes: ['keys:read'], expiresAt: null })).plaintext;
  for (let i = 0; i < 3; i += 1) t.equal((await fence(acme, 9, reader)).status, 403, 'keys:read alone is refused its change');
  const auditsBefore = Number((await db('audit_log').where({ org_id: acme.org.id }).count())[0].count);
  t.strictSame([(await fence(acme, 1)).status, (await fence(acme, 2)).status, (await fence(acme, 3)).status], [200, 200, 200]);
  const refused = await fence(acme, 4);
  t.equal(refused.status, 429);
  t.match(refused.body.error, { code: 'too_many_requests', message: /3 a minute, API_WRITES_PER_ORG_MINUTE/ });
  t.equal(refused.headers.get('retry-after'), '20', 'when a third of the minute has refilled one');
  t.match(api.uses.at(-1), { keyId: acme.adminKeyId, outcome: 'forbidden' }, 'recorded as a use refused by policy');
  t.equal(Number((await db('audit_log').where({ org_id: acme.org.id }).count())[0].count), auditsBefore + 3, 'no audit entry for the refused change');
  const [networks] = (await db.raw('select cast(expected_networks as text[]) as n from api_keys where id = ?', [acme.adminKeyId])).rows;
  t.strictSame(networks.n, ['192.0.2.3/32'], 'nor the change');
  t.equal((await api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage`, { key: acme.adminKey })).status, 200, 'reads are not counted');
  t.equal((await fence(globex, 1)).status, 200, 'another org changes on');
});

// Charged to the budget, a leaked keys:write key that spent it kept its org from revoking it: the
// admin's revoke got 429 (a review; fails without the fix). A revocation is bounded without it.
t.test("a key that spent its org's write budget can still be revoked; the org's other changes stay refused", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { API_WRITES_PER_ORG_MINUTE: '3' }, elapsed: () => 1_000_000 });
  const acme = await seedOrg(api, db, 'acme');
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  // Made by the service: a create through the API would take one of the three changes.
  const { key: writer, plaintext: writerKey } = await api.services.apiKeys.create(acme.org.id, { name: 'writer', scopes: ['keys:write'], expiresAt: null });
  const fence = (key: string, i: number) => api.request('PATCH', `${base}/${writer.id}`, { key, body: { expectedNetworks: [`192.0.2.${i}/32`] } });
  t.strictSame(
    [(await fence(writerKey, 1)).status, (await fence(writerKey, 2)).status, (await fence(writerKey, 3)).status],
    [200, 200, 200],
    'the writer spends the budget',
  );
  t.equal((await fence(acme.adminKey, 4)).status, 429, 'the budget is spent');
  const audits = async () => Number((await db('audit_log').where({ org_id: acme.org.id, action: 'key.revoke' }).count())[0].count);

  const revoked = await api.request('POST', `${base}/${writer.id}/revoke`, { key: acme.adminKey });
  t.equal(revoked.status, 200, 'the admin revokes the writer all the same');
  t.equal(revoked.body.status, 'revoked');
  t.equal((await api.request('GET', '/api/whoami', { key: writerKey })).status, 401, 'the writer is locked out');
  t.equal(await audits(), 1, 'its revocation audited');
  t.equal((await api.request('POST', `${base}/${writer.id}/revoke`, { key: acme.adminKey })).status, 200, 'revoking it again is answered');
  t.equal(await audits(), 1, 'and writes nothing: a key is revoked once');
  t.equal((await fence(acme.adminKey, 5)).status, 429, "the org's other changes are still refused");
  // A restore is no answer to a leak: charged as any change (409 here, for good, if it were not).
  t.equal((await api.request('POST', `${base}/${writer.id}/restore`, { key: acme.adminKey })).status, 429, 'a restore too');
});
