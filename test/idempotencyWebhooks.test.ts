import t, { type Test } from 'tap';
import type { Db } from '../shared/db';
import type { Lookup } from '../shared/webhookTarget';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, heldAuditLock, someoneWaitsOnLock } from './helpers/database';
import { eachReplaysItsOwn, oneMadeFourReplayed } from './helpers/idempotency';

// Idempotency-Key on webhook create and secret rotation (api/idempotency/idempotentChange.ts,
// docs/webhooks.md "Idempotent create and secret rotation"): a client whose connection dropped
// after the commit retried and got a second webhook (every event delivered twice, the first
// webhook's secret lost) or a second rotation (the first new secret lost, the receiver configured
// with it refusing every delivery once the grace ends). A retry now answers the first outcome,
// never with the secret.

const START = Date.parse('2026-12-07T12:00:00Z');
const PUBLIC_ADDRESS = '203.0.113.7';

async function world(t: Test) {
  const { db, url } = await freshDatabase(t);
  const clock = { now: START };
  // A host that resolves while `resolving` holds, counted: a retry must not look it up again.
  const dns = { resolving: true, lookups: 0 };
  const lookup: Lookup = async () => {
    dns.lookups += 1;
    if (!dns.resolving) throw Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' });
    return [{ address: PUBLIC_ADDRESS, family: 4 }];
  };
  const api = await startTestApi(t, db, { now: () => clock.now, webhookLookup: lookup });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const hooks = (org = acme.org.id) => `/api/orgs/${org}/webhooks`;
  return { db, url, api, clock, dns, acme, globex, hooks };
}

const webhooksAt = async (db: Db, url: string) => db('webhooks').where({ url }).orderBy('created_at').pluck('id');
const auditOf = async (db: Db, webhookId: string) => db('audit_log').whereRaw(`details ->> 'webhookId' = ?`, [webhookId]).orderBy('id').pluck('action');

t.test('a retried create answers the first webhook, without its secret, and creates nothing', async (t) => {
  const { db, api, clock, dns, acme, hooks } = await world(t);
  const body = { url: 'https://hooks.example/in?token=receiver', events: ['key.new_ip', 'key.spike'] };
  const headers = { 'idempotency-key': 'hook-create-1' };
  const first = await api.request('POST', hooks(), { key: acme.adminKey, body, headers });
  t.equal(first.status, 201);
  t.match(first.body.secret, /^whsec_/);
  t.equal(first.headers.get('idempotent-replayed'), null, 'the first answer is no replay');
  t.equal(dns.lookups, 1);

  // Another order of fields, other spacing: the same request. The host no longer resolves: a
  // retry is not judged again, it answers the webhook that exists.
  clock.now += 60_000;
  dns.resolving = false;
  const replay = await api.request('POST', hooks(), {
    key: acme.adminKey,
    body: JSON.stringify({ events: ['key.new_ip', 'key.spike'], url: body.url }, null, 2),
    headers,
  });
  t.equal(replay.status, 201, 'the first answer’s status');
  t.equal(replay.headers.get('idempotent-replayed'), 'true');
  t.equal(replay.headers.get('cache-control'), 'no-store');
  t.equal(replay.body.replayed, true);
  t.notOk('secret' in replay.body, 'no secret in a replay');
  const { secret, ...firstView } = first.body;
  t.same(replay.body, { ...firstView, replayed: true }, 'the webhook as the first answer showed it');
  t.equal(dns.lookups, 1, 'the host was not looked up again');

  t.same(await webhooksAt(db, body.url), [first.body.id], 'one webhook');
  t.same(await auditOf(db, first.body.id), ['webhook.create'], 'one audit entry: a replay changes nothing');
  const kept = await db('idempotency_keys').where({ org_id: acme.org.id }).select(db.raw('response_body::text as body'), 'resource', 'key_id');
  t.same(
    kept.map((row) => [row.resource, row.key_id]),
    [['webhook', first.body.id]],
  );
  t.notOk(kept[0].body.includes(secret), 'the secret is not kept');
  t.notOk(kept[0].body.includes(secret.slice(6)), 'nor its random part');
  t.same(api.evidence.leaksOf([secret, secret.slice(6)]), [], 'the secret is in no other response body and no log line');
  await t.rejects(
    db('idempotency_keys')
      .where({ org_id: acme.org.id })
      .update({ response_body: db.raw(`response_body || '{"secret":"whsec_x"}'::jsonb`) }),
    /idempotency_keys_no_secret_check/,
    'the table refuses an answer with a secret in it',
  );

  // Without the header, each create is a webhook, as before.
  dns.resolving = true;
  const plain = { url: 'https://hooks.example/plain', events: ['*'] };
  await api.request('POST', hooks(), { key: acme.adminKey, body: plain });
  await api.request('POST', hooks(), { key: acme.adminKey, body: plain });
  t.equal((await webhooksAt(db, plain.url)).length, 2, 'no header, no replay');
});

