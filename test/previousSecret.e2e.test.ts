import t from 'tap';
import { waitFor } from '../harness/wait';
import { eraseKeyIps, expireIpData } from '../shared/ipRetention';
import { TABLE } from '../shared/tables';
import { seedOrg } from './helpers/api';
import { wiredSystem } from './helpers/wiredSystem';

// Through the real API, UDP and collector (direct flushes, and the usage log with its folds): a
// key rotated with a grace period says when its previous secret was last used, and from where, so
// an operator can tell whether ending the grace would cut a client off.

type System = Awaited<ReturnType<typeof wiredSystem>>;

const GRACE_SECONDS = 3600;

async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  return { id: response.body.id as string, key: response.body.key as string };
}

async function rotate({ api, org, adminKey }: System, keyId: string, gracePeriodSeconds = GRACE_SECONDS) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys/${keyId}/rotate`, { key: adminKey, body: { gracePeriodSeconds } });
  if (response.status !== 200) throw new Error(`rotate: ${response.status} ${response.text}`);
  return response.body.key as string;
}

const view = async ({ api, org, adminKey }: System, keyId: string) =>
  (await api.request('GET', `/api/orgs/${org.id}/api-keys/${keyId}`, { key: adminKey })).body;

async function usageOf({ api, org, adminKey }: System, keyId: string) {
  return (await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?keyId=${keyId}`, { key: adminKey })).body.data[0];
}

const wrongSecret = (key: string) => `${key.slice(0, 36)}${'A'.repeat(43)}`;

for (const [mode, env] of [
  ['direct flushes', { COLLECTOR_USAGE_LOG: 'false' }],
  ['the usage log', { COLLECTOR_USAGE_LOG: 'true' }],
] as const) {
  t.test(`${mode}: the view names the previous secret's last use and its address, never a wrong secret's`, async (t) => {
    const system = await wiredSystem(t, env);
    const { api } = system;
    const key = await createKey(system, 'ci');
    // Before any rotation the one secret is the current one: its uses are not a previous secret's.
    t.equal((await api.getFrom('127.0.0.5', '/api/whoami', key.key)).status, 200);
    const newKey = await rotate(system, key.id);
    t.match(
      await view(system, key.id),
      { previousSecretExpiresAt: String, previousSecretLastUsedAt: null, previousSecretLastUsedIp: null },
      'not used since rotation',
    );

    t.equal((await api.getFrom('127.0.0.2', '/api/whoami', key.key)).status, 200, 'the old secret from A');
    t.equal((await api.getFrom('127.0.0.3', '/api/whoami', newKey)).status, 200, 'the new one from B');
    t.equal((await api.getFrom('127.0.0.4', '/api/whoami', wrongSecret(key.key))).status, 401, 'a wrong secret from C');
    await waitFor('the uses persisted', async () => {
      const usage = await usageOf(system, key.id);
      return usage.requestCount === 3 && usage.failedAttempts === 1 ? true : undefined;
    });
    const shown = await view(system, key.id);
    t.match(
      shown,
      { previousSecretLastUsedIp: '127.0.0.2', previousSecretLastUsedAt: String },
      "the old secret's address, not the new one's nor the wrong one's",
    );
    t.ok(Date.parse(shown.previousSecretLastUsedAt) >= Date.parse(shown.rotatedAt), 'at or after the rotation');
    const listed = (await api.request('GET', `/api/orgs/${system.org.id}/api-keys?limit=200`, { key: system.adminKey })).body.data;
    t.match(
      listed.find((k: { id: string }) => k.id === key.id),
      { previousSecretLastUsedIp: '127.0.0.2', previousSecretLastUsedAt: shown.previousSecretLastUsedAt },
      'the list says the same',
    );

    // Wrong secrets alone never set it.
    const other = await createKey(system, 'only-wrong');
    const otherNew = await rotate(system, other.id);
    t.equal((await api.getFrom('127.0.0.6', '/api/whoami', wrongSecret(other.key))).status, 401);
    t.equal((await api.getFrom('127.0.0.7', '/api/whoami', otherNew)).status, 200);
    await waitFor('the attempt persisted', async () => ((await usageOf(system, other.id)).failedAttempts === 1 ? true : undefined));
    t.match(await view(system, other.id), { previousSecretExpiresAt: String, previousSecretLastUsedAt: null, previousSecretLastUsedIp: null });

    // Another org sees nothing of it.
    const globex = await seedOrg(api, system.db, 'globex');
    const cross = await api.request('GET', `/api/orgs/${system.org.id}/api-keys/${key.id}`, { key: globex.adminKey });
    t.equal(cross.status, 404);
    t.notMatch(cross.text, /127\.0\.0\.2|previousSecret/);
    const inOwnOrg = await api.request('GET', `/api/orgs/${globex.org.id}/api-keys/${key.id}`, { key: globex.adminKey });
    t.equal(inOwnOrg.status, 404);
    t.notMatch(inOwnOrg.text, /127\.0\.0\.2/);
  });
}

