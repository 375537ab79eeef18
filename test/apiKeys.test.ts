import { randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { insertApiKey } from '../api/keys/apiKeys.repository';
import { checksumOf, displayPrefixFor, hashSecret, pepperId } from '../api/keys/keyMaterial';
import { freshDatabase } from './helpers/database';
import { seedOrg, startTestApi } from './helpers/api';
import { waitFor } from '../harness/wait';

t.test('create, read, list, rotate and revoke keys through the HTTP API', async (t) => {
  const { db } = await freshDatabase(t);
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock, env: { KEY_CACHE_TTL_MS: '0' } });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;

  const whoami = await api.request('GET', '/api/whoami', { key: adminKey, header: 'x-api-key' });
  t.equal(whoami.status, 200);
  t.same(whoami.body, { keyId: adminKeyId, orgId: org.id, name: 'admin', scopes: ['keys:read', 'keys:write'] });
  t.match(whoami.headers.get('x-request-id'), /^[0-9a-f-]{36}$/);
  // An ingress's Basic credential beside the client's X-API-Key: the key is still read.
  const behindIngress = await api.request('GET', '/api/whoami', { key: adminKey, header: 'x-api-key', headers: { authorization: 'Basic dXNlcjpwYXNz' } });
  t.same([behindIngress.status, behindIngress.body.keyId], [200, adminKeyId], 'another Authorization scheme does not hide X-API-Key');
  const bearerWins = await api.request('GET', '/api/whoami', { key: 'ku_not_a_key', header: 'x-api-key', headers: { authorization: `Bearer ${adminKey}` } });
  t.same([bearerWins.status, bearerWins.body.keyId], [200, adminKeyId], 'Bearer wins over X-API-Key');
  const basicAlone = await api.request('GET', '/api/whoami', { headers: { authorization: 'Basic dXNlcjpwYXNz' } });
  t.same([basicAlone.status, basicAlone.body.error?.code], [401, 'unauthorized'], 'another scheme alone is no key');

  const created = await api.request('POST', base, { key: adminKey, body: { name: 'ci deploys', scopes: ['keys:read', 'keys:read'] } });
  t.equal(created.status, 201);
  t.match(created.body.key, /^ku_[0-9a-f]{32}_[0-9A-Za-z]{49}$/);
  t.same(created.body.scopes, ['keys:read'], 'duplicate scopes collapse');
  t.equal(created.body.status, 'active');
  t.equal(created.body.displayPrefix, created.body.key.slice(0, 11));
  const readKey = created.body.key as string;
  const readKeyId = created.body.id as string;

  const fetched = await api.request('GET', `${base}/${readKeyId}`, { key: readKey });
  t.equal(fetched.status, 200);
  t.equal(fetched.body.key, undefined, 'the plaintext is shown only once');
  t.equal(fetched.body.name, 'ci deploys');

  const listed = await api.request('GET', `${base}?limit=1&offset=1`, { key: adminKey });
  t.equal(listed.status, 200);
  t.equal(listed.body.page.total, 2);
  t.equal(listed.body.data.length, 1);
  t.equal(listed.body.data[0].id, readKeyId, 'ordered by creation');

  const forbidden = await api.request('POST', `${base}/${readKeyId}/revoke`, { key: readKey });
  t.equal(forbidden.status, 403);
  t.match(forbidden.body.error.message, /keys:write/);

  const rotated = await api.request('POST', `${base}/${readKeyId}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 60 } });
  t.equal(rotated.status, 200);
  t.equal(rotated.body.id, readKeyId, 'rotation keeps the key id');
  t.not(rotated.body.key, readKey);
  t.equal(rotated.body.previousSecretExpiresAt, new Date(clock + 60_000).toISOString());
  const newKey = rotated.body.key as string;

  t.equal((await api.request('GET', '/api/whoami', { key: readKey })).status, 200, 'old secret works during the grace period');
  t.equal((await api.request('GET', '/api/whoami', { key: newKey })).status, 200, 'new secret works');
  clock += 61_000;
  t.equal((await api.request('GET', '/api/whoami', { key: readKey })).status, 401, 'old secret fails after the grace period');
  t.equal((await api.request('GET', '/api/whoami', { key: newKey })).status, 200);

  const revoked = await api.request('POST', `${base}/${readKeyId}/revoke`, { key: adminKey });
  t.equal(revoked.status, 200);
  t.equal(revoked.body.status, 'revoked');
  t.equal((await api.request('GET', '/api/whoami', { key: newKey })).status, 401, 'revocation takes effect at once');

  const again = await api.request('POST', `${base}/${readKeyId}/rotate`, { key: adminKey, body: {} });
  t.equal(again.status, 409);
  t.match(again.body.error.message, /revoked/);

  t.same(api.evidence.leaksOf([adminKey, readKey, newKey]), [], 'no plaintext key in any log line');
});

t.test('expiry', async (t) => {
  const { db } = await freshDatabase(t);
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock });
  const { org, adminKey } = await seedOrg(api, db);
  const expiring = await api.request('POST', `/api/orgs/${org.id}/api-keys`, {
    key: adminKey,
    body: { name: 'short', scopes: ['keys:read'], expiresAt: new Date(clock + 1000).toISOString() },
  });
  t.equal(expiring.status, 201);
  t.equal((await api.request('GET', '/api/whoami', { key: expiring.body.key })).status, 200);
  clock += 1000;
  t.equal((await api.request('GET', '/api/whoami', { key: expiring.body.key })).status, 401);
  const view = await api.request('GET', `/api/orgs/${org.id}/api-keys/${expiring.body.id}`, { key: adminKey });
  t.equal(view.body.status, 'expired');
  t.same(
    api.uses.map((use) => use.outcome),
    ['ok', 'ok', 'expired', 'ok'],
  );

  const past = await api.request('POST', `/api/orgs/${org.id}/api-keys`, {
    key: adminKey,
    body: { name: 'past', scopes: ['keys:read'], expiresAt: new Date(clock - 1).toISOString() },
  });
  t.equal(past.status, 400);
  t.match(past.body.error.message, /^Invalid body: expiresAt: must be in the future$/);
});

t.test('health reports whether the database answers', async (t) => {
  const { db } = await freshDatabase(t);
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock });
  const up = await api.request('GET', '/healthz');
  t.same([up.status, up.body], [200, { status: 'ok', database: 'up' }]);
  await db.destroy();
  clock += 1000;
  const down = await api.request('GET', '/healthz');
  t.same([down.status, down.body], [503, { status: 'unavailable', database: 'down' }]);
});

t.test('health runs one query a second, however many probes arrive', async (t) => {
  const { db } = await freshDatabase(t);
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock });
  let queries = 0;
  db.on('query', () => (queries += 1));
  const probe = async () => (await api.request('GET', '/healthz')).status;
  t.same(await Promise.all(Array.from({ length: 20 }, probe)), Array(20).fill(200), '20 concurrent probes');
  for (let i = 0; i < 20; i += 1) t.equal(await probe(), 200);
  clock += 999;
  t.equal(await probe(), 200);
  t.equal(queries, 1, '41 probes within the second: one query');
  clock += 1;
  t.equal(await probe(), 200);
  t.equal(queries, 2, 'a second later: one more');
});

t.test('a previous secret still in its grace period cannot manage keys', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const other = await api.services.apiKeys.create(org.id, { name: 'other', scopes: ['keys:read'], expiresAt: null });
  const rotated = await api.request('POST', `${base}/${adminKeyId}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 3600 } });
  t.equal(rotated.status, 200);
  const currentKey = rotated.body.key as string;
  const oldKey = adminKey;

  t.equal((await api.request('GET', '/api/whoami', { key: oldKey })).status, 200, 'the old secret still authenticates');
  t.equal((await api.request('GET', base, { key: oldKey })).status, 200, 'and may still read keys');

  const usesBefore = api.uses.length;
  const attempts = [
    ['create', 'POST', base, { name: 'minted with a leaked secret', scopes: ['keys:read'] }],
    ['rotate (the lock-out)', 'POST', `${base}/${adminKeyId}/rotate`, { gracePeriodSeconds: 0 }],
    ['rotate another key', 'POST', `${base}/${other.key.id}/rotate`, {}],
    ['revoke', 'POST', `${base}/${other.key.id}/revoke`, undefined],
  ] as const;
  for (const [label, method, path, body] of attempts) {
    const refused = await api.request(method, path, { key: oldKey, body });
    t.equal(refused.status, 403, `${label}: 403`);
    t.equal(refused.body.error.code, 'stale_secret', `${label}: its own code`);
    t.match(refused.body.error.message, /current secret/, `${label}: says to use the current secret`);
  }
  t.same(
    api.uses.slice(usesBefore).map((use) => [use.keyId, use.outcome]),
    attempts.map(() => [adminKeyId, 'forbidden']),
    'each refusal is a proven use, recorded as forbidden',
  );

  t.equal((await api.request('GET', '/api/whoami', { key: currentKey })).status, 200, 'the owner is not locked out');
  t.equal((await api.services.apiKeys.get(org.id, other.key.id)).status, 'active', 'nothing was revoked');
  t.equal((await api.services.apiKeys.list(org.id, { limit: 10, offset: 0 })).page.total, 2, 'nothing was created');
  const managed = await api.request('POST', `${base}/${other.key.id}/revoke`, { key: currentKey });
  t.equal(managed.status, 200, 'the current secret manages keys');
});

