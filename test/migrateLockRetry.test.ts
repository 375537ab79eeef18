import t, { type Test } from 'tap';
import { migrate } from '../scripts/migrate';
import { createDb, MIGRATION_LOCK_TRIES, type Db } from '../shared/db';
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
  t.same(out, [`Applied 1 migration(s):\n  ${MIGRATION}`]);
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
