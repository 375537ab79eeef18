import t from 'tap';
import { TABLE } from '../shared/tables';
import { twoOrgWorld } from './helpers/api';

// The usage list (the dashboard's key table and key page) says what the key view says of a
// rotation's grace period: its end, and when and from where the previous secret was last used,
// on the same rule, on both of the list's statements (busiest first is one of its own).

const START = Date.parse('2026-12-01T12:00:00Z');
const GRACE_SECONDS = 3600;

type World = Awaited<ReturnType<typeof twoOrgWorld>>;
type Org = World['acme'];

async function createKey({ api }: World, org: Org, name: string): Promise<string> {
  const response = await api.request('POST', `/api/orgs/${org.org.id}/api-keys`, { key: org.adminKey, body: { name, scopes: ['keys:read'] } });
  return response.body.id;
}

async function rotate({ api }: World, org: Org, keyId: string, gracePeriodSeconds = GRACE_SECONDS) {
  const response = await api.request('POST', `/api/orgs/${org.org.id}/api-keys/${keyId}/rotate`, { key: org.adminKey, body: { gracePeriodSeconds } });
  if (response.status !== 200) throw new Error(`rotate: ${response.status} ${response.text}`);
}

// What the collector writes for a use of a previous secret (test/previousSecret.e2e.test.ts shows it written).
const previousSecretUse = ({ db }: World, org: Org, keyId: string, at: number, ip: string) =>
  db(TABLE.usage).insert({
    org_id: org.org.id,
    key_id: keyId,
    request_count: 5,
    last_used_at: new Date(at),
    previous_secret_last_used_at: new Date(at),
    previous_secret_last_used_ip: ip,
  });

const LISTS = ['sort=createdAt', 'sort=requestCount', 'sort=lastUsedAt&order=asc'];

async function listed(world: World, org: Org, query: string) {
  const response = await world.api.request('GET', `/api/orgs/${org.org.id}/api-keys/usage?${query}`, { key: org.adminKey });
  if (response.status !== 200) throw new Error(`usage: ${response.status} ${response.text}`);
  return response;
}

async function itemOf(world: World, org: Org, keyId: string, query: string) {
  return (await listed(world, org, query)).body.data.find((item: { id: string }) => item.id === keyId);
}

const view = async ({ api }: World, org: Org, keyId: string) =>
  (await api.request('GET', `/api/orgs/${org.org.id}/api-keys/${keyId}`, { key: org.adminKey })).body;

// The three fields of a grace period; undefined where the answer has none of them (an item or key not there).
const graceOf = (item: Record<string, unknown> | undefined) =>
  item && {
    previousSecretExpiresAt: item.previousSecretExpiresAt,
    previousSecretLastUsedAt: item.previousSecretLastUsedAt,
    previousSecretLastUsedIp: item.previousSecretLastUsedIp,
  };

const NONE = { previousSecretExpiresAt: null, previousSecretLastUsedAt: null, previousSecretLastUsedIp: null };

t.test("each item of the usage list carries the previous secret's last use while the grace period is open", async (t) => {
  const world = await twoOrgWorld(t, START);
  const { acme, globex, clock } = world;
  const used = await createKey(world, acme, 'used');
  const unused = await createKey(world, acme, 'unused');
  const older = await createKey(world, acme, 'older-secret');
  const plain = await createKey(world, acme, 'never-rotated');
  const revoked = await createKey(world, acme, 'revoked');

  await previousSecretUse(world, acme, older, START, '198.51.100.9');
  clock.now += 1000;
  for (const keyId of [used, unused, older, revoked]) await rotate(world, acme, keyId);
  clock.now += 1000;
  await previousSecretUse(world, acme, used, clock.now, '198.51.100.7');
  await previousSecretUse(world, acme, revoked, clock.now, '198.51.100.8');
  await world.db(TABLE.usage).insert({ org_id: acme.org.id, key_id: plain, request_count: 1, last_used_at: new Date(clock.now) });
  t.equal((await world.api.request('POST', `/api/orgs/${acme.org.id}/api-keys/${revoked}/revoke`, { key: acme.adminKey })).status, 200);

  const graceEnd = new Date(START + 1000 + GRACE_SECONDS * 1000).toISOString();
  const open = { ...NONE, previousSecretExpiresAt: graceEnd };
  const cases = [
    ['used since the rotation', used, { ...open, previousSecretLastUsedAt: new Date(clock.now).toISOString(), previousSecretLastUsedIp: '198.51.100.7' }],
    ['not used since the rotation', unused, open],
    ['a use before the rotation proved another secret', older, open],
    ['never rotated', plain, NONE],
    ['revoked: its previous secret is refused too', revoked, NONE],
  ] as const;
  for (const [name, keyId, fields] of cases) {
    for (const query of [...LISTS, `keyId=${keyId}`]) t.strictSame(graceOf(await itemOf(world, acme, keyId, query)), fields, `${query}: ${name}`);
    t.strictSame(graceOf(await view(world, acme, keyId)), fields, `${name}: as the key view says`);
  }

  // Another org: its own list holds none of it, and acme's list is not found for its key.
  const globexList = await listed(world, globex, 'sort=requestCount');
  t.notMatch(globexList.text, /198\.51\.100\.7/);
  t.strictSame(
    globexList.body.data.map((item: { previousSecretLastUsedAt: string | null }) => item.previousSecretLastUsedAt),
    [null],
    "globex's one key, never rotated",
  );
  for (const query of [`sort=requestCount`, `keyId=${used}`]) {
    const cross = await world.api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage?${query}`, { key: globex.adminKey });
    t.equal(cross.status, 404, `${query}: another org's list is not found`);
    t.notMatch(cross.text, /198\.51\.100\.7|previousSecret/);
  }
  const ownOrgId = await world.api.request('GET', `/api/orgs/${globex.org.id}/api-keys/usage?keyId=${used}`, { key: globex.adminKey });
  t.equal(ownOrgId.status, 404, "acme's key under globex's own org id");
  t.notMatch(ownOrgId.text, /198\.51\.100\.7/);

  // The grace period over: nothing of it shows.
  clock.now = START + 1000 + GRACE_SECONDS * 1000;
  for (const query of LISTS) t.strictSame(graceOf(await itemOf(world, acme, used, query)), NONE, `${query}: the grace period ended`);
  t.strictSame(graceOf(await view(world, acme, used)), NONE, 'as the key view says');
});
