import { randomUUID } from 'node:crypto';
// Key events end to end: real requests through the API, real datagrams to the collector, real
// flushes into PostgreSQL; each event type appears exactly once however often the trigger repeats.
import t, { type Test } from 'tap';
import type { Db } from '../shared/db';
import { MAX_REVOKE_KEY_IDS, createApiKeysService } from '../api/keys/apiKeys.service';
import { insertKeys } from '../bench/lib/database';
import { encodeUsageLine, type Outcome } from '../shared/usageWire';
import { secondInThePreviousHour, sendDatagrams, startTestCollector } from './helpers/collector';
import { sleep, waitFor } from '../harness/wait';
import { freshDatabase, someoneWaitsOnLock } from './helpers/database';
import { seedOrg, startTestApi } from './helpers/api';
import { wiredSystem } from './helpers/wiredSystem';
import { usedKeyWithCollector } from './helpers/usedKey';

type System = Awaited<ReturnType<typeof wiredSystem>>;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
// Another /24 of the loopback network: a second client network without a proxy.
const SECOND_NETWORK = '127.0.1.1';
const withWrongSecret = (key: string) => `${key.slice(0, 36)}${'A'.repeat(43)}`;

/** Sends what the API recorded, waits until the collector has it, and flushes. */
async function settle(system: System) {
  const { recorder, collector } = system;
  recorder.drain();
  await waitFor('the uses to be sent', () => (recorder.stats.sentUses === recorder.stats.recordedUses ? true : undefined));
  await waitFor('the collector to receive them', () => (collector.ingest.usesReceived >= recorder.stats.sentUses ? true : undefined));
  // The first may join a flush that drained before the last datagram arrived; the second drains after.
  await collector.flusher.flush();
  await collector.flusher.flush();
}

async function eventsOf(db: Db, keyId: string) {
  return db('key_events')
    .where({ key_id: keyId })
    .orderBy([{ column: 'occurred_at' }, { column: 'type' }])
    .select('type', 'details', 'occurred_at');
}

const countByType = (events: Array<{ type: string }>) =>
  events.reduce<Record<string, number>>((counts, e) => ({ ...counts, [e.type]: (counts[e.type] ?? 0) + 1 }), {});

async function createKey(system: System, name: string, extra: Record<string, unknown> = {}) {
  const { api, org, adminKey } = system;
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'], ...extra } });
  return { id: response.body.id as string, key: response.body.key as string };
}

async function whoami(system: System, key: string, times: number, from?: string) {
  for (let i = 0; i < times; i += 1) {
    if (from) await system.api.getFrom(from, '/api/whoami', key);
    else await system.api.request('GET', '/api/whoami', { key });
  }
}

t.test('first use, then a new network once, and the same /24 is not new', async (t) => {
  const system = await wiredSystem(t);
  const { db } = system;
  const key = await createKey(system, 'ci');
  await whoami(system, key.key, 3);
  await settle(system);
  t.strictSame(countByType(await eventsOf(db, key.id)), { 'key.first_use': 1 }, 'the first use; its network is not reported as new');

  await whoami(system, key.key, 2, '127.0.0.2');
  await settle(system);
  t.strictSame(countByType(await eventsOf(db, key.id)), { 'key.first_use': 1 }, '127.0.0.2 is in the /24 the key already used');
  const [known] = (await db.raw(`select cast(xmax as text) as xmax from api_key_ip_history where key_id = ? and prefix = '127.0.0.0/24'`, [key.id])).rows;
  t.equal(known.xmax, '0', 'a network seen again within the hour is not even locked (ON CONFLICT … WHERE would lock it: a write per network per flush)');

  await whoami(system, key.key, 2, SECOND_NETWORK);
  await settle(system);
  await whoami(system, key.key, 2, SECOND_NETWORK);
  await settle(system);
  const events = await eventsOf(db, key.id);
  t.strictSame(countByType(events), { 'key.first_use': 1, 'key.new_ip': 1 });
  t.strictSame(events.find((e) => e.type === 'key.new_ip')!.details, { ip: SECOND_NETWORK, prefix: '127.0.1.0/24' });
  t.match(events.find((e) => e.type === 'key.first_use')!.details, { ip: '127.0.0.1' });
  const history = await db('api_key_ip_history').where({ key_id: key.id }).orderBy('prefix').select(db.raw('cast(prefix as text) as prefix'));
  t.strictSame(
    history.map((row) => row.prefix),
    ['127.0.0.0/24', '127.0.1.0/24'],
  );

  const metrics = await (await fetch(`http://127.0.0.1:${system.collector.metricsPort}/metrics`)).text();
  t.match(metrics, /^keyusage_collector_events_recorded_total [3-9]$/m, "the collector counts what it recorded (these two and the admin key's first use)");

  const usage = await system.api.request('GET', `/api/orgs/${system.org.id}/api-keys/usage?limit=100`, { key: system.adminKey });
  const row = usage.body.data.find((k: { id: string }) => k.id === key.id);
  t.strictSame(row.events.counts, { 'key.first_use': 1, 'key.new_ip': 1 }, 'the usage list counts them per key');
  t.equal(row.events.days, 7);
  t.equal(row.events.latestAt, new Date(events[events.length - 1].occurred_at).toISOString());
});

t.test('a use from outside the expected networks: an event, not a refusal', async (t) => {
  const system = await wiredSystem(t);
  const key = await createKey(system, 'office only', { expectedNetworks: ['10.0.0.0/8'] });
  const patched = await system.api.request('PATCH', `/api/orgs/${system.org.id}/api-keys/${key.id}`, {
    key: system.adminKey,
    body: { expectedNetworks: ['10.1.2.3/8', '2001:db8::/32'] },
  });
  t.strictSame(patched.body.expectedNetworks, ['10.0.0.0/8', '2001:db8::/32'], 'stored as networks');
  await whoami(system, key.key, 2);
  await settle(system);
  await whoami(system, key.key, 2);
  await settle(system);
  const events = await eventsOf(system.db, key.id);
  t.strictSame(countByType(events), { 'key.first_use': 1, 'key.outside_networks': 1 }, 'once per key per hour');
  t.strictSame(events.find((e) => e.type === 'key.outside_networks')!.details, { ips: ['127.0.0.1'], expectedNetworks: ['10.0.0.0/8', '2001:db8::/32'] });

  const inside = await createKey(system, 'loopback', { expectedNetworks: ['127.0.0.0/8'] });
  await whoami(system, inside.key, 2);
  await settle(system);
  t.strictSame(countByType(await eventsOf(system.db, inside.id)), { 'key.first_use': 1 });
});

