import t from 'tap';
import { createDb, migrateLatest, MIGRATION_CONFIG, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { freshDatabase, migrateDownTo } from './helpers/database';

// The previous version's API serves while `npm run migrate` runs (each migration of an upgrade
// commits on its own). A migration that locked api_keys before a long scan held the lock until its
// commit: ACCESS EXCLUSIVE (ALTER TABLE, or dropping a foreign key that references it) stopped every
// key read, so no request authenticated; SHARE ROW EXCLUSIVE (creating a foreign key that
// references it) stopped every key create, rotation and revocation. Here the scan is made to wait
// on a table another session holds, and a key lookup and a revocation must still be answered.
const cases = [
  { migration: '20261201000010_events.ts', before: '20261201000002_key_events.ts', scanned: 'api_key_recent_ips' },
  { migration: '20261201000080_key_rows_cascade_from_totals.ts', before: '20261201000070_usage_windows_index_only.ts', scanned: 'api_key_recent_ips' },
];

for (const { migration, before, scanned } of cases) {
  t.test(`${migration}: keys can be read and revoked while its scan of ${scanned} waits`, async (t) => {
    const { db, url } = await freshDatabase(t, { poolMax: 4 });
    await migrateDownTo(db, before);
    const keyId = await insertKey(db);
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
    const read = await rowsWithoutWaiting(others, 'select count(*) from api_keys');
    const revoked = await rowsWithoutWaiting(others, 'update api_keys set revoked_at = now() where id = ?', [keyId]);
    await held.rollback();
    await migrating;
    t.equal(read, 1, 'the key lookup was answered, not held behind the migration');
    t.equal(revoked, 1, "the key's revocation went through, not held behind the migration");
  });
}

/** A key as the previous version's API created it. */
async function insertKey(db: Db): Promise<string> {
  const [org] = (await db.raw(`insert into organizations (name) values ('locks') returning id`)).rows;
  const [key] = (
    await db.raw(
      `insert into api_keys (id, org_id, name, display_prefix, secret_hash, scopes)
       values (gen_random_uuid(), ?, 'locks', 'ku_locks', '\\x00', '{keys:read}') returning id`,
      [org.id],
    )
  ).rows;
  return key.id;
}

/** The rows `sql` returned or changed, or the error of a wait for a lock the migration holds. */
function rowsWithoutWaiting(db: Db, sql: string, bindings: readonly string[] = []): Promise<number | Error> {
  return db
    .transaction(async (trx) => {
      await trx.raw(`set local lock_timeout = '1s'`);
      return (await trx.raw(sql, bindings)).rowCount;
    })
    .catch((error: Error) => error);
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
