import { randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { insertApiKey } from '../api/keys/apiKeys.repository';
import { displayPrefixFor, formatKey, hashSecret, parsePresentedKey, pepperId } from '../api/keys/keyMaterial';
import { runCli } from '../scripts/cli';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

// Rotating KEY_PEPPER: keys hashed with the old pepper keep working through KEY_PEPPER_PREVIOUS,
// move to the new pepper on their first use (after the request), and the CLI says how many are left.

const OLD = 'old-pepper-'.padEnd(40, 'o');
const NEW = 'new-pepper-'.padEnd(40, 'n');

const stored = (db: Db, id: string) => db('api_keys').where({ id }).first();

async function pepperStatus(db: Db, previousPeppers: string[]) {
  const out: string[] = [];
  const code = await runCli(['pepper', 'status', '--json'], { db, pepper: NEW, previousPeppers, now: Date.now, out: (text) => out.push(text), err: () => {} });
  if (code !== 0) throw new Error(`pepper status exited ${code}`);
  return JSON.parse(out.join('\n')) as Array<{ pepperId: string | null; secrets: number; previousSecrets: number; source: string }>;
}

t.test('rotate the pepper: old keys keep working, migrate on use, and then work without the old pepper', async (t) => {
  const { db } = await freshDatabase(t);
  const before = await startTestApi(t, db, { env: { KEY_PEPPER: OLD } });
  const { org, adminKey, adminKeyId } = await seedOrg(before, db);
  const idle = await before.services.apiKeys.create(org.id, { name: 'idle', scopes: ['keys:read'], expiresAt: null });
  // A key stored before pepper ids were recorded (null), made with the old pepper.
  const legacyId = randomUUID();
  const legacySecret = randomBytes(32).toString('hex').slice(0, 43);
  await insertApiKey(db, {
    id: legacyId,
    orgId: org.id,
    name: 'legacy',
    displayPrefix: displayPrefixFor(legacyId),
    secretHash: hashSecret(legacySecret, OLD),
    secretPepperId: 'unused',
    scopes: ['keys:read'],
    expiresAt: null,
  });
  await db('api_keys').where({ id: legacyId }).update({ secret_pepper_id: null });
  const legacyKey = formatKey(legacyId, legacySecret);
  t.equal((await stored(db, adminKeyId)).secret_pepper_id, pepperId(OLD), 'a new hash records its pepper');

  t.same(
    (await pepperStatus(db, [OLD])).map((row) => [row.pepperId, row.secrets, row.source]),
    [
      [pepperId(OLD), 2, 'KEY_PEPPER_PREVIOUS #1'],
      [null, 1, 'not recorded (made before 0.2.0; rehashed on use)'],
    ],
    'before any use: every key is on the old pepper',
  );

  const rotated = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD } });
  for (const key of [adminKey, legacyKey])
    t.equal((await rotated.request('GET', '/api/whoami', { key })).status, 200, 'an old-pepper key works after the rotation');
  const admin = await waitFor('the admin key to be rehashed', async () => {
    const row = await stored(db, adminKeyId);
    return row.secret_pepper_id === pepperId(NEW) ? row : undefined;
  });
  t.same(admin.secret_hash, hashSecret(parsePresentedKey(adminKey)!.secret, NEW), 'rehashed with the new pepper');
  await waitFor('the legacy key to be rehashed', async () => ((await stored(db, legacyId)).secret_pepper_id === pepperId(NEW) ? true : undefined));

  const status = await pepperStatus(db, [OLD]);
  t.same(
    status.map((row) => [row.pepperId, row.secrets, row.source]),
    [
      [pepperId(NEW), 2, 'KEY_PEPPER (current)'],
      [pepperId(OLD), 1, 'KEY_PEPPER_PREVIOUS #1'],
    ],
    'two keys moved, the idle one has not',
  );

  const newOnly = await startTestApi(t, db, { env: { KEY_PEPPER: NEW } });
  t.equal((await newOnly.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'a migrated key needs the old pepper no more');
  t.equal((await newOnly.request('GET', '/api/whoami', { key: legacyKey })).status, 200);
  t.equal((await newOnly.request('GET', '/api/whoami', { key: idle.plaintext })).status, 401, 'a key never used since still needs the old pepper');
  t.match(await pepperStatus(db, []), [{ pepperId: pepperId(NEW) }, { pepperId: pepperId(OLD), secrets: 1, source: /not configured/ }], 'and the CLI says so');

  const rehashedWhileNew = (await stored(db, adminKeyId)).secret_hash;
  t.equal((await rotated.request('GET', '/api/whoami', { key: adminKey })).status, 200);
  t.same((await stored(db, adminKeyId)).secret_hash, rehashedWhileNew, 'a key on the current pepper is not rewritten');
  t.same(rotated.evidence.leaksOf([OLD, NEW, adminKey, legacyKey]), [], 'no pepper or key in any log line or body');
});

