import t from 'tap';
import { waitFor } from '../harness/wait';
import { createDb, MIGRATION_CONFIG, type Db } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261206000190 backfills each webhook's creator from the audit log. Its ADD COLUMN's ACCESS
// EXCLUSIVE lock on webhooks lasted, in one transaction, through that scan of the whole audit log:
// the previous version, serving beside the migration, could not read a webhook (the outbox
// trigger reads them for every key event) until it ended. Here the scan is made to wait on the
// audit log another session holds, and webhooks must still be read and locked as the trigger does.

const MIGRATION = '20261206000190_webhook_creator.ts';

t.test(`${MIGRATION}: webhooks can be read while its scan of audit_log waits`, async (t) => {
  const { db, url } = await freshDatabase(t, { poolMax: 4 });
  await migrateDownTo(db, '20261205000180_outbox_trigger_locks_webhooks.ts');
  const others = createDb(url, { poolMax: 2 });
  t.teardown(() => others.destroy());
  const held = await others.transaction();
  await held.raw('lock table audit_log in access exclusive mode');
  const migrating = db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  await waitFor(
    'a statement of the migration to wait on the held table',
    async () => (await db.raw(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()`)).rows[0],
    10_000,
    20,
  );
  const read = await answerOrError(others, 'select count(*) from webhooks');
  const locked = await answerOrError(others, 'select id from webhooks for key share');
  await held.rollback();
  await migrating;
  t.same([read, locked], ['answered', 'answered'], 'a read, and a read locking rows as the outbox trigger does, were not held behind the migration');
  t.ok(await db.schema.hasColumn('webhooks', 'created_by_key_id'), 'and the migration was applied');
});

/** 'answered', or the error of a wait for a lock the migration holds. */
function answerOrError(db: Db, sql: string): Promise<string | Error> {
  return db
    .transaction(async (trx) => {
      await trx.raw(`set local lock_timeout = '1s'`);
      await trx.raw(sql);
      return 'answered';
    })
    .catch((error: Error) => error);
}
