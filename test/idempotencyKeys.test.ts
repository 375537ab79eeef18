import http from 'node:http';
import t from 'tap';
import { DAY_MS } from '../shared/timeUnits';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi, twoOrgWorld } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { eachReplaysItsOwn, oneMadeFourReplayed } from './helpers/idempotency';

// Idempotency-Key on key create and rotate (api/idempotency/, docs/api-keys.md "Idempotent create
// and rotate"): a client whose connection dropped after the commit retried and got a second key,
// the first one live with a secret no one had. A retry now answers the first outcome, never with
// the plaintext, which is kept nowhere.

const START = Date.parse('2026-12-06T12:00:00Z');
const keysNamed = async (db: Db, name: string) => db('api_keys').where({ name }).pluck('id');
const auditActions = async (db: Db, targetKeyId: string) => db('audit_log').where({ target_key_id: targetKeyId }).orderBy('id').pluck('action');

t.test('a retried create answers the first key, without its plaintext, and creates nothing', async (t) => {
  const { db, api, acme } = await twoOrgWorld(t, START);
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const body = { name: 'deploys', scopes: ['keys:read'], expectedNetworks: ['10.0.0.0/8'] };
  const headers = { 'idempotency-key': 'create-1' };
  const first = await api.request('POST', base, { key: acme.adminKey, body, headers });
  t.equal(first.status, 201);
  t.match(first.body.key, /^ku_/);
  t.equal(first.headers.get('idempotent-replayed'), null, 'the first answer is no replay');

  // The same body with its fields in another order and other spacing is the same request.
  const replay = await api.request('POST', base, {
    key: acme.adminKey,
    body: JSON.stringify({ expectedNetworks: ['10.0.0.0/8'], scopes: ['keys:read'], name: 'deploys' }, null, 2),
    headers,
  });
  t.equal(replay.status, 201, 'the first answer’s status');
  t.equal(replay.headers.get('idempotent-replayed'), 'true');
  t.equal(replay.body.id, first.body.id, 'the same key');
  t.equal(replay.body.replayed, true);
  t.notOk('key' in replay.body, 'no plaintext in a replay');
  t.notOk(replay.text.includes(first.body.key), 'the plaintext appears nowhere in the replay');
  const { key: _plaintext, ...firstView } = first.body;
  t.same(replay.body, { ...firstView, replayed: true }, 'the key as the first answer showed it');

  t.same(await keysNamed(db, 'deploys'), [first.body.id], 'one key');
  t.same(await auditActions(db, first.body.id), ['key.create'], 'one audit entry: a replay changes nothing');
  const kept = await db('idempotency_keys').where({ org_id: acme.org.id }).select(db.raw('response_body::text as body'), 'key_hash');
  t.equal(kept.length, 1);
  t.notOk(kept[0].body.includes(first.body.key), 'the plaintext is not kept');
  t.notOk(kept[0].body.includes(first.body.key.slice(12)), 'nor its secret part');
  t.notOk(kept[0].key_hash.toString('latin1').includes('create-1'), 'the idempotency key is kept as a hash');
  await t.rejects(
    db('idempotency_keys')
      .where({ org_id: acme.org.id })
      .update({ response_body: db.raw(`response_body || '{"key":"x"}'::jsonb`) }),
    /idempotency_keys_no_plaintext_check/,
    'the table refuses an answer with a key in it',
  );

  // Without the header, nothing changes: each create is a key.
  await api.request('POST', base, { key: acme.adminKey, body: { name: 'plain', scopes: ['keys:read'] } });
  await api.request('POST', base, { key: acme.adminKey, body: { name: 'plain', scopes: ['keys:read'] } });
  t.equal((await keysNamed(db, 'plain')).length, 2, 'no header, no replay');
});

t.test('a retried rotate rotates once: the first new secret keeps working, the grace is not restarted', async (t) => {
  const { db, api, clock, acme } = await twoOrgWorld(t, START);
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const target = await api.services.apiKeys.create(acme.org.id, { name: 'rotated', scopes: ['keys:read'], expiresAt: null });
  const headers = { 'idempotency-key': 'rotate-1' };
  const first = await api.request('POST', `${base}/${target.key.id}/rotate`, { key: acme.adminKey, body: { gracePeriodSeconds: 600 }, headers });
  t.equal(first.status, 200);
  clock.now += 60_000;
  const replay = await api.request('POST', `${base}/${target.key.id}/rotate`, { key: acme.adminKey, body: { gracePeriodSeconds: 600 }, headers });
  t.equal(replay.status, 200);
  t.equal(replay.headers.get('idempotent-replayed'), 'true');
  t.same([replay.body.id, replay.body.replayed, replay.body.rotatedAt], [target.key.id, true, first.body.rotatedAt]);
  t.equal(replay.body.previousSecretExpiresAt, first.body.previousSecretExpiresAt, 'the grace period the first rotation gave');
  t.notOk('key' in replay.body, 'no plaintext');
  t.equal((await api.request('GET', '/api/whoami', { key: first.body.key })).status, 200, 'the first new secret is still the current one');
  t.equal((await api.request('GET', '/api/whoami', { key: target.plaintext })).status, 200, 'the original secret is in its grace');
  t.same(await auditActions(db, target.key.id), ['key.create', 'key.rotate'], 'one rotation');
});