t.test("a use of an older secret is not the current previous secret's; the grace over, nothing shows", async (t) => {
  const system = await wiredSystem(t);
  const { api } = system;
  const key = await createKey(system, 'rotated-twice');
  await rotate(system, key.id);
  t.equal((await api.getFrom('127.0.0.2', '/api/whoami', key.key)).status, 200, 'the first secret, during the first grace');
  await waitFor('the use persisted', async () => ((await view(system, key.id)).previousSecretLastUsedIp === '127.0.0.2' ? true : undefined));
  // Ends that grace; then a rotation with a grace makes the second secret's successor the previous one.
  const second = await rotate(system, key.id, 0);
  const third = await rotate(system, key.id);
  t.equal((await api.getFrom('127.0.0.2', '/api/whoami', key.key)).status, 401, 'the first secret is refused now');
  t.match(
    await view(system, key.id),
    { previousSecretExpiresAt: String, previousSecretLastUsedAt: null, previousSecretLastUsedIp: null },
    "the first secret's use is not shown",
  );
  t.equal((await api.getFrom('127.0.0.8', '/api/whoami', second)).status, 200, 'the previous secret now');
  t.equal((await api.getFrom('127.0.0.9', '/api/whoami', third)).status, 200);
  await waitFor('the use persisted', async () => ((await view(system, key.id)).previousSecretLastUsedIp === '127.0.0.8' ? true : undefined));

  // The grace period over: neither the end nor the use is shown.
  await system
    .db(TABLE.apiKeys)
    .where({ id: key.id })
    .update({ previous_secret_expires_at: new Date(Date.now() - 1000) });
  t.match(await view(system, key.id), { previousSecretExpiresAt: null, previousSecretLastUsedAt: null, previousSecretLastUsedIp: null });
});

t.test("retention and key erase-ips clear the previous secret's address, and keep its time", async (t) => {
  const system = await wiredSystem(t);
  const { api, db, org } = system;
  const erased = await createKey(system, 'erased');
  const aged = await createKey(system, 'aged');
  for (const key of [erased, aged]) {
    await rotate(system, key.id);
    t.equal((await api.getFrom('127.0.0.2', '/api/whoami', key.key)).status, 200);
  }
  const row = (keyId: string) => db(TABLE.usage).where({ org_id: org.id, key_id: keyId }).first('previous_secret_last_used_at', 'previous_secret_last_used_ip');
  await waitFor('the uses persisted', async () =>
    (await row(erased.id))?.previous_secret_last_used_ip && (await row(aged.id))?.previous_secret_last_used_ip ? true : undefined,
  );

  await db.transaction((trx) => eraseKeyIps(trx, org.id, erased.id));
  t.match(await row(erased.id), { previous_secret_last_used_at: Date, previous_secret_last_used_ip: null }, 'key erase-ips');
  t.match(await view(system, erased.id), { previousSecretLastUsedAt: String, previousSecretLastUsedIp: null });

  const at = new Date(Date.now() - 100 * 86_400_000);
  await db(TABLE.usage).where({ org_id: org.id, key_id: aged.id }).update({ previous_secret_last_used_at: at });
  await expireIpData(db, 90);
  t.match(await row(aged.id), { previous_secret_last_used_at: at, previous_secret_last_used_ip: null }, 'IP_RETENTION_DAYS');
});
