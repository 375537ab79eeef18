// Deleting a key or an organization by SQL (an operator's act: the application revokes keys, it
// never deletes them) removes every row of its usage, IPs, IP history and events, although those
// tables have no foreign key to api_keys (migrations/20261201000080): the key's totals row carries
// them. Runs under `npm run test:citus` too (scripts/citus/test.ts), where the cascade crosses from
// the reference table api_keys to the org's shards.
import { randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator } from '../collector/aggregator';
import { sweepTimeEvents } from '../collector/eventStore';
import { moveClosedHours } from '../collector/hourMove';
import { createPgUsageStore } from '../collector/usageStore';
import { waitFor } from '../harness/wait';
import { loadConfig } from '../shared/config';
import { migrateLatest, type Db } from '../shared/db';
import { TABLE } from '../shared/tables';
import { freshDatabase, migrateDownTo, onCitus } from './helpers/database';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const ROW_TABLES = [TABLE.usage, TABLE.usageHourly, TABLE.usageCurrentHours, TABLE.recentIps, TABLE.failedIps, TABLE.ipHistory, TABLE.keyEvents] as const;
const detection = () => loadConfig({ NODE_ENV: 'development' }).collector.events;

async function createOrg(db: Db, name: string): Promise<string> {
  const [org] = await db(TABLE.organizations).insert({ name }).returning('id');
  return org.id;
}

async function createKey(db: Db, orgId: string, createdAt = new Date()): Promise<string> {
  const id = randomUUID();
  await db(TABLE.apiKeys).insert({
    id,
    org_id: orgId,
    name: 'k',
    display_prefix: 'ku_test',
    secret_hash: randomBytes(32),
    scopes: ['keys:read'],
    created_at: createdAt,
  });
  return id;
}

type Key = { orgId: string; keyId: string };

/** Row counts of `key` in every table that holds rows of a key, by table. */
async function rowsOf(db: Db, { orgId, keyId }: Key, tables: readonly string[] = ROW_TABLES): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const table of tables) {
    const [row] = await db(table).where({ org_id: orgId, key_id: keyId }).count({ n: '*' });
    counts[table] = Number(row.n);
  }
  return counts;
}

const none = Object.fromEntries(ROW_TABLES.map((table) => [table, 0]));

// One proven use from a new address (totals, hour, recent IP, history, key.first_use) and one
// wrong secret (failed IP) per key, flushed with event detection on as the collector does.
async function flushUses(db: Db, keys: readonly Key[]) {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => Date.now() });
  for (const [i, k] of keys.entries()) {
    aggregator.add({ ...k, ip: `192.0.2.${i + 1}`, outcome: 'ok', count: 3 });
    aggregator.add({ ...k, ip: `198.51.100.${i + 1}`, outcome: 'bad_secret', count: 1 });
  }
  return createPgUsageStore(db, { events: detection() }).write([{ id: randomUUID(), batch: aggregator.drain() }]);
}

t.test('deleting a key, then its organization, by SQL removes every row of theirs and nobody else’s', async (t) => {
  const { db } = await freshDatabase(t);
  const acme = await createOrg(db, 'acme');
  const globex = await createOrg(db, 'globex');
  const deleted: Key = { orgId: acme, keyId: await createKey(db, acme) };
  const sibling: Key = { orgId: acme, keyId: await createKey(db, acme) };
  const other: Key = { orgId: globex, keyId: await createKey(db, globex) };
  // Never used, created long ago: the sweep records key.dormant for it, its only row.
  const idle: Key = { orgId: acme, keyId: await createKey(db, acme, new Date(Date.now() - 100 * DAY)) };

  const forged: Key = { orgId: globex, keyId: deleted.keyId };
  const written = await flushUses(db, [deleted, sibling, other, forged]);
  t.equal(written.unknownKeys, 1, 'a line naming a key under another org is dropped');
  t.strictSame(await rowsOf(db, forged), none, 'and writes nothing under that org');
  // The first flush's hour moved to the hourly table, the next flush's uses back in the current one.
  await moveClosedHours(db, new Date(Date.now() + 2 * HOUR));
  await flushUses(db, [deleted, sibling, other]);
  await sweepTimeEvents(db, new Date(), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });
  for (const key of [deleted, sibling, other]) {
    const rows = await rowsOf(db, key);
    t.ok(
      Object.values(rows).every((n) => n > 0),
      `before: the key has rows in every table (${JSON.stringify(rows)})`,
    );
  }
  t.match(await rowsOf(db, idle), { [TABLE.keyEvents]: 1 }, 'before: the idle key has its key.dormant event');

  await db(TABLE.apiKeys).where({ id: deleted.keyId }).delete();
  await db(TABLE.apiKeys).where({ id: idle.keyId }).delete();
  t.strictSame(await rowsOf(db, deleted), none, 'the deleted key has no row left');
  t.strictSame(await rowsOf(db, idle), none, 'nor the idle key, whose only row was an event');
  t.ok((await rowsOf(db, sibling))[TABLE.keyEvents] > 0, 'the other key of the org keeps its rows');

  await db(TABLE.organizations).where({ id: acme }).delete();
  t.strictSame(await rowsOf(db, sibling), none, 'deleting the org removes the rows of its keys');
  t.ok(
    Object.values(await rowsOf(db, other)).every((n) => n > 0),
    'another org keeps every row',
  );
});

