import t from 'tap';
import { createDb, migrateLatest, MIGRATION_CONFIG } from '../shared/db';
import { waitFor } from '../harness/wait';
import { freshDatabase, migrateDownTo } from './helpers/database';

// The previous version's API serves while `npm run migrate` runs (each migration of an upgrade
// commits on its own). A migration that took ACCESS EXCLUSIVE on api_keys before a long scan
// (ALTER TABLE, or dropping a foreign key that references it) held it until its commit: no key
// could be read, so no request authenticated, for as long as the scan took. Here the scan is
// made to wait on a table another session holds, and a key lookup must still be answered.
const cases = [
  { migration: '20261201000010_events.ts', before: '20261201000002_key_events.ts', scanned: 'api_key_recent_ips' },
  { migration: '20261201000080_key_rows_cascade_from_totals.ts', before: '20261201000070_usage_windows_index_only.ts', scanned: 'api_key_recent_ips' },
];

for (const { migration, before, scanned } of cases) {
  t.test(`${migration}: keys can be read while its scan of ${scanned} waits`, async (t) => {
    const { db, url } = await freshDatabase(t, { poolMax: 4 });
    await migrateDownTo(db, before);
    const others = createDb(url, { poolMax: 2 });
    t.teardown(() => others.destroy());
    const held = await others.transaction();
    await held.raw(`lock table ${scanned} in access exclusive mode`);
    const migrating = db.migrate.up({ ...MIGRATION_CONFIG, name: migration });
    await waitFor(
      'a statement of the migration to wait on the held table',
      async () => (await db.raw(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()`)).rows[0],
      10_000,
      20,
    );
    const read = await others
      .transaction(async (trx) => {
        await trx.raw(`set local lock_timeout = '1s'`);
        return (await trx.raw('select count(*) from api_keys')).rows.length;
      })
      .catch((error: Error) => error);
    await held.rollback();
    await migrating;
    t.equal(read, 1, 'the key lookup was answered, not held behind the migration');
  });
}

// A run cut between a migration's COMMIT and knex's record of it (a killed process, a lost
// connection) left it applied but unrecorded: every later run failed applying it again.
t.test('a run that fails recording a migration leaves it unapplied: the next run applies it', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, '20261125000002_api_key_usage.ts');
  await db.raw(`create function refuse_record() returns trigger language plpgsql as $$
    begin if new.name like '20261201000001%' then raise exception 'the record is lost'; end if; return new; end $$`);
  await db.raw('create trigger refuse_record before insert on knex_migrations for each row execute function refuse_record()');
  await t.rejects(migrateLatest(db), /the record is lost/);
  await db.raw('drop trigger refuse_record on knex_migrations');
  const applied = await migrateLatest(db);
  t.equal(applied[0], '20261201000001_proven_uses.ts', 'applied on the next run, not refused as already there');
  t.equal(applied.at(-1), (await db.migrate.list(MIGRATION_CONFIG))[0].at(-1).name, 'and every one after it');
});
