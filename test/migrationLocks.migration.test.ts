import t from 'tap';
import { createDb, migrateLatest, MIGRATION_CONFIG, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { freshDatabase, migrateDownTo } from './helpers/database';

// The previous version's API serves while `npm run migrate` runs (each migration of an upgrade
// commits on its own). A migration that locked api_keys before a long scan held the lock until its
// commit: ACCESS EXCLUSIVE (ALTER TABLE, or dropping a foreign key that references it) stopped every
// key read, so no request authenticated; SHARE ROW EXCLUSIVE (creating a foreign key that
// references it) stopped every key create, rotation and revocation. 20261206000190's ADD COLUMN
// held webhooks through its scan of the audit log the same way: no webhook could be read, and the
// outbox trigger reads them for every key event. Here the scan is made to wait on a table another
// session holds, and the previous version's statements must still be answered.

/** A statement of the previous version, and the rows it answers when not held behind the migration. */
type Probe = { what: string; sql: string; bindings: readonly string[]; rows: number };

async function keyProbes(db: Db): Promise<Probe[]> {
  const keyId = await insertKey(db);
  return [
    { what: 'the key lookup was answered', sql: 'select count(*) from api_keys', bindings: [], rows: 1 },
    { what: "the key's revocation went through", sql: 'update api_keys set revoked_at = now() where id = ?', bindings: [keyId], rows: 1 },
  ];
}

const webhookProbes = async (): Promise<Probe[]> => [
  { what: 'a webhook read was answered', sql: 'select count(*) from webhooks', bindings: [], rows: 1 },
  { what: 'a read locking webhooks as the outbox trigger does was answered', sql: 'select id from webhooks for key share', bindings: [], rows: 0 },
];

const cases = [
  { migration: '20261201000010_events.ts', before: '20261201000002_key_events.ts', scanned: 'api_key_recent_ips', probes: keyProbes },
  {
    migration: '20261201000080_key_rows_cascade_from_totals.ts',
    before: '20261201000070_usage_windows_index_only.ts',
    scanned: 'api_key_recent_ips',
    probes: keyProbes,
  },
  { migration: '20261206000190_webhook_creator.ts', before: '20261205000180_outbox_trigger_locks_webhooks.ts', scanned: 'audit_log', probes: webhookProbes },
  // 20261207000240's ADD COLUMN on api_keys, then its read of the audit log's key.create entries.
  { migration: '20261207000240_key_creator.ts', before: '20261207000230_idempotency_resource.ts', scanned: 'audit_log', probes: keyProbes },
];

for (const { migration, before, scanned, probes } of cases) {
  t.test(`${migration}: the previous version is answered while its scan of ${scanned} waits`, async (t) => {
    const { db, url } = await freshDatabase(t, { poolMax: 4 });
    await migrateDownTo(db, before);
    const statements = await probes(db);
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
    const answers: Array<number | Error> = [];
    for (const { sql, bindings } of statements) answers.push(await rowsWithoutWaiting(others, sql, bindings));
    await held.rollback();
    await migrating;
    statements.forEach(({ what, rows }, i) => t.equal(answers[i], rows, `${what}, not held behind the migration`));
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
