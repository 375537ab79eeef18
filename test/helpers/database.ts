import { randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { createScratchDatabase } from '../../harness/postgres';
import { createDb, MIGRATION_CONFIG, type Db } from '../../shared/db';
import { HOUR_TABLES, hourBuckets } from '../../shared/tables';
import { OUTCOMES } from '../../shared/usageWire';
import { waitFor } from '../../harness/wait';
import { lockOrgFor } from '../../api/orgs/orgs.repository';

export const TEMPLATE_DATABASE = 'keyusage_test_template';

export function adminDatabaseUrl(): string {
  const url = process.env.TEST_ADMIN_DATABASE_URL;
  if (!url) throw new Error('TEST_ADMIN_DATABASE_URL is not set: run tests through `npm test -- <file>`');
  return url;
}

/** `npm run test:citus`: every test shares one distributed database (freshDatabase). */
export const onCitus = (): boolean => Boolean(process.env.TEST_SHARED_DATABASE_URL);

// Every test gets its own database, copied from the migrated template, so test files run in
// parallel against one real PostgreSQL without seeing each other's rows.
export async function freshDatabase(t: Test, options: { poolMax?: number } = {}): Promise<{ db: Db; url: string }> {
  // On Citus (npm run test:citus) a copy made with `create database … template` would hold no
  // shards, so every test shares the one database the runner distributed and keeps to its own orgs.
  const shared = process.env.TEST_SHARED_DATABASE_URL;
  if (shared) {
    const db = createDb(shared, { poolMax: options.poolMax ?? 5 });
    t.teardown(() => db.destroy());
    return { db, url: shared };
  }
  const scratch = await createScratchDatabase(adminDatabaseUrl(), `kt_${process.pid}_${randomBytes(4).toString('hex')}`, { template: TEMPLATE_DATABASE });
  const db = createDb(scratch.url, { poolMax: options.poolMax ?? 5 });
  t.teardown(async () => {
    await db.destroy();
    await scratch.drop();
  });
  return { db, url: scratch.url };
}

// A database with nothing in it (no migrations), dropped at the end: for tests of migrate itself.
export async function emptyDatabase(t: Test): Promise<string> {
  const scratch = await createScratchDatabase(adminDatabaseUrl(), `kt_empty_${process.pid}_${randomBytes(4).toString('hex')}`);
  t.teardown(() => scratch.drop());
  return scratch.url;
}

/** Rolls back, newest first, every migration applied after `last`: the schema a previous version ran on. */
export async function migrateDownTo(db: Db, last: string): Promise<void> {
  const [completed] = (await db.migrate.list(MIGRATION_CONFIG)) as [Array<{ name: string }>, unknown];
  for (const { name } of completed.filter((m) => m.name > last).reverse()) await db.migrate.down({ ...MIGRATION_CONFIG, name });
}

const HOUR_COLUMNS = ['org_id', 'key_id', 'hour', 'request_count', ...OUTCOMES.map((outcome) => `${outcome}_count`)].join(', ');

/** The hourly buckets of `keyIds` in both bucket tables (shared/tables.ts), counts as numbers: an hour may have a row in each. */
export async function hourRows(db: Db, keyIds: readonly string[]): Promise<Array<{ org_id: string; key_id: string; hour: Date } & Record<string, number>>> {
  const { rows } = await db.raw(
    `select ${HOUR_COLUMNS} from ${hourBuckets(HOUR_COLUMNS, 'key_id = any(cast(? as uuid[]))')} h order by key_id, hour`,
    HOUR_TABLES.map(() => [...keyIds]),
  );
  return rows.map((row: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(row).map(([column, value]) => [column, column.endsWith('_count') ? Number(value) : value])),
  );
}

/** Resolves once `sessions` sessions of the test's database wait on a lock (the step a race test holds at). */
export const someoneWaitsOnLock = (db: Db, sessions = 1) =>
  waitFor(
    `${sessions} session(s) to wait on a lock`,
    async () => ((await db.raw(`select 1 from pg_locks where not granted`)).rows.length >= sessions ? true : undefined),
    10_000,
    20,
  );

/** A transaction on a connection of its own holding the org's audit lock, for a test to release (commit) once a change waits on it. */
export async function heldAuditLock(t: Test, url: string, orgId: string) {
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const trx = await holder.transaction();
  await lockOrgFor(trx, 'audit', orgId);
  return trx;
}

/**
 * Runs `migration` up (a concurrent index build) while a transaction that wrote (`hold`) is still
 * open, and meanwhile `during` on another connection (lock_timeout 2 s): a concurrent build waits
 * for the open transaction and lets the write through, where a plain CREATE INDEX blocks it.
 * Returns what `during` returned, or its error's message.
 */
export async function migrateBesideWrites<T>(
  t: Test,
  db: Db,
  url: string,
  migration: string,
  hold: (trx: Db) => Promise<unknown>,
  during: (trx: Db) => Promise<T>,
): Promise<T | string> {
  const holder = await db.transaction();
  await hold(holder);
  const migrating = db.migrate.up({ ...MIGRATION_CONFIG, name: migration });
  await waitFor(
    'the build to wait for the open transaction',
    async () => (await db.raw(`select 1 from pg_stat_activity where query ilike 'create index%' and wait_event_type is not null`)).rows[0],
    10_000,
    20,
  );
  const writer = createDb(url, { poolMax: 1 });
  t.teardown(() => writer.destroy());
  const written = await writer
    .transaction(async (trx) => {
      await trx.raw(`set local lock_timeout = '2s'`);
      return during(trx);
    })
    .catch((error: Error) => error.message);
  await holder.commit();
  await migrating;
  return written;
}