t.test('two concurrent rotations of one key: one 200, one 409, and the plaintext returned is the one stored', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const target = await api.services.apiKeys.create(org.id, { name: 'target', scopes: ['keys:read'], expiresAt: null });
  const path = `/api/orgs/${org.id}/api-keys/${target.key.id}/rotate`;

  // Both rotations read the key, then queue behind this row lock: a true race, every time.
  const lock = await db.transaction();
  await lock('api_keys').where({ id: target.key.id }).forUpdate();
  const racing = Promise.all([1, 2].map(() => api.request('POST', path, { key: adminKey, body: {} })));
  await waitFor('both rotations to wait on the row lock', async () => {
    const { rows } = await db.raw("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'");
    return rows[0].n === 2 || undefined;
  });
  await lock.commit();
  const responses = await racing;

  t.same(responses.map((r) => r.status).sort(), [200, 409], 'one rotation wins, the other conflicts');
  const loser = responses.find((r) => r.status === 409)!;
  t.equal(loser.body.error.code, 'conflict');
  t.equal(loser.body.key, undefined, 'the loser reveals no plaintext');
  const winner = responses.find((r) => r.status === 200)!;
  t.equal((await api.request('GET', '/api/whoami', { key: winner.body.key })).status, 200, "the winner's plaintext works");
});