// Found by an incident-response review: the event named the flush's newest address of any use,
// after a revoke often the rightful service still retrying; the leaked secret's holder was in none.
t.test("key.revoked_used names the address of every refused use, the leaked secret's holder too", async (t) => {
  // One flush for the seven uses (settle's): at the helper's 100 ms interval a loaded machine
  // split them, the event came with the first flush's addresses, and the hour's dedupe kept it.
  const system = await wiredSystem(t, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const { api, org, adminKey, db } = system;
  const leaked = await createKey(system, 'leaked');
  await api.request('POST', `/api/orgs/${org.id}/api-keys/${leaked.id}/revoke`, { key: adminKey });
  const [holder, service] = ['127.0.0.1', SECOND_NETWORK];
  await whoami(system, leaked.key, 3, holder);
  await whoami(system, leaked.key, 1, service);
  await whoami(system, leaked.key, 3, holder);
  await settle(system);
  const [event] = (await eventsOf(db, leaked.id)).filter((e) => e.type === 'key.revoked_used');
  t.strictSame([...event.details.ips].sort(), [holder, service].sort(), 'both addresses');
  t.ok([holder, service].includes(event.details.ip), '`ip` is one of them, the newest');
  const usage = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?limit=100`, { key: adminKey });
  t.match(
    usage.body.data.find((k: { id: string }) => k.id === leaked.id),
    { events: { counts: { 'key.revoked_used': 1 } } },
  );
});

t.test('the right secret on a revoked or an expired key, and a burst of wrong secrets', async (t) => {
  const system = await wiredSystem(t, { EVENTS_FAILED_ATTEMPTS_PER_HOUR: '20' });
  const { api, org, adminKey, db } = system;
  const leaked = await createKey(system, 'leaked');
  await api.request('POST', `/api/orgs/${org.id}/api-keys/${leaked.id}/revoke`, { key: adminKey });
  await whoami(system, leaked.key, 3);
  await settle(system);
  await whoami(system, leaked.key, 3);
  await settle(system);
  const revoked = await eventsOf(db, leaked.id);
  t.strictSame(countByType(revoked), { 'key.first_use': 1, 'key.revoked_used': 1 });

  const expiresAt = Date.now() + 1500;
  const lapsed = await createKey(system, 'lapsed', { expiresAt: new Date(expiresAt).toISOString() });
  await sleep(expiresAt + 100 - Date.now());
  await whoami(system, lapsed.key, 2);
  await settle(system);
  await whoami(system, lapsed.key, 2);
  await settle(system);
  t.strictSame(countByType(await eventsOf(db, lapsed.id)), { 'key.first_use': 1, 'key.expired_used': 1 });

  const probed = await createKey(system, 'probed');
  await whoami(system, withWrongSecret(probed.key), 19);
  await settle(system);
  t.strictSame(await eventsOf(db, probed.id), [], '19 failed attempts: under the threshold');
  await whoami(system, withWrongSecret(probed.key), 1);
  await settle(system);
  await whoami(system, withWrongSecret(probed.key), 10);
  await settle(system);
  const failed = await eventsOf(db, probed.id);
  t.strictSame(countByType(failed), { 'key.failed_attempts': 1 }, 'the 20th raised it, the next 10 did not again');
  t.match(failed[0].details, { attempts: 20, threshold: 20, lastIp: '127.0.0.1' });
});

t.test("a spike against a seeded baseline, on the collector's injected clock", async (t) => {
  const hour = Math.floor(Date.now() / HOUR) * HOUR - DAY;
  const clock = hour + 30 * 60_000;
  // Flushes only in settle(), so the hour's count at detection is exactly what was sent.
  const system = await wiredSystem(t, { EVENTS_SPIKE_MIN_USES: '20', EVENTS_SPIKE_FACTOR: '5', COLLECTOR_FLUSH_INTERVAL_MS: '600000' }, { now: () => clock });
  const { db } = system;
  const quiet = await createKey(system, 'quiet');
  const busy = await createKey(system, 'busy');
  await db('api_keys')
    .whereIn('id', [quiet.id, busy.id])
    .update({ created_at: new Date(hour - 30 * DAY) });
  const baseline = (keyId: string, uses: number) =>
    Array.from({ length: 7 }, (_, i) => ({ org_id: system.org.id, key_id: keyId, hour: new Date(hour - (i + 1) * DAY), request_count: uses, ok_count: uses }));
  await db('api_key_usage_hourly').insert([...baseline(quiet.id, 2), ...baseline(busy.id, 10)]);
  // Both keys have been used from here for a week (so no first use, no new network).
  await db('api_key_usage').insert(
    [quiet.id, busy.id].map((id) => ({ key_id: id, org_id: system.org.id, request_count: 70, ok_count: 70, last_used_at: new Date(hour - DAY) })),
  );
  await db('api_key_ip_history').insert(
    [quiet.id, busy.id].map((id) => ({
      key_id: id,
      prefix: '127.0.0.0/24',
      first_ip: '127.0.0.1',
      first_seen: new Date(hour - 7 * DAY),
      last_seen: new Date(hour - DAY),
    })),
  );

  await whoami(system, quiet.key, 15);
  await whoami(system, busy.key, 30);
  await settle(system);
  t.strictSame(await eventsOf(db, quiet.id), [], '15 uses: below the minimum of 20');
  await whoami(system, quiet.key, 10);
  await whoami(system, busy.key, 20);
  await settle(system);
  await whoami(system, quiet.key, 5);
  await settle(system);
  const spikes = await eventsOf(db, quiet.id);
  t.strictSame(countByType(spikes), { 'key.spike': 1 }, '25 > 5 × median 2, once for the hour');
  t.strictSame(spikes[0].details, { hour: new Date(hour).toISOString(), uses: 25, baselineMedian: 2, factor: 5, minUses: 20 });
  t.strictSame(await eventsOf(db, busy.id), [], '50 uses are not more than 5 × median 10');
});

t.test('dormant and expiring keys come from the sweep, once per threshold', async (t) => {
  let clock = Date.now();
  const system = await wiredSystem(t, {}, { now: () => clock });
  const { db, collector, org } = system;
  await db('organizations').where({ id: org.id }).update({ dormancy_days: 10 });
  const expiresAt = new Date(clock + 6 * DAY).toISOString();
  const expiring = await createKey(system, 'expiring', { expiresAt });
  const idle = await createKey(system, 'idle');
  const sweepTwice = async () => {
    await collector.sweep.sweep();
    await collector.sweep.sweep();
  };

  const createdAt = async (id: string) => ((await db('api_keys').where({ id }).first('created_at')).created_at as Date).getTime();
  await sweepTwice();
  const [warned] = await eventsOf(db, expiring.id);
  t.strictSame([warned.type, warned.details.daysBefore], ['key.expiring', 7]);
  // Created 6 days before its expiry: it came within 7 days when it was created, and the event
  // occurs when the sweep finds it, never before the key existed (a poller's `since` would miss it).
  // Written as the API writes times: the jsonb of a timestamptz ended in +00:00 (a review; fails without the fix).
  t.equal(warned.details.crossedAt, new Date(await createdAt(expiring.id)).toISOString(), 'crossed at its creation');
  t.equal(warned.details.expiresAt, expiresAt, "the key's own expiresAt, as the API gives it");
  t.equal(warned.occurred_at.getTime(), clock, "occurs at the sweep's time");
  clock += 5.5 * DAY;
  await sweepTwice();
  t.strictSame(
    (await eventsOf(db, expiring.id)).map((e) => [e.type, e.details.daysBefore]),
    [
      ['key.expiring', 7],
      ['key.expiring', 1],
    ],
  );
  t.strictSame(await eventsOf(db, idle.id), [], 'not dormant after 5.5 days');

  clock += 5 * DAY;
  await sweepTwice();
  const dormant = await eventsOf(db, idle.id);
  t.strictSame(countByType(dormant), { 'key.dormant': 1 }, "the org's 10 days crossed");
  // usesMayHaveBeenLost follows the collector's listening span on this test's clock, which jumps
  // days between its beats: told apart in test/collectorUptime.test.ts.
  const { crossedAt, usesMayHaveBeenLost, ...details } = dormant[0].details;
  t.strictSame([details, typeof usesMayHaveBeenLost], [{ lastUsedAt: null, dormantDays: 10 }, 'boolean']);
  t.equal(crossedAt, new Date((await createdAt(idle.id)) + 10 * DAY).toISOString(), 'crossed 10 days after its creation');
  t.equal(dormant[0].occurred_at.getTime(), clock, 'found by the sweep 0.5 days later');
  t.strictSame(countByType(await eventsOf(db, expiring.id)), { 'key.expiring': 2 }, 'an expired key is not dormant');
  t.equal(collector.sweep.stats.failedSweeps, 0);
});

// Its dedupe key holds the expiry: a key renewed (PATCH expiresAt) is warned again before its new
// expiry, though it was warned at the same thresholds before its old one.
t.test('a renewed key is warned again before its new expiry', async (t) => {
  let clock = Date.now();
  const system = await wiredSystem(t, {}, { now: () => clock });
  const { db, collector, api, org, adminKey } = system;
  const key = await createKey(system, 'renewed', { expiresAt: new Date(clock + 12 * HOUR).toISOString() });
  await collector.sweep.sweep();
  const warned = await eventsOf(db, key.id);
  t.strictSame(
    warned.map((e) => [e.type, e.details.daysBefore]),
    [['key.expiring', 1]],
    'within a day of its expiry',
  );

  const renewedTo = new Date(clock + 30 * DAY).toISOString();
  const renewed = await api.request('PATCH', `/api/orgs/${org.id}/api-keys/${key.id}`, { key: adminKey, body: { expiresAt: renewedTo } });
  t.equal(renewed.status, 200);
  await collector.sweep.sweep();
  t.equal((await eventsOf(db, key.id)).length, 1, 'nothing new 30 days before the new expiry');
  clock += 24 * DAY;
  await collector.sweep.sweep();
  clock += 5.5 * DAY;
  await collector.sweep.sweep();
  const again = await eventsOf(db, key.id);
  t.strictSame(
    again.map((e) => [e.type, e.details.daysBefore, e.details.expiresAt]),
    [
      ['key.expiring', 1, warned[0].details.expiresAt],
      ['key.expiring', 7, renewedTo],
      ['key.expiring', 1, renewedTo],
    ],
    'the 7-day and the 1-day warnings again, for the new expiry',
  );
});

t.test('the events endpoint: newest first, filters, an opaque cursor, one org only', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const base = Date.parse('2026-11-20T00:00:00Z');
  const row = (i: number, type: string, keyId = acme.adminKeyId, orgId = acme.org.id) => ({
    org_id: orgId,
    key_id: keyId,
    type,
    occurred_at: new Date(base + (i % 4) * HOUR), // ties on time: the id breaks them
    details: { i },
    dedupe_key: `test:${i}`,
  });
  await db('key_events').insert([
    ...Array.from({ length: 7 }, (_, i) => row(i, i % 2 ? 'key.new_ip' : 'key.spike')),
    row(99, 'key.new_ip', globex.adminKeyId, globex.org.id),
  ]);
  const path = `/api/orgs/${acme.org.id}/api-keys/events`;
  const seen: Array<{ id: string; occurredAt: string }> = [];
  let cursor: string | null = null;
  for (let page = 0; page < 10; page += 1) {
    const response: { body: any } = await api.request('GET', `${path}?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { key: acme.adminKey });
    seen.push(...response.body.data);
    cursor = response.body.page.nextCursor;
    if (!cursor) break;
  }
  t.equal(seen.length, 7, 'every event of the org once, none of the other org');
  t.equal(new Set(seen.map((e) => e.id)).size, 7);
  const sorted = [...seen].sort((a, b) => b.occurredAt.localeCompare(a.occurredAt) || (a.id < b.id ? 1 : -1));
  t.strictSame(seen, sorted, 'newest first, then id');

  const spikes = await api.request('GET', `${path}?type=key.spike&since=${new Date(base + 2 * HOUR).toISOString()}`, { key: acme.adminKey });
  t.strictSame(spikes.body.data.map((e: { details: { i: number } }) => e.details.i).sort(), [2, 6], 'type and since');
  t.match(spikes.body.data[0], { keyId: acme.adminKeyId, type: 'key.spike' });
  for (const keyId of [globex.adminKeyId, '00000000-0000-4000-8000-000000000000']) {
    const other = await api.request('GET', `${path}?keyId=${keyId}`, { key: acme.adminKey });
    t.equal(other.status, 404, `?keyId= of another org's key, or of none, is not_found (${keyId})`);
    t.match(other.body, { error: { code: 'not_found', message: 'API key not found', requestId: String } });
  }
  const own = await api.request('GET', `${path}?keyId=${acme.adminKeyId}&type=key.spike`, { key: acme.adminKey });
  t.equal(own.body.data.length, 4, "the org's own key still filters");
  const theirs = await api.request('GET', `/api/orgs/${globex.org.id}/api-keys/events`, { key: acme.adminKey });
  t.equal(theirs.status, 404);
  const forged = await api.request('GET', `${path}?cursor=bm90LWEtY3Vyc29y`, { key: acme.adminKey });
  t.match(
    forged,
    { status: 400, body: { error: { code: 'invalid_request', message: 'Invalid query: cursor: is not a cursor this endpoint returned' } } },
    'the service refuses the cursor, the HTTP layer names the query',
  );
});

