import t from 'tap';
import { MIGRATION_CONFIG, type Db } from '../shared/db';
import { createOrg, insertKeys } from '../bench/lib/database';
import { freshDatabase, migrateBesideWrites, migrateDownTo } from './helpers/database';

// 20261203000120 builds api_keys_created_at_idx concurrently: the previous version's API, serving
// while the migration runs, keeps writing api_keys during the build.

const MIGRATION = '20261203000120_api_keys_created_at_index.ts';
const BEFORE = '20261202000110_usage_log.ts';

const indexValid = async (db: Db) =>
  (await db.raw<{ rows: Array<{ valid: boolean }> }>(`select indisvalid as valid from pg_index where indexrelid = to_regclass('api_keys_created_at_idx')`))
    .rows[0]?.valid;

t.test('the index is built while other connections keep writing api_keys', async (t) => {
  const { db, url } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  t.equal(await indexValid(db), undefined, 'no index before the migration');
  const orgId = await createOrg(db, 'acme');
  // A transaction that wrote a key and is still open: a plain CREATE INDEX waits for its lock,
  // and every write after it waits behind the build.
  const written = await migrateBesideWrites(
    t,
    db,
    url,
    MIGRATION,
    (holder) => insertKeys(holder, orgId, 1, 'held'),
    (trx) => insertKeys(trx, orgId, 1, 'during'),
  );
  t.equal(typeof written === 'string' ? written : written.length, 1, 'a key is created during the build');
  t.equal(await indexValid(db), true);
});

t.test('an invalid index left by a failed concurrent build is built again', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  await db.raw('create index api_keys_created_at_idx on api_keys (created_at)');
  // What a cancelled CREATE INDEX CONCURRENTLY leaves behind.
  await db.raw(`update pg_index set indisvalid = false where indexrelid = to_regclass('api_keys_created_at_idx')`);
  t.equal(await indexValid(db), false);
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.equal(await indexValid(db), true);
  await db.migrate.down({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.equal(await indexValid(db), undefined, 'down drops it');
});
