// Renewing a key before it expires: PATCH expiresAt (or a rotate's expiresAt) changes an active
// key's expiry in place, so its id, usage history and network baseline stay. The collector's
// key.expiring warning for the new expiry: test/events.test.ts.
import t, { type Test } from 'tap';
import { freshDatabase } from './helpers/database';
import { seedOrg, startTestApi } from './helpers/api';

const DAY = 86_400_000;
const START = Date.parse('2026-11-25T12:00:00Z');

async function setup(t: Test) {
  const { db } = await freshDatabase(t);
  const clock = { now: START };
  // A long cache TTL, and the cache aged by the test's clock: an entry this process kept is still
  // fresh after the key's old expiry.
  const api = await startTestApi(t, db, { now: () => clock.now, env: { KEY_CACHE_TTL_MS: '60000' } });
  const acme = await seedOrg(api, db, 'acme');
  const base = `/api/orgs/${acme.org.id}/api-keys`;
  const create = async (name: string, expiresAt: number | null, scopes: Array<'keys:read' | 'keys:write'> = ['keys:read']) =>
    api.services.apiKeys.create(acme.org.id, { name, scopes, expiresAt: expiresAt === null ? null : new Date(expiresAt) });
  const patch = (key: string, keyId: string, body: unknown) => api.request('PATCH', `${base}/${keyId}`, { key, body });
  const rotate = (key: string, keyId: string, body: unknown, headers: Record<string, string> = {}) =>
    api.request('POST', `${base}/${keyId}/rotate`, { key, body, headers });
  const whoami = async (key: string) => (await api.request('GET', '/api/whoami', { key })).status;
  const expiryOf = async (keyId: string) => ((await db('api_keys').where({ id: keyId }).first('expires_at')).expires_at as Date | null)?.toISOString() ?? null;
  const auditOf = (action: string, keyId: string) => db('audit_log').where({ action, target_key_id: keyId }).orderBy('id').pluck('details');
  const at = (ms: number) => new Date(ms).toISOString();
  return { db, api, clock, acme, create, patch, rotate, whoami, expiryOf, auditOf, at };
}

t.test('PATCH expiresAt renews, shortens or unbounds an active key, audited, and this process serves the new expiry at once', async (t) => {
  const { clock, acme, create, patch, whoami, expiryOf, auditOf, at } = await setup(t);
  const soon = await create('deploys', START + 1000);
  t.equal(await whoami(soon.plaintext), 200, 'used once: this process caches it with its expiry');

  const renewed = await patch(acme.adminKey, soon.key.id, { expiresAt: at(START + 30 * DAY) });
  t.equal(renewed.status, 200);
  t.same(
    [renewed.body.id, renewed.body.status, renewed.body.expiresAt, renewed.body.createdAt],
    [soon.key.id, 'active', at(START + 30 * DAY), soon.key.createdAt],
    'the same key, renewed',
  );
  clock.now += 2000;
  t.equal(await whoami(soon.plaintext), 200, 'past its old expiry, within the cache TTL: the cache did not keep the old expiry');

  const shortened = await patch(acme.adminKey, soon.key.id, { expiresAt: at(START + DAY) });
  t.same([shortened.status, shortened.body.expiresAt], [200, at(START + DAY)], 'shortened');
  const never = await patch(acme.adminKey, soon.key.id, { expiresAt: null });
  t.same([never.status, never.body.expiresAt], [200, null], 'null from a caller that never expires: it never expires');
  const both = await patch(acme.adminKey, soon.key.id, { expiresAt: at(START + 7 * DAY), expectedNetworks: ['10.0.0.0/8'] });
  t.same([both.status, both.body.expiresAt, both.body.expectedNetworks], [200, at(START + 7 * DAY), ['10.0.0.0/8']], 'with expectedNetworks');
  t.same((await patch(acme.adminKey, soon.key.id, { expectedNetworks: null })).body.expiresAt, at(START + 7 * DAY), 'expectedNetworks alone keeps the expiry');
  t.equal((await patch(acme.adminKey, soon.key.id, { expiresAt: at(START + 7 * DAY) })).status, 200, 'the same expiry again');
  t.equal(await expiryOf(soon.key.id), at(START + 7 * DAY));

  t.strictSame(
    await auditOf('key.update', soon.key.id),
    [
      { expiresAt: { from: at(START + 1000), to: at(START + 30 * DAY) } },
      { expiresAt: { from: at(START + 30 * DAY), to: at(START + DAY) } },
      { expiresAt: { from: at(START + DAY), to: null } },
      { expectedNetworks: { from: null, to: ['10.0.0.0/8'] }, expiresAt: { from: null, to: at(START + 7 * DAY) } },
      { expectedNetworks: { from: ['10.0.0.0/8'], to: null } },
    ],
    'one entry per change with what it replaced; none for the PATCH that changed nothing',
  );

  // A shortened key is refused by this process at its new expiry, not served to its old one.
  const lasting = await create('lasting', null);
  t.equal(await whoami(lasting.plaintext), 200);
  t.equal((await patch(acme.adminKey, lasting.key.id, { expiresAt: at(clock.now + 1000) })).status, 200);
  clock.now += 1000;
  t.equal(await whoami(lasting.plaintext), 401, 'expired at its new expiry, within the cache TTL');
});

