// After a restore to a backup, the events raised since are raised again: their rows, and with them
// their dedupe keys, went back with the database. Webhook receivers deduplicate on the event id
// (docs/webhooks.md), so an event raised again must keep its id (fails with random ids: a second
// key.first_use, "at most once per key", with a new id).
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { Aggregator } from '../collector/aggregator';
import { sweepTimeEvents } from '../collector/eventStore';
import { createPgUsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

const NOW = Date.now();
const DAY = 24 * 3_600_000;

// A name-based UUID of SHA-256 (RFC 9562 UUIDv8): version 8, variant 10.
const NAME_BASED_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// Deleting a key's totals row takes its other rows (migrations/20261201000080): the key as a
// backup made before its first use (or before the sweep) holds it.
const restoreToBefore = (db: Db, keyId: string) => db('api_key_usage').where({ key_id: keyId }).delete();

async function eventOf(db: Db, keyId: string, type: string): Promise<{ id: string; occurred_at: Date }> {
  const rows = await db('key_events').where({ key_id: keyId, type }).select('id', 'occurred_at');
  if (rows.length !== 1) throw new Error(`${rows.length} ${type} events of ${keyId}`);
  return rows[0];
}

async function setup(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const create = async (name: string) =>
    (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null, expectedNetworks: null })).key.id;
  const store = createPgUsageStore(db, { events: loadConfig({ NODE_ENV: 'development' }).collector.events });
  /** One flush of a use of each key at `at` (from 192.0.2.1, or `ip`). */
  const useFrom = async (ip: string, at: number, ...keyIds: string[]) => {
    const aggregator = new Aggregator({ maxKeys: 10, now: () => at });
    for (const keyId of keyIds) aggregator.add({ orgId: org.id, keyId, ip, outcome: 'ok', count: 1, timestamp: at });
    await store.write([{ id: randomUUID(), batch: aggregator.drain() }]);
  };
  const use = (at: number, ...keyIds: string[]) => useFrom('192.0.2.1', at, ...keyIds);
  return { db, create, use, useFrom };
}

t.test('key.first_use raised again after a restore has the same id; two keys have two', async (t) => {
  const { db, create, use } = await setup(t);
  const [first, second] = [await create('first'), await create('second')];

  await use(NOW, first, second);
  const before = await eventOf(db, first, 'key.first_use');
  t.match(before.id, NAME_BASED_UUID, 'a name-based id');
  t.not((await eventOf(db, second, 'key.first_use')).id, before.id, "another key's first use has another id");

  await restoreToBefore(db, first);
  await use(NOW + 60_000, first);
  const after = await eventOf(db, first, 'key.first_use');
  t.not(after.occurred_at.getTime(), before.occurred_at.getTime(), 'raised again, by the later use');
  t.equal(after.id, before.id, 'with the id receivers saw the first time');
});

t.test('key.dormant swept again after a restore has the same id', async (t) => {
  const { db, create } = await setup(t);
  const idle = await create('idle');
  await db('api_keys')
    .where({ id: idle })
    .update({ created_at: new Date(NOW - 100 * DAY) });
  const sweep = () => sweepTimeEvents(db, new Date(NOW), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });

  t.match(await sweep(), { dormant: 1 });
  const before = await eventOf(db, idle, 'key.dormant');
  await restoreToBefore(db, idle);
  t.match(await sweep(), { dormant: 1 }, 'raised again');
  t.equal((await eventOf(db, idle, 'key.dormant')).id, before.id);
});

// Its dedupe key names the network: an id derived from it let anyone who read the id (the events
// list, a webhook payload) find an erased network again by trying the /24s (fails with the id derived).
t.test("a key.new_ip's id is random, not its network's", async (t) => {
  const { db, create, use, useFrom } = await setup(t);
  const roaming = await create('roaming');
  await use(NOW, roaming);
  await useFrom('198.51.100.7', NOW + 3_600_000, roaming);
  const event = await db('key_events').where({ key_id: roaming, type: 'key.new_ip' }).first('id', 'dedupe_key');
  t.match(event?.dedupe_key, /198\.51\.100\.0\/24/, 'raised, its dedupe key naming the network');
  t.notMatch(event?.id, NAME_BASED_UUID, 'its id is not a name-based one');
});