// The flush read the key as existing, then an operator deleted it before the flush wrote: the
// flush's totals upsert waits for the DELETE, finds the key gone, and sets the key aside; nothing
// of it is written. (Plain PostgreSQL only: on Citus the lock wait happens on a worker.)
t.test('a key deleted while a flush is writing it leaves no row behind', { skip: onCitus() && 'the lock wait is on a worker' }, async (t) => {
  const { db } = await freshDatabase(t);
  const acme = await createOrg(db, 'acme');
  const key: Key = { orgId: acme, keyId: await createKey(db, acme) };
  await flushUses(db, [key]);

  const operator = await db.transaction();
  await operator(TABLE.apiKeys).where({ id: key.keyId }).delete();
  const writing = flushUses(db, [key]);
  await waitFor('the flush to wait for the DELETE', async () => {
    const { rows } = await db.raw(`select 1 from pg_locks where not granted and pid <> pg_backend_pid()`);
    return rows.length > 0 ? true : undefined;
  });
  await operator.commit();
  const result = await writing;
  t.strictSame(
    result.quarantined.map((q) => [q.keyId, q.deleted]),
    [[key.keyId, true]],
    'the key is quarantined, as deleted (nothing of it is kept)',
  );
  t.strictSame(await rowsOf(db, key), none, 'no row of the deleted key is left');
  t.strictSame(await rowsOf(db, key, [TABLE.usageSetAside]), { [TABLE.usageSetAside]: 0 }, 'nor its uses kept for a requeue');
});

// A rolling deploy: the previous version's data, then migration 080. A key that was never used but
// has an event (the sweep's key.dormant) had no totals row for the delete trigger to hang on; the
// migration gives it one, so its rows still go with it.
t.test(
  'migration 080 on the previous version’s data: every key with rows gets a totals row to carry them',
  { skip: onCitus() && 'the runner distributes the migrated tables; a rollback would undo that' },
  async (t) => {
    const { db } = await freshDatabase(t);
    const acme = await createOrg(db, 'acme');
    const used: Key = { orgId: acme, keyId: await createKey(db, acme) };
    const idle: Key = { orgId: acme, keyId: await createKey(db, acme, new Date(Date.now() - 100 * DAY)) };
    await flushUses(db, [used]);
    await migrateDownTo(db, '20261201000070_usage_windows_index_only.ts');
    t.equal((await db(TABLE.usageHourly).where({ key_id: used.keyId })).length, 1, 'undoing 100 moved the current hour into the hourly table');
    await db(TABLE.keyEvents).insert({ org_id: acme, key_id: idle.keyId, type: 'key.dormant', occurred_at: new Date(), details: {} });
    t.strictSame(await rowsOf(db, idle, [TABLE.usage, TABLE.keyEvents]), { [TABLE.usage]: 0, [TABLE.keyEvents]: 1 }, 'before: an event and no totals row');

    await migrateLatest(db);
    const [anchor] = await db(TABLE.usage).where({ org_id: acme, key_id: idle.keyId }).select('request_count', 'last_used_at');
    t.strictSame(anchor, { request_count: 0, last_used_at: null }, 'a zero totals row: still never used');
    await db(TABLE.apiKeys).whereIn('id', [used.keyId, idle.keyId]).delete();
    t.strictSame(await rowsOf(db, used), none, 'the used key has no row left');
    t.strictSame(await rowsOf(db, idle), none, 'nor the idle one');
  },
);