t.test('the same Idempotency-Key for another request is refused with 422, changing nothing', async (t) => {
  const { db, api, acme } = await twoOrgWorld(t, START);
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const headers = { 'idempotency-key': 'reused' };
  const first = await api.request('POST', base, { key: acme.adminKey, body: { name: 'first', scopes: ['keys:read'] }, headers });
  t.equal(first.status, 201);

  const otherBody = await api.request('POST', base, { key: acme.adminKey, body: { name: 'second', scopes: ['keys:read'] }, headers });
  t.equal(otherBody.status, 422);
  t.equal(otherBody.body.error.code, 'idempotency_key_reused');
  t.match(otherBody.body.error.message, /another request/);
  t.match(otherBody.body.error, { requestId: String });

  const otherRoute = await api.request('POST', `${base}/${first.body.id}/rotate`, { key: acme.adminKey, body: {}, headers });
  t.same([otherRoute.status, otherRoute.body.error?.code], [422, 'idempotency_key_reused'], 'another route');
  const other = await api.services.apiKeys.create(acme.org.id, { name: 'other', scopes: ['keys:read'], expiresAt: null });
  const rotated = await api.request('POST', `${base}/${other.key.id}/rotate`, { key: acme.adminKey, body: {}, headers: { 'idempotency-key': 'rotate-x' } });
  t.equal(rotated.status, 200);
  const otherKey = await api.request('POST', `${base}/${first.body.id}/rotate`, { key: acme.adminKey, body: {}, headers: { 'idempotency-key': 'rotate-x' } });
  t.same([otherKey.status, otherKey.body.error?.code], [422, 'idempotency_key_reused'], 'the same route for another key');

  t.same(await keysNamed(db, 'second'), [], 'no key made');
  t.same(await auditActions(db, first.body.id), ['key.create'], 'the first key not rotated');
});

t.test('five concurrent creates with one Idempotency-Key make exactly one key', async (t) => {
  const { db, api, acme } = await twoOrgWorld(t, START);
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const send = () =>
    api.request('POST', base, { key: acme.adminKey, body: { name: 'raced', scopes: ['keys:read'] }, headers: { 'idempotency-key': 'raced-1' } });
  const answers = await Promise.all([send(), send(), send(), send(), send()]);
  oneMadeFourReplayed(t, answers, 'key');
  t.equal((await keysNamed(db, 'raced')).length, 1, 'one key in the database');

  // Through the service at once (no HTTP turn taking), on connections enough for all five.
  const rotated = await api.services.apiKeys.create(acme.org.id, { name: 'rotated at once', scopes: ['keys:read'], expiresAt: null });
  const request = { keyHash: Buffer.alloc(32, 1), requestHash: Buffer.alloc(32, 2) };
  const rotations = await Promise.all(
    Array.from({ length: 5 }, () => api.services.apiKeys.rotateIdempotent(acme.org.id, rotated.key.id, { graceSeconds: 0 }, request)),
  );
  t.equal(rotations.filter((outcome) => !outcome.replayed).length, 1, 'one rotation');
  t.same(await auditActions(db, rotated.key.id), ['key.create', 'key.rotate']);
});

t.test("another org's, and another caller's, idempotency keys are their own", async (t) => {
  const { db, api, acme, globex } = await twoOrgWorld(t, START);
  const headers = { 'idempotency-key': 'shared-name' };
  const body = { name: 'scoped', scopes: ['keys:read'] };
  const inAcme = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: acme.adminKey, body, headers });
  const inGlobex = await api.request('POST', `/api/orgs/${globex.org.id}/api-keys`, { key: globex.adminKey, body, headers });
  t.same([inAcme.status, inGlobex.status], [201, 201]);
  t.not(inGlobex.body.id, inAcme.body.id, 'another org: a key of its own');
  t.match(inGlobex.body.key, /^ku_/, 'not a replay of the other org’s');
  t.equal(inGlobex.body.orgId, globex.org.id);

  // globex's key cannot reach acme's remembered answer: the org is not its own (404, as any id of another org).
  const across = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: globex.adminKey, body, headers });
  t.same([across.status, across.body.error?.code], [404, 'not_found']);
  t.notOk(across.text.includes(inAcme.body.id), 'nothing of acme’s answer');

  // Another key of the same org with the same Idempotency-Key: its own request, not a replay.
  const second = await api.services.apiKeys.create(acme.org.id, { name: 'second admin', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  const bySecond = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: second.plaintext, body, headers });
  t.equal(bySecond.status, 201);
  t.not(bySecond.body.id, inAcme.body.id, 'another caller: a key of its own');
  t.match(bySecond.body.key, /^ku_/);
  t.equal((await keysNamed(db, 'scoped')).length, 3);

  // Each retry finds its own caller's answer, in its own org.
  const retries = await Promise.all([
    api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: acme.adminKey, body, headers }),
    api.request('POST', `/api/orgs/${globex.org.id}/api-keys`, { key: globex.adminKey, body, headers }),
    api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: second.plaintext, body, headers }),
  ]);
  t.same([inAcme.body.orgId, inGlobex.body.orgId, bySecond.body.orgId], [acme.org.id, globex.org.id, acme.org.id]);
  eachReplaysItsOwn(t, retries, [inAcme, inGlobex, bySecond]);
  t.equal((await keysNamed(db, 'scoped')).length, 3, 'no key made by the retries');
  // npm run test:citus shares one database among the test files: these two orgs' rows only.
  const remembered = await db('idempotency_keys').whereIn('org_id', [acme.org.id, globex.org.id]).select('org_id', 'caller_key_id');
  t.equal(remembered.length, 3, 'one remembered answer per org and caller');
});