t.test('a retried secret rotation rotates once: the first new secret stays the current one', async (t) => {
  const { db, api, clock, acme, hooks } = await world(t);
  const made = await api.services.webhooks.create(acme.org.id, { url: 'https://hooks.example/rotated', events: ['*'] });
  const path = `${hooks()}/${made.webhook.id}/rotate-secret`;
  const headers = { 'idempotency-key': 'hook-rotate-1' };
  const first = await api.request('POST', path, { key: acme.adminKey, body: { gracePeriodSeconds: 600 }, headers });
  t.equal(first.status, 200);
  t.match(first.body.secret, /^whsec_/);
  const sealed = await db('webhooks').where({ id: made.webhook.id }).first<Record<string, Buffer>>('secret_box', 'previous_secret_box');

  clock.now += 60_000;
  const replay = await api.request('POST', path, { key: acme.adminKey, body: { gracePeriodSeconds: 600 }, headers });
  t.equal(replay.status, 200);
  t.equal(replay.headers.get('idempotent-replayed'), 'true');
  t.same([replay.body.id, replay.body.replayed, replay.body.secret], [made.webhook.id, true, undefined], 'a replay, without the secret');
  t.equal(replay.body.previousSecretExpiresAt, first.body.previousSecretExpiresAt, 'the grace period the first rotation gave');
  const after = await db('webhooks').where({ id: made.webhook.id }).first<Record<string, Buffer>>('secret_box', 'previous_secret_box');
  t.ok(after.secret_box.equals(sealed.secret_box), 'the first new secret is still the current one');
  t.ok(after.previous_secret_box.equals(sealed.previous_secret_box), 'and the original one still the previous one');
  t.same(await auditOf(db, made.webhook.id), ['webhook.create', 'webhook.rotate_secret'], 'one rotation');
  t.same(api.evidence.leaksOf([first.body.secret]), [], 'the new secret in its one answer only');

  // Without the key, a second rotation with a grace period is refused as before (409): the
  // retry that used to lose the first secret.
  const unkeyed = await api.request('POST', path, { key: acme.adminKey, body: { gracePeriodSeconds: 600 } });
  t.same([unkeyed.status, unkeyed.body.error?.code], [409, 'conflict']);
});