t.test("each listed event names its key's name and owner as they are now; a key of another org or none, null", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const ci = (await api.services.apiKeys.create(acme.org.id, { name: 'ci deploy', owner: 'platform team', scopes: ['keys:read'], expiresAt: null })).key.id;
  const event = (i: number, keyId: string) => ({
    org_id: acme.org.id,
    key_id: keyId,
    type: 'key.spike',
    occurred_at: new Date(Date.parse('2026-11-20T00:00:00Z') + i * HOUR),
    details: { i },
    dedupe_key: `test:${i}`,
  });
  // By SQL by hand only: an event of acme filed under globex's key, and under no key at all.
  await db('key_events').insert([event(0, ci), event(1, acme.adminKeyId), event(2, globex.adminKeyId), event(3, randomUUID())]);
  const path = `/api/orgs/${acme.org.id}/api-keys/events`;
  const keys = async () =>
    (await api.request('GET', path, { key: acme.adminKey })).body.data.map((e: { details: { i: number }; key: unknown }) => [e.details.i, e.key]);
  t.strictSame(
    await keys(),
    [
      [3, null],
      [2, null],
      [1, { name: 'admin', owner: null }],
      [0, { name: 'ci deploy', owner: 'platform team' }],
    ],
    "the key's name and owner; another org's key is not named, a missing one neither",
  );
  const renamed = await api.request('PATCH', `${path.replace('/events', '')}/${ci}`, { key: acme.adminKey, body: { name: 'ci', owner: null } });
  t.equal(renamed.status, 200);
  t.strictSame((await keys()).at(-1), [0, { name: 'ci', owner: null }], 'as the key is now, not as it was when the event was raised');
  const ofKey = await api.request('GET', `${path}?keyId=${ci}`, { key: acme.adminKey });
  t.match(ofKey.body.data, [{ keyId: ci, key: { name: 'ci', owner: null } }], 'filtered by key too');
});