t.test('a key cannot create, rotate, change or revoke a key with more scopes (or create or rotate one with a longer life) than its own', async (t) => {
  const { db } = await freshDatabase(t);
  const clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => clock });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const day = 86_400_000;
  const writer = (await api.services.apiKeys.create(org.id, { name: 'writer', scopes: ['keys:write'], expiresAt: null })).plaintext;
  const expiresAt = new Date(clock + day);
  const expiring = (await api.services.apiKeys.create(org.id, { name: 'expiring', scopes: ['keys:read', 'keys:write'], expiresAt })).plaintext;
  const create = (key: string, body: object) => api.request('POST', base, { key, body: { name: 'minted', ...body } });

  const wider = await create(writer, { scopes: ['keys:read', 'keys:write'] });
  t.same([wider.status, wider.body.error?.code], [403, 'forbidden'], 'a scope the caller lacks');
  t.match(wider.body.error.message, /does not hold itself: keys:read$/, 'the message names the scope it lacks');
  t.equal((await create(writer, { scopes: ['keys:write'] })).status, 201, 'its own scopes are fine');

  const forever = await create(expiring, { scopes: ['keys:read'] });
  t.same([forever.status, forever.body.error?.code], [403, 'forbidden'], 'an expiring caller cannot create a key that never expires');
  t.match(forever.body.error.message, `expires at ${expiresAt.toISOString()}; it cannot create a key that never expires`);
  const later = await create(expiring, { scopes: ['keys:read'], expiresAt: new Date(clock + 2 * day).toISOString() });
  t.equal(later.status, 403, 'nor one that outlives it');
  t.match(later.body.error.message, `expires at ${expiresAt.toISOString()}`, 'the message names its own expiry');
  t.equal((await create(expiring, { scopes: ['keys:read'], expiresAt: expiresAt.toISOString() })).status, 201, 'the same expiry is fine');
  t.equal((await create(expiring, { scopes: ['keys:read'], expiresAt: new Date(clock + 1000).toISOString() })).status, 201, 'an earlier one too');
  // Nor revoke one that outlives it: once it expired, the org had no key left that could mint another.
  const outlived = await api.request('POST', `${base}/${adminKeyId}/revoke`, { key: expiring });
  t.same([outlived.status, outlived.body.error?.code], [403, 'forbidden'], 'an expiring caller cannot revoke a key that never expires');
  t.match(outlived.body.error.message, `expires at ${expiresAt.toISOString()}; it cannot revoke a key that never expires`);

  // Rotation reveals the target's new secret, so the same limits apply to the key being rotated.
  const takeover = await api.request('POST', `${base}/${adminKeyId}/rotate`, { key: writer, body: {} });
  t.same([takeover.status, takeover.body.error?.code], [403, 'forbidden'], "a keys:write key cannot rotate (and so obtain) a wider key's secret");
  t.match(takeover.body.error.message, /cannot rotate a key with scopes it does not hold itself: keys:read$/);
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the admin key is untouched');

  // PATCH set a wider key's expected networks and answered its view: with keys:write alone, a
  // cleared list silenced key.outside_networks for a stolen admin key.
  const [before] = await db('api_keys').where({ id: adminKeyId }).pluck('expected_networks');
  const patched = await api.request('PATCH', `${base}/${adminKeyId}`, { key: writer, body: { expectedNetworks: ['0.0.0.0/0'] } });
  t.same([patched.status, patched.body.error?.code], [403, 'forbidden'], "a keys:write key cannot change a wider key's expected networks");
  t.match(patched.body.error.message, /cannot change a key with scopes it does not hold itself: keys:read$/);
  t.notOk('name' in patched.body, "nor read the wider key's view");
  t.same(await db('api_keys').where({ id: adminKeyId }).pluck('expected_networks'), [before], 'unchanged');
  const revoked = await api.request('POST', `${base}/${adminKeyId}/revoke`, { key: writer });
  t.same([revoked.status, revoked.body.error?.code], [403, 'forbidden'], 'nor revoke it (the org would be left without a key that reads)');
  t.match(revoked.body.error.message, /cannot revoke a key with scopes it does not hold itself: keys:read$/);
  t.notOk('name' in revoked.body, "nor read the wider key's view that way");
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the admin key still works');
  const own = await api.services.apiKeys.create(org.id, { name: 'narrow', scopes: ['keys:write'], expiresAt: null });
  const narrow = await api.request('PATCH', `${base}/${own.key.id}`, { key: writer, body: { expectedNetworks: ['10.0.0.0/8'] } });
  t.equal(narrow.status, 200, 'a key within its scopes it may change');
  t.equal((await api.request('POST', `${base}/${own.key.id}/revoke`, { key: writer })).status, 200, 'and revoke');
  t.equal(api.evidence.leaksOf([writer, expiring, adminKey]).length, 0, 'no key material in bodies or logs');
  // The refusals are the callers' uses refused by policy: recorded forbidden (they were ok, so a
  // stolen key probing for more privilege showed nowhere); the changes allowed, ok.
  const outcomesOf = (keyId: string) => api.uses.filter((use) => use.keyId === keyId).map((use) => use.outcome);
  const writerId = (await db('api_keys').where({ name: 'writer' }).first('id')).id;
  const expiringId = (await db('api_keys').where({ name: 'expiring' }).first('id')).id;
  t.same(outcomesOf(writerId), ['forbidden', 'ok', 'forbidden', 'forbidden', 'forbidden', 'ok', 'ok']);
  t.same(outcomesOf(expiringId), ['forbidden', 'forbidden', 'ok', 'ok', 'forbidden']);
});