t.test("PATCH expiresAt: a past time is a 400, an expired or revoked key a 409, another org's key a 404", async (t) => {
  const { db, api, clock, acme, create, patch, whoami, expiryOf, auditOf, at } = await setup(t);
  const key = await create('ci', START + DAY);

  for (const [label, expiresAt] of [
    ['a past time', at(START - 1)],
    ['now', at(START)],
  ] as const) {
    const refused = await patch(acme.adminKey, key.key.id, { expiresAt });
    t.same([refused.status, refused.body.error?.code], [400, 'invalid_request'], label);
    t.equal(refused.body.error.message, 'Invalid body: expiresAt: must be in the future', `${label}: names expiresAt`);
  }
  const notATime = await patch(acme.adminKey, key.key.id, { expiresAt: 'next week' });
  t.equal(notATime.body.error?.message, 'Invalid body: expiresAt: must be an ISO 8601 date-time');
  const empty = await patch(acme.adminKey, key.key.id, {});
  t.equal(
    empty.body.error?.message,
    'Invalid body: body: must set at least one of name, owner, expectedNetworks, expiresAt',
    'an empty body changes nothing: a 400',
  );
  t.equal(await expiryOf(key.key.id), at(START + DAY), 'unchanged');

  const expired = await create('expired', START + 1000);
  clock.now += 1000;
  const tooLate = await patch(acme.adminKey, expired.key.id, { expiresAt: at(clock.now + DAY) });
  t.same([tooLate.status, tooLate.body.error?.code], [409, 'conflict'], 'an expired key');
  t.equal(tooLate.body.error.message, 'This API key is expired: an expired key cannot be renewed; create a new key');
  t.equal(await expiryOf(expired.key.id), at(START + 1000), 'not renewed');
  t.equal(await whoami(expired.plaintext), 401, 'its secret stays refused');
  const networksOnly = await patch(acme.adminKey, expired.key.id, { expectedNetworks: ['10.0.0.0/8'] });
  t.equal(networksOnly.status, 200, "an expired key's expected networks may still be set, as before");
  const withNetworks = await patch(acme.adminKey, expired.key.id, { expectedNetworks: null, expiresAt: null });
  t.equal(withNetworks.status, 409, 'with expiresAt, the whole PATCH is refused');
  t.same((await db('api_keys').where({ id: expired.key.id }).first('expected_networks')).expected_networks, ['10.0.0.0/8'], 'and nothing of it written');

  const revoked = await create('revoked', null);
  await api.services.apiKeys.revoke(acme.org.id, revoked.key.id);
  const revival = await patch(acme.adminKey, revoked.key.id, { expiresAt: at(clock.now + DAY) });
  t.same([revival.status, revival.body.error?.code], [409, 'conflict'], 'a revoked key');
  t.equal(revival.body.error.message, 'This API key is revoked: a revoked key cannot be renewed; create a new key');
  t.equal(await expiryOf(revoked.key.id), null);

  const globex = await seedOrg(api, db, 'globex');
  const foreign = await patch(acme.adminKey, globex.adminKeyId, { expiresAt: at(clock.now + DAY) });
  t.same([foreign.status, foreign.body.error?.code], [404, 'not_found'], "another org's key");
  t.equal(await expiryOf(globex.adminKeyId), null);
  const foreignRotate = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys/${globex.adminKeyId}/rotate`, {
    key: acme.adminKey,
    body: { expiresAt: at(clock.now + DAY) },
  });
  t.equal(foreignRotate.status, 404, 'nor rotated with a new expiry');

  for (const id of [key.key.id, expired.key.id, revoked.key.id]) {
    t.notOk(
      (await auditOf('key.update', id)).some((details: Record<string, unknown>) => 'expiresAt' in details),
      'no expiry change recorded for a refusal',
    );
  }
});

t.test('a caller that expires cannot give a key a later expiry or none (403, as a create), nor change one that outlives it', async (t) => {
  const { acme, create, patch, rotate, expiryOf, at } = await setup(t);
  const callerExpiry = START + DAY;
  const caller = await create('expiring caller', callerExpiry, ['keys:read', 'keys:write']);
  const target = await create('target', START + 3_600_000);

  const later = await patch(caller.plaintext, target.key.id, { expiresAt: at(callerExpiry + 1) });
  t.same([later.status, later.body.error?.code], [403, 'forbidden'], 'a later expiry than its own');
  t.equal(later.body.error.message, `This API key expires at ${at(callerExpiry)}; it cannot set a key's expiresAt to ${at(callerExpiry + 1)}, later than that`);
  const none = await patch(caller.plaintext, target.key.id, { expiresAt: null });
  t.same([none.status, none.body.error?.code], [403, 'forbidden'], 'no expiry');
  t.equal(none.body.error.message, `This API key expires at ${at(callerExpiry)}; it cannot set a key's expiresAt to null (never expires)`);
  const itself = await patch(caller.plaintext, caller.key.id, { expiresAt: at(callerExpiry + DAY) });
  t.equal(itself.status, 403, 'nor renew itself past its own expiry');
  t.equal(await expiryOf(target.key.id), at(START + 3_600_000), 'unchanged');
  t.equal(await expiryOf(caller.key.id), at(callerExpiry), 'unchanged');

  const same = await patch(caller.plaintext, target.key.id, { expiresAt: at(callerExpiry) });
  t.same([same.status, same.body.expiresAt], [200, at(callerExpiry)], 'up to its own expiry it may');
  // As a revoke: a short-lived key that made the org's lasting admin key expire took it away.
  const outlived = await patch(caller.plaintext, acme.adminKeyId, { expiresAt: at(START + 3_600_000) });
  t.same([outlived.status, outlived.body.error?.code], [403, 'forbidden'], 'nor shorten a key that outlives it');
  t.match(outlived.body.error.message, `expires at ${at(callerExpiry)}; it cannot change a key that never expires`);
  t.equal(await expiryOf(acme.adminKeyId), null);

  const rotatedLater = await rotate(caller.plaintext, target.key.id, { expiresAt: null });
  t.same([rotatedLater.status, rotatedLater.body.error?.code], [403, 'forbidden'], 'a rotate is bounded the same way');
  t.equal(await expiryOf(target.key.id), at(callerExpiry));
});