// `since` was cut to the millisecond, so an event a hair before it was listed (fails without the fix).
t.test("the events' since finer than a millisecond excludes the event in the millisecond it starts within", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId, adminKey } = await seedOrg(api, db);
  const at = (time: string, i: number) => ({
    org_id: org.id,
    key_id: adminKeyId,
    type: 'key.spike',
    occurred_at: new Date(time),
    details: { i },
    dedupe_key: `test:${i}`,
  });
  await db('key_events').insert([at('2026-11-20T10:00:50.000Z', 0), at('2026-11-20T10:00:50.001Z', 1)]);
  const listed = async (since: string) =>
    (await api.request('GET', `/api/orgs/${org.id}/api-keys/events?since=${since}`, { key: adminKey })).body.data.map(
      (e: { details: { i: number } }) => e.details.i,
    );
  t.strictSame(await listed('2026-11-20T10:00:50.0001Z'), [1], ':50.000 is before :50.0001');
  t.strictSame(await listed('2026-11-20T10:00:50.0000Z'), [1, 0], 'zeros past the millisecond change nothing');
  t.strictSame(await listed('2026-11-20T10:00:50.001Z'), [1], 'an exact millisecond is itself included');
});

t.test('dormant clean-up: a dry run lists exactly what applying revokes, never the caller', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { KEY_CACHE_TTL_MS: '60000' } });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const create = async (name: string, expiresAt: Date | null = null) =>
    (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt })).key.id;
  const [unused, usedLongAgo, usedRecently, revoked, expired, young] = [
    await create('unused'),
    await create('used long ago'),
    await create('used recently'),
    await create('revoked'),
    await create('expired', new Date(Date.now() + 60_000)),
    await create('young'),
  ];
  const idle = await api.services.apiKeys.create(org.id, { name: 'idle but cached', scopes: ['keys:read'], expiresAt: null });
  const old = new Date(Date.now() - 200 * DAY);
  await db('api_keys').whereIn('id', [adminKeyId, unused, usedLongAgo, usedRecently, revoked, expired, idle.key.id]).update({ created_at: old });
  await db('api_keys')
    .where({ id: expired })
    .update({ expires_at: new Date(Date.now() - DAY) });
  await db('api_keys')
    .where({ id: revoked })
    .update({ revoked_at: new Date(Date.now() - DAY) });
  const lastUse = new Date(Date.now() - 120 * DAY);
  await db('api_key_usage').insert([
    { key_id: usedLongAgo, org_id: org.id, request_count: 1, ok_count: 1, last_used_at: lastUse, last_used_ip: '192.0.2.1' },
    { key_id: usedRecently, org_id: org.id, request_count: 1, ok_count: 1, last_used_at: new Date(Date.now() - 10 * DAY), last_used_ip: '192.0.2.1' },
  ]);
  t.equal((await api.request('GET', '/api/whoami', { key: idle.plaintext })).status, 200, 'the idle key is in the verifier cache');

  const path = `/api/orgs/${org.id}/api-keys/revoke-dormant`;
  const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  t.equal(dry.status, 200);
  t.equal(dry.body.dryRun, true, 'a dry run unless asked otherwise');
  const listed = (body: any) => body.keys.map((k: { id: string; lastUsedAt: string | null }) => [k.id, k.lastUsedAt]).sort();
  const expected = [
    [unused, null],
    [usedLongAgo, lastUse.toISOString()],
    [idle.key.id, null],
  ].sort();
  t.strictSame(listed(dry.body), expected, 'old and unused, or last used more than 90 days ago; not the caller, revoked, expired or young keys');
  t.equal((await db('api_keys').whereNotNull('revoked_at').count({ n: '*' }))[0].n, 1, 'nothing revoked by the dry run');

  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.strictSame(listed(applied.body), expected, "applying revokes exactly the dry run's list");
  t.ok(applied.body.keys.every((k: { status: string }) => k.status === 'revoked'));
  t.equal((await api.request('GET', '/api/whoami', { key: idle.plaintext })).status, 401, 'refused at once: the cache was invalidated');
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the caller still works');
  const again = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.strictSame(again.body.keys, [], 'nothing left to revoke');
  t.ok(young);
});

// Applying recomputed the selection: a key that crossed the threshold after the dry run was
// revoked unseen; a key whose uses were logged but not yet folded looked unused; and an API that
// records no uses revoked keys in use.
// An org for the clean-up's cases: keys made by name, and made 200 days old on demand.
async function cleanUpWorld(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const create = async (name: string) => (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
  const age = (ids: string[]) =>
    db('api_keys')
      .whereIn('id', ids)
      .update({ created_at: new Date(Date.now() - 200 * DAY) });
  return { db, api, org, adminKey, create, age, path: `/api/orgs/${org.id}/api-keys/revoke-dormant` };
}

t.test('dormant clean-up: keyIds bound the apply to the dry run; unfolded uses spare a key; no apply without tracking', async (t) => {
  const { db, api, org, adminKey, create, age, path } = await cleanUpWorld(t);
  const [shown, crossedLater, logged] = [await create('shown'), await create('crossed after the dry run'), await create('uses not yet folded')];
  await age([shown, logged]);
  await db('api_key_usage_log').insert({ org_id: org.id, key_id: logged, delta: '{}' });
  const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  t.strictSame(
    dry.body.keys.map((k: { id: string }) => k.id),
    [shown],
    'the key with logged uses is spared',
  );
  await age([crossedLater]);
  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: [shown, logged] } });
  t.equal(applied.status, 200);
  t.strictSame(
    applied.body.keys.map((k: { id: string }) => k.id),
    [shown],
    'only the listed keys still dormant',
  );
  t.strictSame(await db('api_keys').whereNotNull('revoked_at').pluck('id'), [shown], 'the key that crossed later is not revoked');
  const tooMany = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: Array(10_001).fill(shown) } });
  t.match(tooMany.body.error, { code: 'invalid_request', message: /keyIds: must list at most 10000 ids/ });

  const untracked = createApiKeysService({ db, pepper: api.config.api.keyPepper, defaultGraceSeconds: 0, usageTracking: false, now: Date.now });
  t.equal((await untracked.revokeDormant(org.id, { dormantDays: 90, dryRun: true })).keys.length, 1, 'without tracking a dry run still lists');
  await t.rejects(untracked.revokeDormant(org.id, { dormantDays: 90, dryRun: false }), { code: 'conflict', message: /USAGE_TRACKING=false/ });
  t.strictSame(await db('api_keys').whereNotNull('revoked_at').pluck('id'), [shown], 'and nothing more revoked');
});