t.test('the same Idempotency-Key for another request is refused with 422, changing nothing', async (t) => {
  const { db, api, acme, hooks } = await world(t);
  const headers = { 'idempotency-key': 'hook-reused' };
  const first = await api.request('POST', hooks(), { key: acme.adminKey, body: { url: 'https://hooks.example/a', events: ['*'] }, headers });
  t.equal(first.status, 201);

  const otherBody = await api.request('POST', hooks(), { key: acme.adminKey, body: { url: 'https://hooks.example/b', events: ['*'] }, headers });
  t.same([otherBody.status, otherBody.body.error?.code], [422, 'idempotency_key_reused']);
  t.match(otherBody.body.error.message, /another request/);

  const otherRoute = await api.request('POST', `${hooks()}/${first.body.id}/rotate-secret`, { key: acme.adminKey, body: {}, headers });
  t.same([otherRoute.status, otherRoute.body.error?.code], [422, 'idempotency_key_reused'], 'the secret rotation');
  const keyRoute = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: acme.adminKey, body: { name: 'k', scopes: ['keys:read'] }, headers });
  t.same([keyRoute.status, keyRoute.body.error?.code], [422, 'idempotency_key_reused'], 'a key create: one key per request, whatever its route');

  const other = await api.services.webhooks.create(acme.org.id, { url: 'https://hooks.example/other', events: ['*'] });
  const rotateHeaders = { 'idempotency-key': 'hook-rotate-x' };
  const rotated = await api.request('POST', `${hooks()}/${other.webhook.id}/rotate-secret`, { key: acme.adminKey, body: {}, headers: rotateHeaders });
  t.equal(rotated.status, 200);
  const otherHook = await api.request('POST', `${hooks()}/${first.body.id}/rotate-secret`, { key: acme.adminKey, body: {}, headers: rotateHeaders });
  t.same([otherHook.status, otherHook.body.error?.code], [422, 'idempotency_key_reused'], 'the same route for another webhook');
  const otherGrace = await api.request('POST', `${hooks()}/${other.webhook.id}/rotate-secret`, {
    key: acme.adminKey,
    body: { gracePeriodSeconds: 0 },
    headers: rotateHeaders,
  });
  t.same([otherGrace.status, otherGrace.body.error?.code], [422, 'idempotency_key_reused'], 'the same webhook, another body');

  t.same(await webhooksAt(db, 'https://hooks.example/b'), [], 'no webhook made');
  t.same(await auditOf(db, first.body.id), ['webhook.create'], 'the first webhook not rotated');
  t.same(await auditOf(db, other.webhook.id), ['webhook.create', 'webhook.rotate_secret'], 'the other rotated once');
});

t.test('a refusal is not remembered: the retry is judged afresh', async (t) => {
  const { db, api, dns, acme, hooks } = await world(t);
  const headers = { 'idempotency-key': 'hook-refused' };
  const body = { url: 'https://hooks.example/later', events: ['*'] };
  dns.resolving = false;
  const refused = await api.request('POST', hooks(), { key: acme.adminKey, body, headers });
  t.same([refused.status, refused.body.error?.code], [400, 'invalid_request']);
  dns.resolving = true;
  const made = await api.request('POST', hooks(), { key: acme.adminKey, body, headers });
  t.equal(made.status, 201);
  t.match(made.body.secret, /^whsec_/, 'made now, with its secret');
  t.same(await webhooksAt(db, body.url), [made.body.id]);
});

t.test('five concurrent creates with one Idempotency-Key make exactly one webhook', async (t) => {
  const { db, api, acme, hooks } = await world(t);
  const body = { url: 'https://hooks.example/raced', events: ['*'] };
  const send = () => api.request('POST', hooks(), { key: acme.adminKey, body, headers: { 'idempotency-key': 'hook-raced' } });
  const answers = await Promise.all([send(), send(), send(), send(), send()]);
  oneMadeFourReplayed(t, answers, 'secret');
  t.equal((await webhooksAt(db, body.url)).length, 1, 'one webhook in the database');

  // Through the service at once (no HTTP turn taking): five rotations, one made.
  const made = await api.services.webhooks.create(acme.org.id, { url: 'https://hooks.example/rotated-at-once', events: ['*'] });
  const request = { keyHash: Buffer.alloc(32, 3), requestHash: Buffer.alloc(32, 4) };
  const rotations = await Promise.all(
    Array.from({ length: 5 }, () => api.services.webhooks.rotateSecretIdempotent(acme.org.id, made.webhook.id, { graceSeconds: 0 }, {}, request)),
  );
  t.equal(rotations.filter((outcome) => !outcome.replayed).length, 1, 'one rotation');
  t.same(await auditOf(db, made.webhook.id), ['webhook.create', 'webhook.rotate_secret']);
});