t.test('rotate with expiresAt: a new secret and a new expiry, audited; without it the key keeps its expiry', async (t) => {
  const { clock, acme, create, rotate, whoami, expiryOf, auditOf, at } = await setup(t);
  const key = await create('service', START + DAY);
  const kept = await rotate(acme.adminKey, key.key.id, { gracePeriodSeconds: 0 });
  t.same([kept.status, kept.body.expiresAt], [200, at(START + DAY)], 'no expiresAt: kept');

  const renewed = await rotate(acme.adminKey, key.key.id, { gracePeriodSeconds: 0, expiresAt: at(START + 90 * DAY) }, { 'idempotency-key': 'renew-1' });
  t.same([renewed.status, renewed.body.id, renewed.body.expiresAt], [200, key.key.id, at(START + 90 * DAY)], 'the same key, renewed');
  t.type(renewed.body.key, 'string', 'with its new secret');
  const replay = await rotate(acme.adminKey, key.key.id, { gracePeriodSeconds: 0, expiresAt: at(START + 90 * DAY) }, { 'idempotency-key': 'renew-1' });
  t.same([replay.status, replay.body.replayed, replay.body.expiresAt], [200, true, at(START + 90 * DAY)], 'a retry is a replay');
  const other = await rotate(acme.adminKey, key.key.id, { gracePeriodSeconds: 0, expiresAt: at(START + 91 * DAY) }, { 'idempotency-key': 'renew-1' });
  t.same([other.status, other.body.error?.code], [422, 'idempotency_key_reused'], 'another expiresAt is another request');
  t.equal(await expiryOf(key.key.id), at(START + 90 * DAY));

  const past = await rotate(acme.adminKey, key.key.id, { expiresAt: at(START - 1) });
  t.same([past.status, past.body.error?.message], [400, 'Invalid body: expiresAt: must be in the future']);
  clock.now += DAY + 1;
  t.equal(await whoami(renewed.body.key as string), 200, 'past its old expiry');

  t.strictSame(
    (await auditOf('key.rotate', key.key.id)).map((details: Record<string, unknown>) => details.expiresAt),
    [undefined, { from: at(START + DAY), to: at(START + 90 * DAY) }],
    'the new expiry and the one it replaced, only for the rotation given one',
  );

  const expired = await create('expired', clock.now + 1000);
  clock.now += 1000;
  const revival = await rotate(acme.adminKey, expired.key.id, { expiresAt: at(clock.now + DAY) });
  t.same([revival.status, revival.body.error?.code], [409, 'conflict'], 'an expired key is not rotated back to life');
  t.equal(await expiryOf(expired.key.id), at(clock.now));
});
