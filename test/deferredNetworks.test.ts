import t from 'tap';
import type { PoolClient } from 'pg';
import { DEFERRED_PER_SWEEP, markDeferred, planDeferred, raiseDeferred } from '../collector/deferredNetworks';
import { createPgUsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import { sweepTimeEvents } from '../collector/eventStore';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { insertKeys } from '../bench/lib/database';
import { eventIdSql } from '../shared/eventId';

// The sweep's half of deferred key.new_ip events (the flush's half, end to end: test/events.test.ts).
const HOUR = 3_600_000;
const NOW = Date.parse('2026-12-05T10:30:00Z');
const SWEEP = { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 2 };

// The org among those the sweep reads, as a flush that defers one of its networks makes it.
const listOrg = (db: Db, orgId: string) => db('deferred_network_orgs').insert({ org_id: orgId }).onConflict().ignore();

// `count` pending networks of the key, 10.<i>.<j>.0/24, first seen a second apart from `firstSeen`.
async function pendingNetworks(db: Db, orgId: string, keyId: string, count: number, firstSeen: number) {
  await listOrg(db, orgId);
  await db.raw(
    `insert into api_key_ip_history (org_id, key_id, prefix, first_ip, first_seen, last_seen, event_due_at)
     select ?, ?, cast('10.' || (i / 256) || '.' || (i % 256) || '.0/24' as cidr), '10.' || (i / 256) || '.' || (i % 256) || '.1', f, f, f
       from generate_series(0, ? - 1) as i, lateral (select to_timestamp(? / 1000.0 + i) as f) t`,
    [orgId, keyId, count, firstSeen],
  );
}

const newIps = async (db: Db, keyId: string) =>
  (await db('key_events').where({ key_id: keyId, type: 'key.new_ip' }).orderBy('dedupe_key')).map((e) => [
    e.occurred_at.getTime(),
    e.details.prefix,
    e.details.hourlyLimitReached,
  ]);
const stillPending = async (db: Db, keyId: string) =>
  Number((await db('api_key_ip_history').where({ key_id: keyId }).whereNotNull('event_due_at').count())[0].count);

// The key's two key.new_ip events of the hour before NOW: SWEEP's limit reached.
const reachLimit = (db: Db, orgId: string, keyId: string) =>
  db('key_events').insert(
    [1, 2].map((i) => ({ org_id: orgId, key_id: keyId, type: 'key.new_ip', occurred_at: new Date(NOW - i * 1000), details: {}, dedupe_key: `x${i}` })),
  );

t.test('the earliest pending networks, up to the room left in the hour, occurring at the sweep; the others stay pending', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await pendingNetworks(db, org.id, adminKeyId, 3, NOW - 2 * HOUR);
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1 });
  await db('key_events').insert({
    org_id: org.id,
    key_id: adminKeyId,
    type: 'key.new_ip',
    occurred_at: new Date(NOW - 60_000),
    details: {},
    dedupe_key: 'earlier',
  });
  t.strictSame(await sweepTimeEvents(db, new Date(NOW), SWEEP), { dormant: 0, expiring: 0, newIp: 1 });
  t.strictSame((await newIps(db, adminKeyId)).slice(1), [[NOW, '10.0.0.0/24', 2]], 'one recorded this hour + the earliest reach the limit');
  t.equal(await stillPending(db, adminKeyId), 2);
  t.strictSame(await sweepTimeEvents(db, new Date(NOW + 60_000), SWEEP), { dormant: 0, expiring: 0, newIp: 0 }, 'none more this hour');
  t.strictSame(await sweepTimeEvents(db, new Date(NOW + HOUR), SWEEP), { dormant: 0, expiring: 0, newIp: 2 }, 'the next hour has room');
  t.equal(await stillPending(db, adminKeyId), 0);
  // Not derived from the dedupe key, which names the network: an erasure of the key's addresses
  // left the network recoverable from the id (eventStore.ts, INSERT_EVENTS).
  const derived = await db.raw(
    `select count(*) filter (where id = ${eventIdSql('org_id', 'dedupe_key')}) as derived, count(*) as raised from key_events where key_id = ? and dedupe_key like 'key.new_ip:%'`,
    [adminKeyId],
  );
  t.match(derived.rows[0], { derived: '0', raised: '3' }, "no swept key.new_ip's id is its dedupe key's");
});

const dueAt = async (db: Db, keyId: string) =>
  (await db('api_key_ip_history').where({ key_id: keyId }).whereNotNull('event_due_at').select('event_due_at')).map((row) => row.event_due_at.getTime());

