import t from 'tap';
import { createDb, MIGRATION_CONFIG } from '../shared/db';
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