// With no grace the old secret was kept with an end of "now" on the rotating instance's clock: an
// instance whose clock ran behind accepted it for as long as the difference.
t.test('a rotation without grace keeps no old secret: an instance whose clock runs behind refuses it too', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const behind = await startTestApi(t, db, { now: () => Date.now() - 60_000 });
  const { org, adminKey } = await seedOrg(api, db);
  const leaked = await api.services.apiKeys.create(org.id, { name: 'leaked', scopes: ['keys:read'], expiresAt: null });
  t.equal((await behind.request('GET', '/api/whoami', { key: leaked.plaintext })).status, 200, 'the leaked secret works before');
  const rotated = await api.request('POST', `/api/orgs/${org.id}/api-keys/${leaked.key.id}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 0 } });
  t.equal(rotated.status, 200);
  behind.verifier.invalidate(leaked.key.id);
  t.equal((await behind.request('GET', '/api/whoami', { key: leaked.plaintext })).status, 401, 'the old secret is refused at once, on the late instance too');
  t.equal((await behind.request('GET', '/api/whoami', { key: rotated.body.key })).status, 200, 'the new one works');
  t.same(await db('api_keys').where({ id: leaked.key.id }).pluck('previous_secret_hash'), [null], 'no previous hash is stored');
});

t.test('names with control characters are a 400, never a 500', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  for (const [label, name] of [
    ['NUL', 'ci\u0000deploys'],
    ['newline inside', 'ci\ndeploys'],
    ['ESC (a terminal escape)', 'ci\u001b[2J'],
    ['DEL', 'ci\u007f'],
    ['C1 control', 'ci\u009b'],
  ]) {
    const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
    t.same([response.status, response.body.error?.code], [400, 'invalid_request'], `${label}: 400`);
    t.equal(
      response.body.error.message,
      'Invalid body: name: must not contain control characters (such as NUL, tab, newline or ESC)',
      `${label}: a clear message`,
    );
  }
  const fine = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: '  CI – déploiements 🚀 ', scopes: ['keys:read'] } });
  t.same([fine.status, fine.body.name], [201, 'CI – déploiements 🚀'], 'any printable Unicode is fine, surrounding space trimmed');
  t.same(
    api.evidence.logLines.filter((line) => JSON.parse(line).level >= 50),
    [],
    'nothing logged as an unhandled error',
  );
});

// A name is quoted inside the dashboard's confirmations ("Revoke these 2 keys, unused for 90 days:
// …?"): a right-to-left override in it reverses the rest of the sentence as shown.
t.test('names with bidirectional control characters are a 400', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const bidiControls = [0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069];
  for (const codePoint of bidiControls) {
    const label = `U+${codePoint.toString(16).toUpperCase()}`;
    const name = `ci${String.fromCodePoint(codePoint)}syolped`;
    const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
    t.same([response.status, response.body.error?.code], [400, 'invalid_request'], `${label}: 400`);
    t.equal(
      response.body.error?.message,
      'Invalid body: name: must not contain bidirectional control characters (U+202A to U+202E, U+2066 to U+2069)',
      `${label}: a clear message`,
    );
  }
  t.equal((await db('api_keys').where({ org_id: org.id }).pluck('id')).length, 1, "nothing stored but the org's first key");
  const rightToLeft = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'פריסות CI', scopes: ['keys:read'] } });
  t.same([rightToLeft.status, rightToLeft.body.name], [201, 'פריסות CI'], 'right-to-left text itself is fine');
});

// A name of zero-width characters showed every keys:read holder a nameless key, and a line
// separator broke the name onto a new line inside the confirmations that quote it (a review).
t.test('names of invisible characters only, or with line or paragraph separators, are a 400', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const create = (name: string) => api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  const refused: Array<[string, string]> = [
    ['\u200b', 'must not be empty (it holds no visible character)'],
    [' \u2060\u3164\u115f ', 'must not be empty (it holds no visible character)'],
    ['\u00ad\u034f\u180e\ufe0f', 'must not be empty (it holds no visible character)'],
    ['\u2800\u2800', 'must not be empty (it holds no visible character)'],
    ['\u0301', 'must not be empty (it holds no visible character)'],
    ['\ufff9\u{13430}', 'must not be empty (it holds no visible character)'],
    ['ci\u2028deploys', 'must not contain line or paragraph separators (U+2028, U+2029)'],
    ['ci\u2029deploys', 'must not contain line or paragraph separators (U+2028, U+2029)'],
  ];
  for (const [name, message] of refused) {
    const label = [...name].map((c) => `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`).join(' ');
    const response = await create(name);
    t.same([response.status, response.body.error?.code, response.body.error?.message], [400, 'invalid_request', `Invalid body: name: ${message}`], label);
  }
  t.equal((await db('api_keys').where({ org_id: org.id }).pluck('id')).length, 1, "nothing stored but the org's first key");
  for (const name of ['👩\u200d💻', '❤\ufe0f', 'ภาษาไทย', 'देवनागरी', 'عربي', '한국어', 'co\u00adop', 'می\u200cخواهم', 'é\u0301']) {
    const created = await create(name);
    t.same([created.status, created.body.name], [201, name], `${name}: a visible name, joiners, selectors and marks inside it, is fine`);
  }
  const search = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?q=%E2%80%8B`, { key: adminKey });
  t.same([search.status, search.body.error?.message], [400, 'Invalid query: q: must not be empty (it holds no visible character)'], 'a search too');
});

