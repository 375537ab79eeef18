import t from 'tap';
import { orgsWithDueDeliveries } from '../bench/lib/database';
import { BEFORE_EVERY_ORG, claimDueDeliveries, DUE_ORGS } from '../collector/webhookStore';
import { MIGRATION_CONFIG, migrateLatest, type Db } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261205000160 replaces the due index over next_attempt_at with one over (org_id,
// next_attempt_at), concurrently, on a database whose previous version has deliveries pending.

const MIGRATION = '20261205000160_webhook_deliveries_due_per_org.ts';
const BEFORE = '20261205000150_audit_log_org_sequence.ts';

const indexes = async (db: Db) =>
  (
    await db.raw<{ rows: Array<{ name: string; valid: boolean }> }>(
      `select c.relname as name, i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid
        where i.indrelid = to_regclass('webhook_deliveries') and c.relname like '%due%' order by 1`,
    )
  ).rows;

t.test('on deliveries the previous version left pending: the new index is built, the old one dropped, and back', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  t.same(await indexes(db), [{ name: 'webhook_deliveries_due_idx', valid: true }], 'the previous version had the index over next_attempt_at');
  const orgs = await orgsWithDueDeliveries(db, 3, 4, new Date(Date.now() - 60_000));
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.same(await indexes(db), [{ name: 'webhook_deliveries_org_due_idx', valid: true }]);
  const found = (await db.raw(DUE_ORGS, { limit: 10, after: BEFORE_EVERY_ORG })).rows.map((row: { org_id: string }) => row.org_id);
  t.same(found.sort(), [...orgs].sort(), "every org's pending deliveries are found");
  // Claimed as the collector of this version claims them, on the schema it runs on (the later
  // migrations, which add the columns the claim reads, applied).
  await migrateLatest(db);
  t.equal((await claimDueDeliveries(db, { leaseMs: 60_000, limit: 12, maxAttempts: 8 })).deliveries.length, 12, 'and claimed');
  await migrateDownTo(db, MIGRATION);
  await db.migrate.down({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.same(await indexes(db), [{ name: 'webhook_deliveries_due_idx', valid: true }], 'down builds the old one again');
});
