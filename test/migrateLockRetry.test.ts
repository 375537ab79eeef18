import t, { type Test } from 'tap';
import { migrate } from '../scripts/migrate';
import { createDb, MIGRATION_LOCK_TRIES, type Db } from '../shared/db';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../harness/wait';
import { freshDatabase, migrateDownTo } from './helpers/database';

// A migration's ALTER TABLE waiting behind a backup's read (ACCESS SHARE) holds every later query
// of that table behind it, the running API's reads too. So each try waits only
// MIGRATE_LOCK_TIMEOUT_MS, and the migration is tried again after a pause; a run that gave up after
// one wait had to be started again by hand.

const MIGRATION = '20261207000200_webhook_secret_rotation.ts';
const ENV = { NODE_ENV: 'test', MIGRATE_LOCK_TIMEOUT_MS: '100' };
const RETRY = new RegExp(
  `^${MIGRATION} waited MIGRATE_LOCK_TIMEOUT_MS, 100 ms, for a table another session holds; try \\d of ${MIGRATION_LOCK_TRIES} in \\d+ ms`,
);

/** A database lacking MIGRATION, whose table (webhooks) another session reads in an open transaction. */
async function webhooksHeld(t: Test): Promise<{ url: string; db: Db; release: () => Promise<void> }> {
  const { db, url } = await freshDatabase(t);
  await migrateDownTo(db, '20261206000190_webhook_creator.ts');
  const reader = createDb(url, { poolMax: 1 });
  t.teardown(() => reader.destroy());
  const held = await reader.transaction();
  await held.raw('lock table webhooks in access share mode');
  return { url, db, release: async () => void (await held.rollback()) };
}

t.test('npm run migrate: a migration that gave up waiting for a table is tried again, and applied once the table is free', async (t) => {
  const { url, db, release } = await webhooksHeld(t);
  const out: string[] = [];
  const err: string[] = [];
  let released: Promise<void> | undefined;
  const io = {
    out: (line: string) => out.push(line),
    err: (line: string) => {
      err.push(line);
      released ??= release();
    },
  };
  t.equal(await migrate({ ...ENV, DATABASE_URL: url }, io), 0, err.join('\n'));
  await released;
  t.match(err, [RETRY], 'the retry is said, naming the migration');
  t.equal(err.length, 1, 'once');
  t.match(out, [new RegExp(`^Applied \\d+ migration\\(s\\):\\n {2}${MIGRATION}`)], 'applied, the later migrations after it');
  t.ok(await db.schema.hasColumn('webhooks', 'previous_secret_box'), 'the migration is applied');
});

t.test('npm run migrate: a table held throughout fails the run after MIGRATE_LOCK_TIMEOUT_MS on each try, naming the migration', async (t) => {
  const { url, db, release } = await webhooksHeld(t);
  t.teardown(release);
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (line: string) => out.push(line), err: (line: string) => err.push(line) };
  t.equal(await migrate({ ...ENV, DATABASE_URL: url }, io), 1);
  t.same(out, []);
  const retries = err.slice(0, -1);
  t.equal(retries.length, MIGRATION_LOCK_TRIES - 1, 'each retry said');
  for (const line of retries) t.match(line, RETRY);
  t.match(
    err.at(-1),
    new RegExp(
      `^error: migration failed: ${MIGRATION}: .*lock timeout \\(a migration waited MIGRATE_LOCK_TIMEOUT_MS, 100 ms, for a table another session holds, on each of its ${MIGRATION_LOCK_TRIES} tries`,
    ),
  );
  t.notOk(await db.schema.hasColumn('webhooks', 'previous_secret_box'), 'nothing applied');
});

// A concurrent index build waits, at its end, for every transaction older than it, on any table: with
// each try's short lock_timeout, a collector's flush longer than it failed every try of 120 and 160,
// each after building the whole index. The build waits on no timeout instead; it holds no reader or
// writer behind it.
t.test('npm run migrate: a concurrent index build waits out an older transaction on another table, however many tries that would take', async (t) => {
  const { db, url } = await freshDatabase(t);
  await migrateDownTo(db, '20261202000110_usage_log.ts');
  await db.raw('create table unrelated (x int)');
  const writer = createDb(url, { poolMax: 1 });
  t.teardown(() => writer.destroy());
  const held = await writer.transaction();
  // A snapshot held open (a report, a backup's pg_dump) is what the build waits out.
  await held.raw('set transaction isolation level repeatable read');
  await held.raw('select count(*) from unrelated');
  const err: string[] = [];
  const migrating = migrate({ ...ENV, DATABASE_URL: url }, { out: () => {}, err: (line: string) => err.push(line) });
  await waitFor(
    'the build to wait for the older transaction',
    async () =>
      (
        await db.raw(
          `select 1 from pg_stat_activity where wait_event_type = 'Lock' and query ilike 'create index concurrently%' and datname = current_database()`,
        )
      ).rows[0],
  );
  // Longer than every try's wait and pause together (100 ms a try, pauses doubling from 100 ms).
  await sleep(100 * (2 ** MIGRATION_LOCK_TRIES + MIGRATION_LOCK_TRIES));
  await held.rollback();
  t.equal(await migrating, 0, err.join('\n'));
  t.same(err, [], 'no try gave up');
  const { rows } = await db.raw(`select indisvalid from pg_index where indexrelid = to_regclass('api_keys_created_at_idx')`);
  t.same(rows, [{ indisvalid: true }], 'the index is built, and valid');
});

t.test("npm run migrate: with MIGRATE_LOCK_TIMEOUT_MS 0 the server's lock_timeout ends the one try, and the error says so", async (t) => {
  const { url, db, release } = await webhooksHeld(t);
  t.teardown(release);
  await db.raw("alter database ?? set lock_timeout = '100ms'", [(await db.raw('select current_database() as name')).rows[0].name]);
  const err: string[] = [];
  t.equal(await migrate({ ...ENV, MIGRATE_LOCK_TIMEOUT_MS: '0', DATABASE_URL: url }, { out: () => {}, err: (line: string) => err.push(line) }), 1);
  t.equal(err.length, 1, 'no retry');
  t.match(err[0], /lock timeout \(a migration waited the server's lock_timeout for a table another session holds: /);
  t.notMatch(err[0], /MIGRATE_LOCK_TIMEOUT_MS|tries/, 'no tries or setting that did not take part');
});