// A name is shown to every keys:read holder, and the list's search travels in a URL that proxies
// log: another key's plaintext in either was taken and passed on (a review; fails without the fix).
t.test("a name or a search holding an API key's plaintext is a 400 that names the field", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const other = await api.services.apiKeys.create(org.id, { name: 'deployed', scopes: ['keys:read'], expiresAt: null });
  const percentEncoded = other.plaintext.replace(/^k/, '%6B');
  for (const [label, name] of [
    ['the plaintext', other.plaintext],
    ['inside other words', `ci (${other.plaintext})`],
    ['percent-encoded', percentEncoded],
  ]) {
    const response = await api.request('POST', base, { key: adminKey, body: { name, scopes: ['keys:read'] } });
    t.same(
      [response.status, response.body.error?.code, response.body.error?.message],
      [400, 'invalid_request', 'Invalid body: name: must not contain an API key'],
      `${label}: refused, naming the field`,
    );
  }
  t.equal((await db('api_keys').where({ org_id: org.id }).pluck('id')).length, 2, "nothing stored but the org's first key and the other");
  const search = await api.request('GET', `${base}/usage?q=${encodeURIComponent(other.plaintext)}`, { key: adminKey });
  t.same([search.status, search.body.error?.message], [400, 'Invalid query: q: must not contain an API key'], 'the search too');
  const byPrefix = await api.request('POST', base, { key: adminKey, body: { name: `rotates ${other.key.displayPrefix}`, scopes: ['keys:read'] } });
  t.equal(byPrefix.status, 201, "a key's display prefix is not key material");
});