// One org's backlog (a key at its limit with more due networks than a sweep reads, earlier than
// every other org's) filled each sweep's window, and each sweep postponed them to the next hour's
// start, ahead of the networks deferred in that hour: the other orgs waited behind it for as many
// hours as it took to pass (fails without the fix).
t.test(`each org with room gets its share of a sweep's ${DEFERRED_PER_SWEEP}: one org's earlier backlog does not hold the others`, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId: flooded } = await seedOrg(api, db);
  const other = await seedOrg(api, db, 'globex');
  await pendingNetworks(db, org.id, flooded, DEFERRED_PER_SWEEP, NOW - 5 * HOUR);
  await pendingNetworks(db, other.org.id, other.adminKeyId, 1, NOW - HOUR);
  await reachLimit(db, org.id, flooded);
  t.strictSame(await sweepTimeEvents(db, new Date(NOW), SWEEP), { dormant: 0, expiring: 0, newIp: 1 }, "the other org's network, in the first sweep");
  t.strictSame(await newIps(db, other.adminKeyId), [[NOW, '10.0.0.0/24', undefined]]);
  const nextHour = NOW - (NOW % HOUR) + HOUR;
  const due = await dueAt(db, flooded);
  t.equal(due.filter((at) => at === nextHour).length, DEFERRED_PER_SWEEP / 2, "the flooded key's share of the sweep, moved to the next hour");
  t.strictSame(await sweepTimeEvents(db, new Date(nextHour), SWEEP), { dormant: 0, expiring: 0, newIp: 2 }, "the next hour: the flooded key's earliest two");
  t.equal(await stillPending(db, flooded), DEFERRED_PER_SWEEP - 2);
});

t.test("an org whose hour is full is not read: its networks stay as they are, every other org's are raised (fails without the fix)", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId: flooded } = await seedOrg(api, db);
  const others = [await seedOrg(api, db, 'globex'), await seedOrg(api, db, 'initech')];
  await pendingNetworks(db, org.id, flooded, DEFERRED_PER_SWEEP + 1, NOW - 5 * HOUR);
  for (const other of others) await pendingNetworks(db, other.org.id, other.adminKeyId, 1, NOW - HOUR);
  await reachLimit(db, org.id, flooded);
  const before = await dueAt(db, flooded);
  const sweep = { ...SWEEP, maxPerOrgHour: 2 };
  t.strictSame(await sweepTimeEvents(db, new Date(NOW), sweep), { dormant: 0, expiring: 0, newIp: 2 }, "both other orgs' networks");
  t.strictSame(await dueAt(db, flooded), before, "none of the full org's rewritten");
  const nextHour = NOW - (NOW % HOUR) + HOUR;
  t.strictSame(await sweepTimeEvents(db, new Date(nextHour), sweep), { dormant: 0, expiring: 0, newIp: 2 }, 'the next hour, the org has room again');
});

// The sweep raised deferred networks up to each key's room alone: 10,000 a sweep, one a minute,
// whatever its org had raised that hour (fails without the org's room in the plan).
t.test("a deferred network waits for the next hour when its org's hour is full, even with its key's room", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const other = await seedOrg(api, db, 'globex');
  await pendingNetworks(db, org.id, adminKeyId, 2, NOW - HOUR);
  await pendingNetworks(db, other.org.id, other.adminKeyId, 1, NOW - HOUR);
  // Another key's first use this hour: the org's routine room of one is full.
  const [busy] = await insertKeys(db, org.id, 1, 'busy');
  await db('api_key_usage').insert({ org_id: org.id, key_id: busy, request_count: 1 });
  await db('key_events').insert({ org_id: org.id, key_id: busy, type: 'key.first_use', occurred_at: new Date(NOW - 60_000), details: {}, dedupe_key: 'first' });
  const sweep = { ...SWEEP, maxPerOrgHour: 1 };
  t.strictSame(await sweepTimeEvents(db, new Date(NOW), sweep), { dormant: 0, expiring: 0, newIp: 1 }, "the other org's network only");
  t.equal(await stillPending(db, adminKeyId), 2, 'left due, not dropped');
  const nextHour = NOW - (NOW % HOUR) + HOUR;
  t.strictSame(await sweepTimeEvents(db, new Date(nextHour), sweep), { dormant: 0, expiring: 0, newIp: 1 }, "the next hour: the org's room of one");
  t.strictSame(await sweepTimeEvents(db, new Date(nextHour + 2 * HOUR), sweep), { dormant: 0, expiring: 0, newIp: 1 }, 'and the last in a later one');
  t.equal(await stillPending(db, adminKeyId), 0);
});