// Keys made before 0.2.0 record no pepper, so no row names the old one for them: the table's
// advice said it could go, and the next use of such a key was a 401 (fails without the fix).
t.test('pepper status does not advise removing a previous pepper while keys that record none remain', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { KEY_PEPPER: NEW } });
  const { org, adminKeyId } = await seedOrg(api, db);
  const advice = async () => {
    const out: string[] = [];
    t.equal(await runCli(['pepper', 'status'], { db, pepper: NEW, previousPeppers: [OLD], now: Date.now, out: (text) => out.push(text), err: () => {} }), 0);
    return out.join('\n');
  };
  t.match(await advice(), /A previous pepper can be removed from KEY_PEPPER_PREVIOUS once no row names it/, 'every key records its pepper');
  await db('api_keys').where({ org_id: org.id, id: adminKeyId }).update({ secret_pepper_id: null });
  const withUnrecorded = await advice();
  t.notMatch(withUnrecorded, /can be removed/, 'not while a key records none');
  t.match(withUnrecorded, /Keep every pepper in KEY_PEPPER_PREVIOUS while the "not recorded" row remains/);
});

t.test('a rehash that fails is logged and retried later, never turned into an error for the request', async (t) => {
  const { db } = await freshDatabase(t);
  const before = await startTestApi(t, db, { env: { KEY_PEPPER: OLD } });
  const { adminKey, adminKeyId } = await seedOrg(before, db);
  await db.raw(`create function refuse() returns trigger language plpgsql as $$ begin raise exception 'no writes today'; end $$`);
  await db.raw(`create trigger refuse before update on api_keys for each row execute function refuse()`);
  const rotated = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD, KEY_CACHE_TTL_MS: '0' } });
  for (let i = 0; i < 3; i += 1) t.equal((await rotated.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the request is served');
  await waitFor('the failure to be logged', async () =>
    rotated.evidence.logLines.some((line) => line.includes('rehashing a key with the current KEY_PEPPER failed')) ? true : undefined,
  );
  t.equal((await stored(db, adminKeyId)).secret_pepper_id, pepperId(OLD), 'nothing was written');
  await db.raw('drop trigger refuse on api_keys');
  t.equal((await rotated.request('GET', '/api/whoami', { key: adminKey })).status, 200);
  await waitFor('a later use to rehash it', async () => ((await stored(db, adminKeyId)).secret_pepper_id === pepperId(NEW) ? true : undefined));
});

t.test("a rotation's previous secret made with the old pepper works in its grace period and is rehashed too", async (t) => {
  const { db } = await freshDatabase(t);
  const before = await startTestApi(t, db, { env: { KEY_PEPPER: OLD } });
  const { org } = await seedOrg(before, db);
  const key = await before.services.apiKeys.create(org.id, { name: 'ci', scopes: ['keys:read'], expiresAt: null });
  const after = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD } });
  await after.services.apiKeys.rotate(org.id, key.key.id, { graceSeconds: 3600 });
  const row = await stored(db, key.key.id);
  t.same([row.secret_pepper_id, row.previous_secret_pepper_id], [pepperId(NEW), pepperId(OLD)], 'the new secret on the new pepper, the old one keeps its own');
  t.equal((await after.request('GET', '/api/whoami', { key: key.plaintext })).status, 200, 'the old secret in its grace period');
  await waitFor('the previous secret to be rehashed', async () =>
    (await stored(db, key.key.id)).previous_secret_pepper_id === pepperId(NEW) ? true : undefined,
  );
});

t.test('a pepper the comma list cannot hold (a comma, a secret file’s newline) rotates through the JSON form', async (t) => {
  const { db } = await freshDatabase(t);
  const awkward = 'awkward,pepper '.padEnd(40, 'a') + '\n';
  const before = await startTestApi(t, db, { env: { KEY_PEPPER: awkward } });
  const { adminKey } = await seedOrg(before, db);
  const rotated = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: JSON.stringify([awkward]) } });
  t.equal((await rotated.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the key made with it still works');
});