t.test('no API answer is cached, those that carry a plaintext key first of all', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const created = await api.request('POST', base, { key: adminKey, body: { name: 'ci', scopes: ['keys:read'] } });
  t.equal(created.status, 201);
  t.equal(created.headers.get('cache-control'), 'no-store', 'create');
  const rotated = await api.request('POST', `${base}/${created.body.id}/rotate`, { key: adminKey, body: {} });
  t.equal(rotated.status, 200);
  t.equal(rotated.headers.get('cache-control'), 'no-store', 'rotate');
  // Nor any other answer: a shared cache takes a request with X-API-Key (no Authorization) for anonymous.
  for (const [label, path] of [
    ['usage', `${base}/usage`],
    ['whoami', '/api/whoami'],
    ['a 404', `${base}/${created.body.id}0`],
  ]) {
    const response = await api.request('GET', path, { key: adminKey, header: 'x-api-key' });
    t.equal(response.headers.get('cache-control'), 'no-store', `${label}: no-store`);
    t.equal(response.headers.get('vary'), 'Authorization, X-API-Key', `${label}: varies by the key`);
  }
});

t.test("a key whose checksum does not match is refused before any lookup and counted as nobody's use", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the key as issued works');
  t.equal(adminKey.slice(-6), checksumOf(adminKey.slice(0, -6)), 'it ends with its checksum');

  const lookups: string[] = [];
  const verify = api.verifier.verify.bind(api.verifier);
  api.verifier.verify = (presented) => (lookups.push(presented.keyId), verify(presented));
  const usesBefore = api.uses.length;
  const flip = (c: string) => (c === 'a' ? 'b' : 'a');
  const typo = adminKey.slice(0, 40) + flip(adminKey[40]) + adminKey.slice(41);
  const badChecksum = adminKey.slice(0, -1) + flip(adminKey.slice(-1));
  for (const [label, key] of [
    ['a typo in the secret', typo],
    ['a wrong checksum', badChecksum],
  ]) {
    const response = await api.request('GET', `/api/orgs/${org.id}/api-keys`, { key });
    t.same([response.status, response.body.error.code], [401, 'unauthorized'], `${label}: 401 like any other`);
  }
  t.same(lookups, [], 'no cache or database lookup');
  t.same(api.uses.slice(usesBefore), [], 'not recorded as a use of the named key');

  const wrongSecret = `${adminKey.slice(0, 36)}${'Z'.repeat(43)}`;
  const wellFormed = wrongSecret + checksumOf(wrongSecret);
  t.equal((await api.request('GET', '/api/whoami', { key: wellFormed })).status, 401);
  t.same(
    api.uses.slice(usesBefore).map((use) => [use.keyId, use.outcome]),
    [[adminKeyId, 'bad_secret']],
    'a well-formed wrong secret still is a failed attempt on the key',
  );
});