// Sends the header twice as two lines (fetch would join them into one value).
function postWithRepeatedHeader(port: number, path: string, key: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'idempotency-key': ['one', 'two'] },
      },
      (response) => {
        let text = '';
        response.setEncoding('utf8').on('data', (chunk) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ name: 'invalid', scopes: ['keys:read'] }));
  });
}

t.test('a malformed Idempotency-Key is a 400 naming the header, and nothing is made', async (t) => {
  const { db, api, acme } = await twoOrgWorld(t, START);
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const target = await api.services.apiKeys.create(acme.org.id, { name: 'target', scopes: ['keys:read'], expiresAt: null });
  const cases: Array<[string, string]> = [
    ['empty', ''],
    ['256 characters', 'k'.repeat(256)],
    ['a tab', 'a\tb'],
    ['not ASCII', 'clé'],
    ['an API key', acme.adminKey],
  ];
  for (const [label, value] of cases) {
    const created = await api.request('POST', base, {
      key: acme.adminKey,
      body: { name: 'invalid', scopes: ['keys:read'] },
      headers: { 'idempotency-key': value },
    });
    t.same([created.status, created.body.error?.code], [400, 'invalid_request'], `create, ${label}`);
    t.match(created.body.error?.message, /^Invalid header: Idempotency-Key: /, `create, ${label}: names the header`);
    const rotated = await api.request('POST', `${base}/${target.key.id}/rotate`, { key: acme.adminKey, body: {}, headers: { 'idempotency-key': value } });
    t.same([rotated.status, rotated.body.error?.code], [400, 'invalid_request'], `rotate, ${label}`);
  }
  const repeated = await postWithRepeatedHeader(api.port, base, acme.adminKey);
  t.same([repeated.status, repeated.body.error?.code], [400, 'invalid_request'], 'given twice');
  t.match(repeated.body.error?.message, /given more than once/);
  t.equal(api.evidence.leaksOf([acme.adminKey]).length, 0, 'the key sent as an Idempotency-Key is not echoed');
  t.same(await keysNamed(db, 'invalid'), [], 'no key made');
  t.same(await auditActions(db, target.key.id), ['key.create'], 'no rotation');
  const longest = await api.request('POST', base, {
    key: acme.adminKey,
    body: { name: 'longest', scopes: ['keys:read'] },
    headers: { 'idempotency-key': 'k'.repeat(255) },
  });
  t.equal(longest.status, 201, '255 printable characters are a key');
});

t.test('a key is remembered for IDEMPOTENCY_KEY_TTL_SECONDS, then a retry is a new request', async (t) => {
  const { db } = await freshDatabase(t);
  const clock = { now: START };
  const api = await startTestApi(t, db, { now: () => clock.now });
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const body = { name: 'windowed', scopes: ['keys:read'] };
  const send = (key: string) => api.request('POST', base, { key: adminKey, body, headers: { 'idempotency-key': key } });
  const first = await send('window-1');
  await send('window-2');

  clock.now = START + DAY_MS - 1;
  const late = await send('window-1');
  t.same([late.body.replayed, late.body.id], [true, first.body.id], 'a replay to the last millisecond of the default 24 hours');

  clock.now = START + DAY_MS;
  const after = await send('window-1');
  t.equal(after.status, 201);
  t.not(after.body.id, first.body.id, 'after the window: a new key');
  t.match(after.body.key, /^ku_/);
  t.equal((await keysNamed(db, 'windowed')).length, 3);
  // The expired row of window-1 replaced, window-2's deleted on the way.
  const kept = await db('idempotency_keys').where({ org_id: org.id }).pluck('key_id');
  t.same(kept, [after.body.id], 'expired rows deleted on the write path');
  const again = await send('window-1');
  t.same([again.body.replayed, again.body.id], [true, after.body.id], 'remembered again from the new request');

  // A shorter window, set for the API.
  const short = await startTestApi(t, db, { now: () => clock.now, env: { IDEMPOTENCY_KEY_TTL_SECONDS: '60' } });
  const made = await short.request('POST', base, { key: adminKey, body, headers: { 'idempotency-key': 'short-1' } });
  clock.now += 60_000;
  const retried = await short.request('POST', base, { key: adminKey, body, headers: { 'idempotency-key': 'short-1' } });
  t.not(retried.body.id, made.body.id, 'IDEMPOTENCY_KEY_TTL_SECONDS=60: a retry a minute later is a new request');
});