// `more` was asked within the keyIds listed: an apply of a dry run's list (the dashboard's and
// the CLI's way) always answered false, with other keys still dormant (a review; fails without the fix).
t.test('dormant clean-up: with keyIds, more says whether keys not listed are dormant', async (t) => {
  const { api, adminKey, create, age, path } = await cleanUpWorld(t);
  const ids = [await create('first'), await create('second'), await create('third')].sort();
  await age(ids);
  const more = async (dryRun: boolean, keyIds: string[]) => {
    const { status, body } = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun, keyIds } });
    return [status, body.keys.map((k: { id: string }) => k.id).sort(), body.more];
  };
  t.strictSame(await more(true, [ids[0]]), [200, [ids[0]], true], 'a dry run of one: two more are dormant');
  t.strictSame(await more(true, ids), [200, ids, false], 'a dry run of all three: none besides');
  t.strictSame(await more(false, [ids[0]]), [200, [ids[0]], true], 'an apply of one: two more are dormant');
  t.strictSame(await more(false, ids.slice(1)), [200, ids.slice(1), false], 'an apply of the rest: none left');
});

// An expiring key revoked, through the clean-up, the org's lasting admin key, which it may not
// revoke directly: once it expired no key could mint another (a review; fails without the fix).
t.test('dormant clean-up: an expiring caller neither lists nor revokes keys that outlive it', async (t) => {
  const { db, api, org, create, age, path } = await cleanUpWorld(t);
  const expiresAt = new Date(Date.now() + DAY);
  const expiring = await api.services.apiKeys.create(org.id, { name: 'expiring', scopes: ['keys:read', 'keys:write'], expiresAt });
  const shorter = (await api.services.apiKeys.create(org.id, { name: 'shorter', scopes: ['keys:read'], expiresAt })).key.id;
  const lasting = await create('lasting');
  await age([shorter, lasting]);
  const body = { dormantDays: 90, dryRun: false, keyIds: [shorter, lasting] };
  const applied = await api.request('POST', path, { key: expiring.plaintext, body });
  t.equal(applied.status, 200);
  t.strictSame(
    applied.body.keys.map((k: { id: string }) => k.id),
    [shorter],
    'only the key that expires no later',
  );
  t.strictSame(await db('api_keys').whereNotNull('revoked_at').pluck('id'), [shorter], 'the lasting key is not revoked');
});

// A dry run answered every dormant key: an org of 100,000 with long names and networks made each
// one a response of hundreds of megabytes, built on the API's one thread.
// An org with one key more than a clean-up answers, all but the admin key dormant for 200 days.
async function moreDormantThanAnAnswer(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const ids = await insertKeys(db, org.id, MAX_REVOKE_KEY_IDS + 1, 'idle-');
  await db('api_keys')
    .where({ org_id: org.id })
    .whereNot({ id: adminKeyId })
    .update({ created_at: db.raw(`created_at - interval '200 days'`) });
  await recentUse(db, org.id, adminKeyId);
  return { db, org, api, adminKey, ids, path: `/api/orgs/${org.id}/api-keys/revoke-dormant` };
}

// A use of the org recorded now: its uses are recorded, so an apply may select again.
const recentUse = (db: Db, orgId: string, keyId: string) =>
  db('api_key_usage').insert({ org_id: orgId, key_id: keyId, request_count: 1, ok_count: 1, last_used_at: new Date(), last_used_ip: '192.0.2.1' });

// Where uses are not recorded (the collector not writing, a wrong port or signing secret) every
// key looks unused: the CLI refused an apply that selects again, the API revoked every key older
// than dormantDays (a review; fails without the fix).
t.test('dormant clean-up: an apply that selects again is refused when no use of the org is recorded within dormantDays', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const [idle] = await insertKeys(db, org.id, 1, 'idle-');
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: db.raw(`created_at - interval '100 days'`) });
  const path = `/api/orgs/${org.id}/api-keys/revoke-dormant`;
  const refused = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.equal(refused.status, 409);
  t.match(refused.body.error.message, /no key of organization .* has a recorded use in the last 90 days, so all 1 key\(s\) older than that look unused/);
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 0, 'nothing revoked');
  t.equal(
    (await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: [idle] } })).status,
    200,
    'the ids a dry run listed go through',
  );
  await db('api_keys').where({ id: idle }).update({ revoked_at: null });
  await recentUse(db, org.id, adminKeyId);
  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.same(
    applied.body.keys.map((k: { id: string }) => k.id),
    [idle],
    'with a use recorded, it selects again',
  );
});

// Two orgs, each with a key idle for 100 days: what one org's clean-up reads of the other.
async function twoOrgsWithIdleKeys(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const [acme, globex] = [await seedOrg(api, db, 'acme'), await seedOrg(api, db, 'globex')];
  const [acmeIdle] = await insertKeys(db, acme.org.id, 1, 'idle-');
  const [globexIdle] = await insertKeys(db, globex.org.id, 1, 'idle-');
  await db('api_keys')
    .whereIn('id', [acmeIdle, globexIdle])
    .update({ created_at: db.raw(`created_at - interval '100 days'`) });
  const cleanUp = (dryRun: boolean) =>
    api.request('POST', `/api/orgs/${acme.org.id}/api-keys/revoke-dormant`, { key: acme.adminKey, body: { dormantDays: 90, dryRun } });
  return { db, acme, globex, acmeIdle, cleanUp };
}

// Another org's recent use would make every key of this one look tracked: its keys older than
// dormantDays, unused only because their uses go unrecorded, would all be revoked.
t.test("dormant clean-up: another org's recorded use does not let an apply select again", async (t) => {
  const { db, globex, cleanUp } = await twoOrgsWithIdleKeys(t);
  await recentUse(db, globex.org.id, globex.adminKeyId);
  const refused = await cleanUp(false);
  t.equal(refused.status, 409, 'no use of this org is recorded');
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 0, 'nothing revoked');
});

// The dashboard applies the ids its dry run listed, which the check above lets through: an org
// of 5 keys 40 days old whose API wrote no use lost all 5 without a word. The answer now says
// whether uses are recorded, so a client can warn first (a review; fails without the fix).
t.test('dormant clean-up: usesRecorded is false where no use of the org is recorded within dormantDays, and the audit keeps it', async (t) => {
  const { db } = await freshDatabase(t);
  // The API's uses go nowhere (startTestApi keeps them in memory): as a collector not writing.
  const api = await startTestApi(t, db);
  const [acme, globex] = [await seedOrg(api, db, 'acme'), await seedOrg(api, db, 'globex')];
  const ids = await insertKeys(db, acme.org.id, 5, 'old-');
  await db('api_keys')
    .whereIn('id', ids)
    .update({ created_at: new Date(Date.now() - 40 * DAY) });
  const path = `/api/orgs/${acme.org.id}/api-keys/revoke-dormant`;
  const cleanUp = async (body: object) => (await api.request('POST', path, { key: acme.adminKey, body: { dormantDays: 30, ...body } })).body;
  const dry = await cleanUp({ dryRun: true });
  t.strictSame([dry.keys.length, dry.usesRecorded], [5, false], 'the dry run lists all 5 and says no use is recorded');
  // A use older than dormantDays, and another org's recent one, are no evidence.
  await db('api_key_usage').insert({ org_id: acme.org.id, key_id: ids[0], request_count: 1, last_used_at: new Date(Date.now() - 35 * DAY) });
  await recentUse(db, globex.org.id, globex.adminKeyId);
  t.equal((await cleanUp({ dryRun: true })).usesRecorded, false, 'nor with an old use, or a use of another org');
  const applied = await cleanUp({ dryRun: false, keyIds: dry.keys.map((k: { id: string }) => k.id) });
  t.strictSame([applied.keys.length, applied.usesRecorded], [5, false], 'the ids go through, and the apply says it too');
  const details = await db('audit_log').where({ action: 'keys.revoke_dormant' }).pluck('details');
  t.strictSame(
    details.map((d: { usesRecorded: boolean; selectedBy: string }) => [d.selectedBy, d.usesRecorded]),
    Array(5).fill(['keyIds', false]),
    'each entry records that no use was recorded',
  );
});

