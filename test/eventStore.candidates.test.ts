// Detection reads the facts of only the keys that could raise an event: at 100 k keys used from
// known networks below every threshold, reading every key's facts cost the flush their transfer,
// their parsing and a pass of the rules over each, to raise nothing.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator } from '../collector/aggregator';
import { recordedRooms, recordedRoomsSql } from '../collector/eventBudget';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import type { Outcome } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

type Use = { keyId: string; ip: string; outcome: Outcome; count: number; timestamp?: number };

// One clock for every flush: the busy key's hour must not end between two of them.
const NOW = Date.now();

async function flush(store: UsageStore, orgId: string, uses: readonly Use[]) {
  const aggregator = new Aggregator({ maxKeys: 10, now: () => NOW });
  for (const use of uses) aggregator.add({ ...use, orgId });
  const result = await store.write([{ id: randomUUID(), batch: aggregator.drain() }]);
  return { candidates: result.eventCandidates, events: result.eventsRecorded };
}

t.test('detection reads the keys that may raise an event, and only those', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const create = async (name: string, expectedNetworks: string[] | null = null) =>
    (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null, expectedNetworks })).key.id;
  const [quiet, revoked, lapsed, fenced, roaming, busy, guessed] = [
    await create('quiet'),
    await create('revoked'),
    await create('lapsed'),
    await create('fenced', ['192.0.2.0/24']),
    await create('roaming'),
    await create('busy'),
    await create('guessed'),
  ];
  const events = { ...loadConfig({ NODE_ENV: 'development' }).collector.events, spikeMinUses: 5, failedAttemptsPerHour: 3 };
  const store = createPgUsageStore(db, { events });
  const once = (keyId: string, ip = '192.0.2.1'): Use => ({ keyId, ip, outcome: 'ok', count: 1 });
  const everyKey = [quiet, revoked, lapsed, fenced, roaming, busy, guessed].map((keyId) => once(keyId));

  // The roaming key's first use a minute before the clock: a network first used within a flush
  // interval of it, as its new one would be at NOW, is the first use's own.
  const firstUses = everyKey.map((use) => (use.keyId === roaming ? { ...use, timestamp: NOW - 60_000 } : use));
  t.same(await flush(store, org.id, firstUses), { candidates: 7, events: 7 }, 'a first use: every key');
  t.same(await flush(store, org.id, everyKey), { candidates: 1, events: 0 }, 'used again alike: only the key with expected networks');
  t.same(
    await flush(store, org.id, [
      once(quiet),
      { ...once(revoked), outcome: 'revoked' },
      { ...once(lapsed), outcome: 'expired' },
      once(fenced),
      once(roaming, '198.51.100.1'),
      { ...once(busy), count: 5 },
      { ...once(guessed), outcome: 'bad_secret', count: 3 },
    ]),
    { candidates: 6, events: 4 },
    'a revoked and an expired use, a new network, a busy hour and failed attempts: those keys and the fenced one',
  );
  t.same(
    await flush(store, org.id, everyKey),
    { candidates: 2, events: 0 },
    "the busy key's hour stays over the spike floor; the failed attempts do not repeat",
  );
  const types = await db('key_events').whereNot({ type: 'key.first_use' }).orderBy('type').pluck('type');
  t.same(types, ['key.expired_used', 'key.failed_attempts', 'key.new_ip', 'key.revoked_used'], 'the events the candidates raised');
});