t.test('a key issued before the checksum keeps working until it is rotated', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const id = randomUUID();
  const secret = randomBytes(32).toString('base64url');
  await insertApiKey(db, {
    id,
    orgId: org.id,
    name: 'legacy',
    displayPrefix: displayPrefixFor(id),
    secretHash: hashSecret(secret, api.config.api.keyPepper),
    secretPepperId: pepperId(api.config.api.keyPepper),
    scopes: ['keys:read'],
    expiresAt: null,
  });
  const legacyKey = `ku_${id.replace(/-/g, '')}_${secret}`;
  t.same((await api.request('GET', '/api/whoami', { key: legacyKey })).body.keyId, id, 'the legacy key authenticates');

  const rotated = await api.request('POST', `/api/orgs/${org.id}/api-keys/${id}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 0 } });
  t.equal(rotated.status, 200);
  t.match(rotated.body.key, new RegExp(`^ku_${id.replace(/-/g, '')}_[0-9A-Za-z]{49}$`), 'rotation issues the new format');
  t.equal(rotated.body.key.slice(-6), checksumOf(rotated.body.key.slice(0, -6)));
  t.equal((await api.request('GET', '/api/whoami', { key: rotated.body.key })).status, 200, 'the new key works');
  t.equal((await api.request('GET', '/api/whoami', { key: legacyKey })).status, 401, 'the legacy one no longer does');
});

t.test('an org holds KEYS_MAX_PER_ORG keys at most, revoked ones and concurrent creates included; other orgs are not counted', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { KEYS_MAX_PER_ORG: '3' } });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const create = (org = acme) => api.request('POST', `/api/orgs/${org.org.id}/api-keys`, { key: org.adminKey, body: { name: 'ci', scopes: ['keys:read'] } });
  const first = await create();
  t.equal(first.status, 201);
  t.equal((await api.request('POST', `/api/orgs/${acme.org.id}/api-keys/${first.body.id}/revoke`, { key: acme.adminKey })).status, 200);
  const answers = await Promise.all(Array.from({ length: 4 }, () => create()));
  t.same(answers.map((answer) => answer.status).sort(), [201, 409, 409, 409], 'the admin key and a revoked one count: four at once, one made');
  t.match(answers.find((answer) => answer.status === 409)!.body.error, {
    code: 'conflict',
    message: /holds 3 API keys, revoked ones included, the most it may have \(KEYS_MAX_PER_ORG\)/,
  });
  t.equal(
    await db('api_keys')
      .where({ org_id: acme.org.id })
      .count()
      .first()
      .then((row) => Number(row!.count)),
    3,
  );
  t.equal((await create(globex)).status, 201, "another org's count is its own");
});

// One previous secret is kept: a second rotation with a grace period, while the first one's ran,
// ended the original secret at once, though the first answer had promised it a day (a review;
// fails without the fix).
t.test("a rotation with a grace period while the previous one's runs is a 409: the original secret keeps its promised grace", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { KEY_CACHE_TTL_MS: '0' } });
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const created = await api.request('POST', base, { key: adminKey, body: { name: 'deployed', scopes: ['keys:read'] } });
  const original = created.body.key as string;
  const rotate = (gracePeriodSeconds: number) => api.request('POST', `${base}/${created.body.id}/rotate`, { key: adminKey, body: { gracePeriodSeconds } });
  const first = await rotate(86_400);
  t.equal(first.status, 200);
  const again = await rotate(86_400);
  t.equal(again.status, 409);
  t.match(again.body.error.message, /previous secret works until .*: a rotation with a grace period would end it now/);
  t.equal((await api.request('GET', '/api/whoami', { key: original })).status, 200, 'the original secret still works');
  t.equal((await api.request('GET', '/api/whoami', { key: first.body.key })).status, 200, "and the first rotation's");
  t.equal((await rotate(0)).status, 200, 'without a grace period, on purpose, it may');
  t.equal((await api.request('GET', '/api/whoami', { key: original })).status, 401, 'which ends the original secret');
});

// A rotation without grace stores no previous secret, but an end time of its own now: on an
// instance whose clock ran behind, that end was still ahead, and a rotation with grace was refused
// for a previous secret that does not exist (a review of the 409; fails without the fix).
t.test('after a rotation without grace, a rotation with grace on an instance whose clock runs behind is not refused', async (t) => {
  const { db } = await freshDatabase(t);
  const clock = { now: Date.now() };
  const api = await startTestApi(t, db, { now: () => clock.now });
  const { org } = await seedOrg(api, db);
  const created = await api.services.apiKeys.create(org.id, { name: 'k', scopes: ['keys:read'], expiresAt: null });
  await api.services.apiKeys.rotate(org.id, created.key.id, { graceSeconds: 0 });
  clock.now -= 2000;
  await t.resolves(api.services.apiKeys.rotate(org.id, created.key.id, { graceSeconds: 3600 }));
});

// A revoked key's view showed the end of its rotation's grace, as if its previous secret still
// worked; both its secrets are refused (a review; fails without the fix).
t.test("a revoked key's view shows no previous secret's end, though its rotation's grace has not ended", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;
  const created = await api.services.apiKeys.create(org.id, { name: 'deployed', scopes: ['keys:read'], expiresAt: null });
  const rotated = await api.request('POST', `${base}/${created.key.id}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 3600 } });
  t.not(rotated.body.previousSecretExpiresAt, null, 'the grace period shows while the key is active');
  const revoked = await api.request('POST', `${base}/${created.key.id}/revoke`, { key: adminKey });
  t.match(revoked.body, { status: 'revoked', previousSecretExpiresAt: null }, 'the revoke answers without it');
  t.match(
    (await api.request('GET', `${base}/${created.key.id}`, { key: adminKey })).body,
    { status: 'revoked', previousSecretExpiresAt: null },
    'and so does a read',
  );
  for (const secret of [created.plaintext, rotated.body.key])
    t.equal((await api.request('GET', '/api/whoami', { key: secret })).status, 401, 'neither secret works');
});