t.test('dormant clean-up: usesRecorded is true once a use of the org went through the collector', async (t) => {
  const system = await wiredSystem(t);
  const { db, api, org, adminKey } = system;
  const ids = await insertKeys(db, org.id, 5, 'old-');
  await db('api_keys')
    .whereIn('id', ids)
    .update({ created_at: new Date(Date.now() - 40 * DAY) });
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200);
  await settle(system);
  const dry = await api.request('POST', `/api/orgs/${org.id}/api-keys/revoke-dormant`, { key: adminKey, body: { dormantDays: 30 } });
  t.strictSame([dry.body.keys.length, dry.body.usesRecorded], [5, true]);
});

// The dry run built each key's view without its previous secret's last use: a key in its grace
// period whose old secret was used since the rotation was listed as "not used since rotation"
// (previousSecretLastUsedAt null) while its view showed the use (a review; fails without the fix).
t.test("dormant clean-up: a dry run shows a key's previous secret's last use as the key's view does", async (t) => {
  const system = await wiredSystem(t);
  const { db, api, org, adminKey } = system;
  const created = await api.services.apiKeys.create(org.id, { name: 'rotating', scopes: ['keys:read'], expiresAt: null });
  const keyPath = `/api/orgs/${org.id}/api-keys/${created.key.id}`;
  t.equal((await api.request('POST', `${keyPath}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 7 * 86_400 } })).status, 200);
  t.equal((await api.getFrom(SECOND_NETWORK, '/api/whoami', created.plaintext)).status, 200, 'the old secret, used in its grace period');
  await settle(system);
  // Made 10 days ago, rotated 3 days ago, the old secret's use 2 days ago: dormant for 1 day, the
  // grace (7 days from the rotation as made) still open.
  await db('api_keys')
    .where({ id: created.key.id })
    .update({ created_at: new Date(Date.now() - 10 * DAY), rotated_at: new Date(Date.now() - 3 * DAY) });
  await db('api_key_usage')
    .where({ key_id: created.key.id })
    .update({
      last_used_at: db.raw(`last_used_at - interval '2 days'`),
      previous_secret_last_used_at: db.raw(`previous_secret_last_used_at - interval '2 days'`),
    });
  const view = (await api.request('GET', keyPath, { key: adminKey })).body;
  t.match(view, { previousSecretLastUsedAt: String, previousSecretLastUsedIp: SECOND_NETWORK }, "the key's view shows the use");
  const dry = await api.request('POST', `/api/orgs/${org.id}/api-keys/revoke-dormant`, { key: adminKey, body: { dormantDays: 1 } });
  const listed = dry.body.keys.find((k: { id: string }) => k.id === created.key.id);
  const shown = (k: Record<string, unknown>) => [k.previousSecretExpiresAt, k.previousSecretLastUsedAt, k.previousSecretLastUsedIp];
  t.strictSame(shown(listed), shown(view), 'the dry run lists the key with the same grace, last use and address');
});

t.test("dormant clean-up: an org's dry run and apply neither list nor revoke another org's dormant key", async (t) => {
  const { db, acme, acmeIdle, cleanUp } = await twoOrgsWithIdleKeys(t);
  await recentUse(db, acme.org.id, acme.adminKeyId);
  const ids = (body: { keys: Array<{ id: string }> }) => body.keys.map((k) => k.id);
  t.strictSame(ids((await cleanUp(true)).body), [acmeIdle], 'the dry run lists its own dormant key only');
  t.strictSame(ids((await cleanUp(false)).body), [acmeIdle], 'the apply revokes it only');
  t.strictSame(await db('api_keys').whereNotNull('revoked_at').pluck('id'), [acmeIdle], "the other org's key is not revoked");
});

// A clean-up's answer of the 10,001 dormant keys: the oldest 10,000, and more.
function oldestAnswerAndMore(t: Test, body: { keys: Array<{ id: string }>; more: boolean }, ids: string[]) {
  t.strictSame([body.keys.map((k) => k.id), body.more], [ids.slice(0, MAX_REVOKE_KEY_IDS), true], 'the oldest first, and more');
}

t.test('dormant clean-up: a dry run lists the oldest 10,000 and says more are dormant (fails without the fix)', async (t) => {
  const { api, adminKey, ids, path } = await moreDormantThanAnAnswer(t);
  const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  oldestAnswerAndMore(t, dry.body, ids);
  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: ids.slice(0, MAX_REVOKE_KEY_IDS) } });
  t.equal(applied.body.keys.length, MAX_REVOKE_KEY_IDS);
  t.equal(applied.body.more, true, 'one is still dormant');
  const next = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  t.strictSame([next.body.keys.map((k: { id: string }) => k.id), next.body.more], [[ids[MAX_REVOKE_KEY_IDS]], false], 'run again: the rest');
});

// The apply without keyIds had no bound: it revoked every dormant key in one statement and
// answered them all, hundreds of megabytes for 100,000 (found by a review; fails without the fix).
t.test('dormant clean-up: an apply without keyIds revokes the oldest 10,000 and says more are dormant', async (t) => {
  const { api, adminKey, ids, path } = await moreDormantThanAnAnswer(t);
  const apply = () => api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  const first = await apply();
  oldestAnswerAndMore(t, first.body, ids);
  const second = await apply();
  t.strictSame([second.body.keys.map((k: { id: string }) => k.id), second.body.more], [[ids[MAX_REVOKE_KEY_IDS]], false], 'again: the rest');
});

// A key of the apply's 10,000 whose first use commits while the apply waits for its lock is spared:
// 9,999 revoked, and `more` was told only of a full 10,000, so the key left dormant went unsaid (a
// review of the two-step apply; fails without the fix).
t.test('dormant clean-up: an apply that spares a key still says more are dormant', async (t) => {
  const { db, org, api, adminKey, ids, path } = await moreDormantThanAnAnswer(t);
  const flush = await db.transaction();
  t.teardown(() => (flush.isCompleted() ? undefined : flush.rollback()));
  await flush('api_key_usage').insert({ org_id: org.id, key_id: ids[0], request_count: 1, ok_count: 1, last_used_at: new Date(), last_used_ip: '192.0.2.1' });
  const applying = api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  await someoneWaitsOnLock(db);
  await flush.commit();
  const applied = await applying;
  t.equal(applied.body.keys.length, MAX_REVOKE_KEY_IDS - 1, 'the key used meanwhile spared');
  t.equal(applied.body.more, true, 'and the key beyond the 10,000 still dormant');
});

// Uses a collector could not apply are set aside, not folded (api_key_usage_set_aside): the key's
// totals never saw them, and it looked unused until an operator requeued them.
t.test('dormant clean-up: uses set aside spare a key, refused or unreadable (fails without the fix)', async (t) => {
  const { db, api, org, adminKey, create, age, path } = await cleanUpWorld(t);
  const [idle, refused, unreadable] = [await create('idle'), await create('uses refused'), await create('uses unreadable')];
  await age([idle, refused, unreadable]);
  for (const [keyId, reason] of [
    [refused, 'refused'],
    [unreadable, 'unreadable'],
  ]) {
    await db('api_key_usage_set_aside').insert({ org_id: org.id, key_id: keyId, reason, delta: '{}' });
  }
  const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  t.strictSame(
    dry.body.keys.map((k: { id: string }) => k.id),
    [idle],
    'only the key without uses anywhere is listed',
  );
  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: [idle, refused, unreadable] } });
  t.strictSame(await db('api_keys').whereNotNull('revoked_at').pluck('id'), [idle], 'and only it is revoked');
  t.equal(applied.body.keys.length, 1);
});

t.test('EVENTS_ENABLED=false: usage is written, no event, no history', async (t) => {
  const system = await wiredSystem(t, { EVENTS_ENABLED: 'false' });
  const key = await createKey(system, 'quiet');
  await whoami(system, key.key, 2, SECOND_NETWORK);
  await settle(system);
  t.equal((await system.db('api_key_usage').where({ key_id: key.id }).first()).request_count, 2);
  t.strictSame(await system.db('key_events').select(), []);
  t.strictSame(await system.db('api_key_ip_history').select(), []);
});

// Each use flushed on its own (test/helpers/usedKey.ts), and what the key's history and events hold.
async function flushEachLine(t: Test, env: Record<string, string> = {}) {
  const { db, keyId: adminKeyId, flushUses } = await usedKeyWithCollector(t, env);
  const useFrom = async (ip: string, outcome: Outcome = 'ok') => {
    await flushUses([{ ip, outcome }]);
    await sleep(50); // the best-effort trim runs after the flush
  };
  const prefixes = async () =>
    (await db('api_key_ip_history').where({ key_id: adminKeyId }).select(db.raw('cast(prefix as text) as prefix'))).map((r) => r.prefix).sort();
  const newIps = async () => (await eventsOf(db, adminKeyId)).filter((e) => e.type === 'key.new_ip').map((e) => e.details.prefix);
  return { db, adminKeyId, useFrom, prefixes, newIps };
}

t.test('the prefix history is bounded per key; a forgotten network is new again', async (t) => {
  const { db, adminKeyId, useFrom, prefixes, newIps } = await flushEachLine(t, { EVENTS_IP_HISTORY_PER_KEY: '2' });
  for (const ip of ['192.0.2.1', '198.51.100.1', '203.0.113.1']) await useFrom(ip);
  await waitFor('the trim', async () => ((await db('api_key_ip_history').where({ key_id: adminKeyId })).length === 2 ? true : undefined));
  t.strictSame(await prefixes(), ['198.51.100.0/24', '203.0.113.0/24'], 'the least recently seen was forgotten');
  await useFrom('192.0.2.77');
  t.strictSame(await newIps(), ['192.0.2.0/24', '198.51.100.0/24', '203.0.113.0/24', '192.0.2.0/24'], 'forgotten, then new again');
});

// Anyone who knows a key's id can send wrong secrets from a network: were failed attempts in the
// history, a later use of a leaked secret from there would raise no key.new_ip (a mutation review
// found no test held it).
t.test('failed attempts put no network in the history: a use from there later is still new', async (t) => {
  const { useFrom, prefixes, newIps } = await flushEachLine(t);
  await useFrom('192.0.2.1');
  for (let attempt = 0; attempt < 3; attempt += 1) await useFrom('198.51.100.7', 'bad_secret');
  t.strictSame(await prefixes(), ['192.0.2.0/24'], 'only the proven use');
  await useFrom('198.51.100.8');
  t.strictSame(await newIps(), ['192.0.2.0/24', '198.51.100.0/24'], 'the first proven use from there is new');
});

t.test('key.new_ip: at most EVENTS_NEW_IP_PER_KEY_HOUR a clock hour per key; the sweep raises the others in an hour with room', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000', EVENTS_NEW_IP_PER_KEY_HOUR: '2' });
  // The first flushes' lines in the clock hour before this one, by their own timestamps.
  const seconds = await secondInThePreviousHour();
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1 }); // used before: no key.first_use
  let lines = 0;
  const flushUsesFrom = async (networks: number[], timestamped = true) => {
    const line = (n: number, i: number) =>
      `${encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: `198.51.${n}.1`, outcome: 'ok', count: 1 })}${timestamped ? `|T${seconds - i}` : ''}`;
    await sendDatagrams(collector.receiver.port, networks.map(line));
    lines += networks.length;
    await waitFor('the lines', () => (collector.ingest.usageLines === lines ? true : undefined));
    await collector.flusher.flush();
  };
  const history = async () =>
    (
      await db('api_key_ip_history')
        .where({ key_id: adminKeyId })
        .orderBy('prefix')
        .select(db.raw('cast(prefix as text) as prefix'), db.raw('event_due_at is not null as due'))
    ).map((r) => [r.prefix, r.due]);
  const newIps = async () => (await eventsOf(db, adminKeyId)).filter((e) => e.type === 'key.new_ip').map((e) => [e.occurred_at.getTime(), e.details]);
  await flushUsesFrom([3, 2, 1]); // first seen at seconds, - 1, - 2: network 1 the earliest, though sent last
  await flushUsesFrom([4]);
  t.strictSame(
    await newIps(),
    [
      [(seconds - 2) * 1000, { ip: '198.51.1.1', prefix: '198.51.1.0/24' }],
      [(seconds - 1) * 1000, { ip: '198.51.2.1', prefix: '198.51.2.0/24', hourlyLimitReached: 2 }],
    ],
    'the earliest two, at their timestamps; none in the second flush',
  );
  const pending = [
    ['198.51.1.0/24', false],
    ['198.51.2.0/24', false],
    ['198.51.3.0/24', true],
    ['198.51.4.0/24', true],
  ];
  t.strictSame(await history(), pending, 'the networks over the limit are kept, their events pending');
  await flushUsesFrom([3], false); // used again this hour: known, so no event from the flush
  // A new network in this hour, which has room: it queues behind the two waiting (fails without the fix).
  await flushUsesFrom([5], false);
  t.equal((await newIps()).length, 2);
  t.strictSame(await history(), [...pending, ['198.51.5.0/24', true]], 'the new network waits behind the older ones');
  const sweptAt = Date.now();
  await collector.sweep.sweep();
  const deferred = (await newIps()).slice(2).sort(([, a], [, b]) => a.prefix.localeCompare(b.prefix));
  const firstSeen = (i: number) => new Date((seconds - i) * 1000).toISOString();
  t.strictSame(
    deferred.map(([, details]) => details),
    [
      { ip: '198.51.3.1', prefix: '198.51.3.0/24', firstSeen: firstSeen(0), deferred: true },
      { ip: '198.51.4.1', prefix: '198.51.4.0/24', firstSeen: firstSeen(0), deferred: true, hourlyLimitReached: 2 },
    ],
    'the sweep raises them in this hour',
  );
  t.ok(
    deferred.every(([at]) => (at as number) >= sweptAt - 1000),
    'occurring at the sweep',
  );
  t.strictSame(
    await history(),
    [...pending.map(([prefix]) => [prefix, false]), ['198.51.5.0/24', true]],
    'no longer pending; the newest waits for the next hour with room',
  );
  await collector.sweep.sweep();
  t.equal((await newIps()).length, 4, 'raised once');
  t.equal(collector.sweep.stats.failedSweeps, 0);
});

// Each collector writes its flush directly: the first use is the one whose flush commits first. The
// other collector's later flush held a use dated 30 s before it, which raised key.new_ip dated
// before the key.first_use (fails without the fix); one first used past the span still raises it.
t.test("two collectors writing directly: the later flush's networks of uses before the first use are its own", async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const { key } = await api.services.apiKeys.create(org.id, { name: 'fresh', scopes: ['keys:read'], expiresAt: null });
  const env = { COLLECTOR_FLUSH_INTERVAL_MS: '600000', COLLECTOR_USAGE_LOG: 'false' };
  const [a, b] = [await startTestCollector(t, url, env), await startTestCollector(t, url, env)];
  // Within the window of |T; the span of a first use is the flush interval, 600 s.
  const firstUse = Math.floor(Date.now() / 1000) - 1200;
  const use = (ip: string, seconds: number) => `${encodeUsageLine({ keyId: key.id, orgId: org.id, ip, outcome: 'ok', count: 1 })}|T${seconds}`;
  await sendDatagrams(a.receiver.port, [use('203.0.113.9', firstUse)]);
  await sendDatagrams(b.receiver.port, [use('198.51.100.7', firstUse - 30), use('192.0.2.5', firstUse + 700)]);
  await waitFor('both collectors to receive their uses', () => (a.ingest.usageLines === 1 && b.ingest.usageLines === 2 ? true : undefined));
  t.ok(await a.flusher.flush(), 'A flushes first');
  t.ok(await b.flusher.flush(), 'then B');
  t.strictSame(
    (await eventsOf(db, key.id)).map((e) => [e.type, e.occurred_at.getTime(), e.details]),
    [
      ['key.first_use', firstUse * 1000, { ip: '203.0.113.9' }],
      ['key.new_ip', (firstUse + 700) * 1000, { ip: '192.0.2.5', prefix: '192.0.2.0/24' }],
    ],
    'no key.new_ip for 198.51.100.7, used before the first use',
  );
});

// A forged line dated (|T) into the first use's interval, sent after it, was that use's own: its
// network went into the history with no key.new_ip, and later uses from it raised none (a review
// of the collector as an attacker, 2026-12-08; fails without the fix).
t.test("a line dated into the first use's interval, arriving later, raises key.new_ip for its network", async (t) => {
  const system = await wiredSystem(t);
  const { db, org, collector } = system;
  const key = await createKey(system, 'victim');
  await whoami(system, key.key, 1);
  await settle(system);
  const [firstUse] = await eventsOf(db, key.id);
  t.equal(firstUse?.type, 'key.first_use');
  // Recorded 31 s before: past the 30 s in which another collector's late write is still its own.
  await db('key_events')
    .where({ key_id: key.id, type: 'key.first_use' })
    .update({ created_at: db.raw("created_at - interval '31 seconds'") });
  const line = (ip: string, seconds?: number) =>
    `${encodeUsageLine({ keyId: key.id, orgId: org.id, ip, outcome: 'ok', count: 1 })}${seconds === undefined ? '' : `|T${seconds}`}`;
  const received = collector.ingest.usesReceived;
  await sendDatagrams(collector.receiver.port, [line('203.0.113.7', Math.floor(firstUse.occurred_at.getTime() / 1000)), line('198.51.100.7')]);
  await waitFor('the forged lines to arrive', () => (collector.ingest.usesReceived >= received + 2 ? true : undefined));
  await collector.flusher.flush();
  await collector.flusher.flush();
  const newIps = (await eventsOf(db, key.id)).filter((e) => e.type === 'key.new_ip').map((e) => e.details.prefix);
  t.strictSame(newIps.sort(), ['198.51.100.0/24', '203.0.113.0/24'], 'the dated network is new, as the undated one is');
});

t.test('retention deletes old events only', async (t: Test) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const now = Date.parse('2026-12-01T00:00:00Z');
  // Kept a day past the 90 days (the collectors' clocks' margin, collector/eventStore.ts).
  await db('key_events').insert([
    { org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: new Date(now - 92 * DAY), details: {}, dedupe_key: 'old' },
    { org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: new Date(now - 90.5 * DAY), details: {}, dedupe_key: 'kept' },
  ]);
  const [hook] = await db('webhooks')
    .insert({ org_id: org.id, url: 'https://203.0.113.10/hook', event_types: ['*'], secret_box: Buffer.alloc(32) })
    .returning('id');
  const delivery = (status: string, daysAgo: number) => ({
    webhook_id: hook.id,
    org_id: org.id,
    event_id: randomUUID(),
    event_type: 'key.new_ip',
    payload: { details: { ip: '203.0.113.7' } },
    status,
    created_at: new Date(now - daysAgo * DAY),
  });
  // The trigger has queued deliveries of the two events above; these are the ones that matter here.
  await db('webhook_deliveries').del();
  await db('webhook_deliveries').insert([delivery('succeeded', 91), delivery('failed', 91), delivery('pending', 91), delivery('succeeded', 89)]);
  const { expireOldEvents } = await import('../collector/eventStore');
  await expireOldEvents(db, new Date(now), 90);
  t.strictSame(
    (await db('key_events').select('dedupe_key')).map((r) => r.dedupe_key),
    ['kept'],
  );
  t.strictSame(
    (await db('webhook_deliveries').orderBy('created_at').select('status')).map((r) => r.status),
    ['failed', 'succeeded'],
    'finished deliveries, with the IPs their payloads copy, go with the events; a pending one is failed, deleted at the next run',
  );
});

// The hour's first key.outside_networks silenced every other one of the hour, even after the
// operator fixed the list: a use outside the new list 25 minutes later raised nothing until the
// next hour (a review; fails without the fix). The collector's clock stands still, so every use is
// in one hour.
t.test('a PATCH of the expected networks re-arms key.outside_networks within the hour', async (t) => {
  const clock = Date.now();
  const system = await wiredSystem(t, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' }, { now: () => clock });
  const key = await createKey(system, 'moved office', { expectedNetworks: ['10.0.0.0/8'] });
  await whoami(system, key.key, 2);
  await settle(system);
  const patched = await system.api.request('PATCH', `/api/orgs/${system.org.id}/api-keys/${key.id}`, {
    key: system.adminKey,
    body: { expectedNetworks: ['127.0.0.0/24'] },
  });
  t.equal(patched.status, 200);
  await whoami(system, key.key, 2);
  await whoami(system, key.key, 2, SECOND_NETWORK);
  await settle(system);
  const outside = (await eventsOf(system.db, key.id)).filter((e) => e.type === 'key.outside_networks');
  t.strictSame(
    outside.map((e) => e.details),
    [
      { ips: ['127.0.0.1'], expectedNetworks: ['10.0.0.0/8'] },
      { ips: [SECOND_NETWORK], expectedNetworks: ['127.0.0.0/24'] },
    ],
    'the use outside the fixed list is named, in the same hour',
  );
  t.equal(new Set(outside.map((e) => Math.floor(e.occurred_at.getTime() / HOUR))).size, 1, 'one clock hour');
});