// One org's keys raised events without bound, each a delivery per webhook, in the flush every org
// shares (fails without EVENTS_MAX_PER_ORG_HOUR: five first uses, five deliveries).
t.test("an org's events stop at EVENTS_MAX_PER_ORG_HOUR in a clock hour, with one event saying so; other orgs keep theirs", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const busy = await seedOrg(api, db, 'busy');
  const other = await seedOrg(api, db, 'other');
  const create = async (orgId: string, count: number) =>
    Promise.all(
      Array.from(
        { length: count },
        async (_, i) => (await api.services.apiKeys.create(orgId, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null, expectedNetworks: null })).key.id,
      ),
    );
  const [busyKeys, otherKeys] = [await create(busy.org.id, 7), await create(other.org.id, 2)];
  await db('webhooks').insert({ org_id: busy.org.id, url: 'https://203.0.113.12/hook', event_types: ['*'], secret_box: Buffer.alloc(32) });
  const events = { ...loadConfig({ NODE_ENV: 'development' }).collector.events, maxPerOrgHour: 3 };
  const store = createPgUsageStore(db, { events });
  const firstUses = (orgId: string, keyIds: string[]) =>
    keyIds.map((keyId): Use & { orgId: string } => ({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 }));
  const write = async (uses: Array<Use & { orgId: string }>) => {
    const aggregator = new Aggregator({ maxKeys: 20, now: () => NOW });
    for (const use of uses) aggregator.add(use);
    return (await store.write([{ id: randomUUID(), batch: aggregator.drain() }])).eventsRecorded;
  };
  t.equal(
    await write([...firstUses(busy.org.id, busyKeys.slice(0, 5)), ...firstUses(other.org.id, otherKeys)]),
    6,
    "three of the busy org's five, the limit's event, the other org's two",
  );
  const typesOf = async (orgId: string) => db('key_events').where({ org_id: orgId }).orderBy('type').pluck('type');
  t.same(await typesOf(busy.org.id), ['key.first_use', 'key.first_use', 'key.first_use', 'org.event_limit_reached']);
  t.same(await typesOf(other.org.id), ['key.first_use', 'key.first_use']);
  const [limit] = await db('key_events').where({ org_id: busy.org.id, type: 'org.event_limit_reached' });
  t.match(limit.details, { room: 'routine', limit: 3, heldBack: { 'key.first_use': 2 } });
  const listed = await api.request('GET', `/api/orgs/${busy.org.id}/api-keys/usage?limit=100`, { key: busy.adminKey });
  t.same(listed.body.data.find((row: { id: string }) => row.id === limit.key_id).events.counts, {}, "the org's limit is not counted as the key's own event");
  const counts = await db('api_key_usage').whereIn('key_id', busyKeys.slice(0, 5)).pluck('request_count');
  t.same(counts.map(Number), [1, 1, 1, 1, 1], 'the uses of every key are recorded, those whose events were held back too');
  t.equal(Number((await db('webhook_deliveries').where({ org_id: busy.org.id }).count())[0].count), 4, "a delivery for each event kept, and the limit's");

  t.equal(await write(firstUses(busy.org.id, busyKeys.slice(5))), 0, 'later in the hour: nothing more, and the limit is said once');
  t.equal((await typesOf(busy.org.id)).length, 4);

  // A revoked key in use raises key.revoked_used once an hour, but is detected again in every
  // flush: counted as new (and first: the most urgent type), the repeats took the room of the
  // expired key's event (fails without the fix).
  const use = (keyId: string, outcome: Outcome): Use & { orgId: string } => ({ keyId, orgId: busy.org.id, ip: '192.0.2.1', outcome, count: 1 });
  t.equal(await write([use(busyKeys[0], 'revoked'), use(busyKeys[1], 'revoked')]), 2, 'the urgent room is its own: two revoked uses raised');
  const again = [use(busyKeys[0], 'revoked'), use(busyKeys[1], 'revoked'), use(busyKeys[2], 'expired'), use(busyKeys[3], 'expired')];
  t.equal(await write(again), 2, 'one expired use fits, then the limit');
  const urgent = await db('key_events').where({ org_id: busy.org.id }).whereIn('type', ['key.revoked_used', 'key.expired_used', 'org.event_limit_reached']);
  t.same(
    urgent.map((e) => [e.type, e.details.room ?? null]).sort(),
    [
      ['key.expired_used', null],
      ['key.revoked_used', null],
      ['key.revoked_used', null],
      ['org.event_limit_reached', 'routine'],
      ['org.event_limit_reached', 'urgent'],
    ],
    'the repeats of the revoked uses did not take the room of an expired one',
  );
});

// A room exactly full, then a repeat of one of its events (a revoked key used again in the hour):
// the repeat was held back and raised the limit event, though nothing new was held (fails without the fix).
t.test('a room exactly full raises no limit event for a repeat of an event it has', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const keyIds = [
    (await api.services.apiKeys.create(org.id, { name: 'a', scopes: ['keys:read'], expiresAt: null, expectedNetworks: null })).key.id,
    (await api.services.apiKeys.create(org.id, { name: 'b', scopes: ['keys:read'], expiresAt: null, expectedNetworks: null })).key.id,
  ];
  const events = { ...loadConfig({ NODE_ENV: 'development' }).collector.events, maxPerOrgHour: 2 };
  const store = createPgUsageStore(db, { events });
  const revoked = (ids: string[]) =>
    flush(
      store,
      org.id,
      ids.map((keyId) => ({ keyId, ip: '192.0.2.1', outcome: 'revoked', count: 1 })),
    );
  t.match(await revoked(keyIds), { events: 4 }, 'two revoked uses and two first uses: both rooms of two, full');
  t.match(await revoked([keyIds[0]]), { events: 0 }, 'the same revoked use again: nothing new, no limit event');
  t.same(await db('key_events').where({ org_id: org.id, type: 'org.event_limit_reached' }).pluck('type'), []);
});

// The sweep's events occur at its time: counted in the routine room, a sweep after an outage that
// found thousands of keys dormant filled the hour's room, and the new networks and first uses of
// that hour were held back (a review; fails without the fix).
t.test("swept events take no room: the hour's count is of the flushes' events", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const hour = Date.UTC(2026, 11, 5, 10);
  const at = (minute: number) => new Date(hour + minute * 60_000);
  await db('key_events').insert([
    { org_id: org.id, key_id: adminKeyId, type: 'key.dormant', occurred_at: at(1), details: {}, dedupe_key: 'd1' },
    { org_id: org.id, key_id: adminKeyId, type: 'key.expiring', occurred_at: at(2), details: {}, dedupe_key: 'e1' },
    { org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: at(3), details: {}, dedupe_key: 'n1' },
  ]);
  const { rows } = await db.raw(recordedRoomsSql('cast(? as uuid[])', 'cast(? as timestamptz)'), [[org.id], new Date(hour)]);
  t.same([...recordedRooms(rows).counts.values()], [1], 'one routine event counted: the new network');
});
