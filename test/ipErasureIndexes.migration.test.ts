import t from 'tap';
import { AUDIT_IP_INDEX, EVENT_FIRST_SEEN_INDEX } from '../migrations/20261207000250_ip_erasure_indexes';
import { createOrg, insertKeys } from '../bench/lib/database';
import { MIGRATION_CONFIG, type Db } from '../shared/db';
import { freshDatabase, migrateBesideWrites, migrateDownTo } from './helpers/database';

// 20261207000250 indexes what the hourly IP erasure looks for in the audit log and the events,
// concurrently: the previous version, serving while the migration runs, keeps writing both.

const MIGRATION = '20261207000250_ip_erasure_indexes.ts';
const BEFORE = '20261207000240_key_creator.ts';
const NAMES = [AUDIT_IP_INDEX.name, EVENT_FIRST_SEEN_INDEX.name];

const validIndexes = async (db: Db) =>
  (
    await db.raw<{ rows: Array<{ name: string; valid: boolean }> }>(
      `select cast(indexrelid as regclass) as name, indisvalid as valid from pg_index where indexrelid = any(array[to_regclass(?), to_regclass(?)])`,
      NAMES,
    )
  ).rows
    .map((row) => `${row.name}${row.valid ? '' : ' (invalid)'}`)
    .sort();

t.test('both indexes are built while another connection writes an audit entry and an event, and go down', async (t) => {
  const { db, url } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  t.same(await validIndexes(db), [], 'none before the migration');
  const orgId = await createOrg(db, 'acme');
  const [keyId] = await insertKeys(db, orgId, 1, 'k');
  // A transaction still open that wrote an event: the build waits for it (a plain CREATE INDEX on
  // key_events would wait for its lock, and every write after it behind the build).
  const written = await migrateBesideWrites(
    t,
    db,
    url,
    MIGRATION,
    (holder) => event(holder, orgId, keyId),
    async (trx) => {
      await auditEntry(trx, orgId, keyId);
      await event(trx, orgId, keyId);
      return 'written';
    },
  );
  t.equal(written, 'written', 'an audit entry and an event are written during the build');
  t.same(await validIndexes(db), [...NAMES].sort(), 'both built, valid');
  await db.migrate.down({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.same(await validIndexes(db), [], 'down drops them');
});

const auditEntry = (db: Db, orgId: string, keyId: string) =>
  db.raw(
    `insert into audit_log (org_id, actor_type, actor_key_id, actor_display_prefix, action, target_key_id, ip)
     values (?, 'key', ?, 'ku_x', 'key.rotate', ?, '192.0.2.1')`,
    [orgId, keyId, keyId],
  );

const event = (db: Db, orgId: string, keyId: string) =>
  db('key_events').insert({ org_id: orgId, key_id: keyId, type: 'key.first_use', occurred_at: new Date(), details: { ip: '192.0.2.1' } });
