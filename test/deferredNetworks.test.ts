import t from 'tap';
import { DEFERRED_PER_SWEEP } from '../collector/deferredNetworks';
import { sweepTimeEvents } from '../collector/eventStore';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// The sweep's half of deferred key.new_ip events (the flush's half, end to end: test/events.test.ts).
const HOUR = 3_600_000;
const NOW = Date.parse('2026-12-05T10:30:00Z');
const SWEEP = { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 2 };

// `count` pending networks of the key, 10.<i>.<j>.0/24, first seen a second apart from `firstSeen`.
async function pendingNetworks(db: Db, orgId: string, keyId: string, count: number, firstSeen: number) {
  await db.raw(
    `insert into api_key_ip_history (org_id, key_id, prefix, first_ip, first_seen, last_seen, event_pending)
     select ?, ?, cast('10.' || (i / 256) || '.' || (i % 256) || '.0/24' as cidr), '10.' || (i / 256) || '.' || (i % 256) || '.1', f, f, true
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
const stillPending = async (db: Db, keyId: string) => Number((await db('api_key_ip_history').where({ key_id: keyId, event_pending: true }).count())[0].count);

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
});

t.test(`a sweep reads at most ${DEFERRED_PER_SWEEP} pending networks, earliest first`, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId: flooded } = await seedOrg(api, db);
  const other = (await api.services.apiKeys.create(org.id, { name: 'other', scopes: ['keys:read'], expiresAt: null })).key.id;
  await pendingNetworks(db, org.id, flooded, DEFERRED_PER_SWEEP, NOW - 5 * HOUR);
  await pendingNetworks(db, org.id, other, 1, NOW - HOUR);
  t.strictSame(await sweepTimeEvents(db, new Date(NOW), SWEEP), { dormant: 0, expiring: 0, newIp: 2 }, "the flooded key's two");
  t.equal(await stillPending(db, other), 1, 'the later network waits for the next sweep…');
  t.strictSame(await sweepTimeEvents(db, new Date(NOW + 60_000), SWEEP), { dormant: 0, expiring: 0, newIp: 1 }, '…which reads past the two raised');
  t.strictSame(await newIps(db, other), [[NOW + 60_000, '10.0.0.0/24', undefined]]);
});