t.test("another org's, and another caller's, idempotency keys are their own", async (t) => {
  const { db, api, acme, globex, hooks } = await world(t);
  const headers = { 'idempotency-key': 'hook-shared-name' };
  const body = { url: 'https://hooks.example/scoped', events: ['*'] };
  const inAcme = await api.request('POST', hooks(), { key: acme.adminKey, body, headers });
  const inGlobex = await api.request('POST', hooks(globex.org.id), { key: globex.adminKey, body, headers });
  t.same([inAcme.status, inGlobex.status], [201, 201]);
  t.not(inGlobex.body.id, inAcme.body.id, 'another org: a webhook of its own');
  t.match(inGlobex.body.secret, /^whsec_/, 'not a replay of the other org’s');
  t.equal(inGlobex.body.orgId, globex.org.id);

  const across = await api.request('POST', hooks(), { key: globex.adminKey, body, headers });
  t.same([across.status, across.body.error?.code], [404, 'not_found']);
  t.notOk(across.text.includes(inAcme.body.id), 'nothing of acme’s answer');

  const second = await api.services.apiKeys.create(acme.org.id, { name: 'second admin', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  const bySecond = await api.request('POST', hooks(), { key: second.plaintext, body, headers });
  t.equal(bySecond.status, 201);
  t.not(bySecond.body.id, inAcme.body.id, 'another caller: a webhook of its own');
  t.match(bySecond.body.secret, /^whsec_/);

  const retries = await Promise.all([
    api.request('POST', hooks(), { key: acme.adminKey, body, headers }),
    api.request('POST', hooks(globex.org.id), { key: globex.adminKey, body, headers }),
    api.request('POST', hooks(), { key: second.plaintext, body, headers }),
  ]);
  t.same([inAcme.body.orgId, inGlobex.body.orgId, bySecond.body.orgId], [acme.org.id, globex.org.id, acme.org.id]);
  eachReplaysItsOwn(t, retries, [inAcme, inGlobex, bySecond]);
  t.equal((await webhooksAt(db, body.url)).length, 3, 'no webhook made by the retries');
});

t.test('a malformed Idempotency-Key is a 400 naming the header, and nothing is made', async (t) => {
  const { db, api, acme, hooks } = await world(t);
  const made = await api.services.webhooks.create(acme.org.id, { url: 'https://hooks.example/target', events: ['*'] });
  for (const [label, value] of [
    ['empty', ''],
    ['256 characters', 'k'.repeat(256)],
    ['an API key', acme.adminKey],
  ]) {
    const created = await api.request('POST', hooks(), {
      key: acme.adminKey,
      body: { url: 'https://hooks.example/invalid', events: ['*'] },
      headers: { 'idempotency-key': value },
    });
    t.same([created.status, created.body.error?.code], [400, 'invalid_request'], `create, ${label}`);
    t.match(created.body.error?.message, /^Invalid header: Idempotency-Key: /);
    const rotated = await api.request('POST', `${hooks()}/${made.webhook.id}/rotate-secret`, {
      key: acme.adminKey,
      body: {},
      headers: { 'idempotency-key': value },
    });
    t.same([rotated.status, rotated.body.error?.code], [400, 'invalid_request'], `rotate, ${label}`);
  }
  t.same(await webhooksAt(db, 'https://hooks.example/invalid'), []);
  t.same(await auditOf(db, made.webhook.id), ['webhook.create'], 'no rotation');
});

// The look before the org's lock found the key (so the URL was not checked) and the answer expired
// while the request waited for the lock: a 422 timed to the expiry (its message gives the first
// request's time) created a webhook whose URL nothing had checked (a review).
t.test('a remembered answer that expires while the request waits for its org: the URL is checked as any', async (t) => {
  const { db, url, api, clock, dns, acme, hooks } = await world(t);
  const headers = { 'idempotency-key': 'hook-expiring' };
  const first = await api.request('POST', hooks(), { key: acme.adminKey, body: { url: 'https://hooks.example/first', events: ['*'] }, headers });
  t.equal(first.status, 201);
  clock.now = START + 86_400_000 - 1;
  dns.resolving = false;
  const held = await heldAuditLock(t, url, acme.org.id);
  const other = api.request('POST', hooks(), { key: acme.adminKey, body: { url: 'https://unchecked.example/hook', events: ['*'] }, headers });
  await someoneWaitsOnLock(db);
  clock.now += 2;
  await held.commit();
  const answer = await other;
  t.equal(answer.status, 400, 'refused: its host does not resolve (fails without the fix: 201)');
  t.match(answer.body.error?.message, /url: host does not resolve/);
  t.same(await webhooksAt(db, 'https://unchecked.example/hook'), [], 'no webhook made');
});