t.test("a key's room goes to its earliest first use, not to the earliest due: a postponed network keeps its place (fails without the fix)", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1 });
  const hourStart = NOW - (NOW % HOUR);
  const nextHour = hourStart + HOUR;
  const waiting = (prefix: string, firstSeen: number, dueAt: number) => ({
    org_id: org.id,
    key_id: adminKeyId,
    prefix,
    first_ip: prefix.replace('0/24', '1'),
    first_seen: new Date(firstSeen),
    last_seen: new Date(firstSeen),
    event_due_at: new Date(dueAt),
  });
  // A real network postponed to the next hour, then forged ones deferred in this hour's last minute.
  await listOrg(db, org.id);
  await db('api_key_ip_history').insert([
    waiting('192.0.2.0/24', hourStart + 60_000, nextHour),
    waiting('10.0.1.0/24', nextHour - 10_000, nextHour - 10_000),
    waiting('10.0.2.0/24', nextHour - 9_000, nextHour - 9_000),
  ]);
  t.strictSame(await sweepTimeEvents(db, new Date(nextHour + 40_000), SWEEP), { dormant: 0, expiring: 0, newIp: 2 });
  t.strictSame(
    (await newIps(db, adminKeyId)).map(([, prefix]) => prefix),
    ['10.0.1.0/24', '192.0.2.0/24'].sort(),
    'the postponed network and the earliest forged one; the other waits',
  );
});

t.test("a network erased or deleted between the sweep's read and its raise raises nothing", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await pendingNetworks(db, org.id, adminKeyId, 2, NOW - HOUR);
  const raised = await db.transaction(async (trx) => {
    const plan = await planDeferred(trx, new Date(NOW), 10);
    t.equal(plan.raise.length, 2);
    await db('api_key_ip_history').where({ key_id: adminKeyId, prefix: '10.0.0.0/24' }).del(); // another connection: key erase-ips
    return raiseDeferred(trx, plan, new Date(NOW), 10);
  });
  t.equal(raised, 1);
  t.strictSame(await newIps(db, adminKeyId), [[NOW, '10.0.1.0/24', undefined]], 'only the network still there');
});

t.test('the history bound keeps the networks whose events are deferred first, the earliest first used first', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await pendingNetworks(db, org.id, adminKeyId, 3, NOW - 2 * HOUR);
  const known = (prefix: string) => ({
    org_id: org.id,
    key_id: adminKeyId,
    prefix,
    first_ip: prefix.replace('0/24', '1'),
    first_seen: new Date(NOW),
    last_seen: new Date(NOW),
  });
  await db('api_key_ip_history').insert([known('192.0.2.0/24'), known('198.51.100.0/24')]);
  const events = { ...loadConfig({ NODE_ENV: 'test' }).collector.events, ipHistoryPerKey: 2 };
  await createPgUsageStore(db, { events }).prune([{ orgId: org.id, keyId: adminKeyId }]);
  const kept = (await db('api_key_ip_history').where({ key_id: adminKeyId }).orderBy('prefix').select(db.raw('cast(prefix as text) as prefix'))).map(
    (row) => row.prefix,
  );
  t.strictSame(kept, ['10.0.0.0/24', '10.0.1.0/24'], 'not the networks seen since, nor the latest deferred');
});

// A key without room this hour had its networks postponed without its totals row locked first: a
// flush (totals row, then the key's history rows) and the sweep could deadlock on the same key.
t.test("the sweep locks a postponed key's totals row before its networks, as a flush does", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await pendingNetworks(db, org.id, adminKeyId, 1, NOW - HOUR);
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1 });
  await reachLimit(db, org.id, adminKeyId);
  const flush = await db.transaction();
  await flush('api_key_usage').where({ org_id: org.id, key_id: adminKeyId }).increment('request_count', 1);
  let swept = false;
  const sweep = sweepTimeEvents(db, new Date(NOW), SWEEP).then((result) => ((swept = true), result));
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.notOk(swept, 'the sweep waits for the flush holding the totals row');
  await flush.commit();
  t.strictSame(await sweep, { dormant: 0, expiring: 0, newIp: 0 }, 'then postpones the network');
  t.equal(await stillPending(db, adminKeyId), 1);
});

// Two flushes listing the same two orgs in deferred_network_orgs for the first time, in opposite
// orders, each waited for the other's insert: the statements go in org id order (fails without it).
t.test("the flush's deferring statements go in org id order, whatever order the networks came in", async (t) => {
  const orgs: string[] = [];
  const connection = { query: async (_sql: string, values: string[]) => void orgs.push(values[0]) };
  const networks = ['c', 'a', 'b', 'a'].map((org) => ({ orgId: `0000000${org}-0000-4000-8000-000000000000`, keyId: `key-${org}`, prefix: '10.0.0.0/24' }));
  t.equal(await markDeferred(connection as unknown as PoolClient, networks), 3);
  t.strictSame(
    orgs.map((org) => org[7]),
    ['a', 'b', 'c'],
  );
});
