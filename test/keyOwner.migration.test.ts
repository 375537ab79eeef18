import { randomUUID } from 'node:crypto';
import t from 'tap';
import { MIGRATION_CONFIG } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261208000290 gives api_keys an owner: null for keys written before, and for keys the previous
// version (still serving during a rolling deploy) goes on inserting without it; down drops it.

const MIGRATION = '20261208000290_key_owner.ts';
const BEFORE = '20261208000280_org_usage_series.ts';

t.test('api_keys gains a nullable owner, null for the previous version’s keys before and during the deploy, and loses it on the way down', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  const [org] = await db('organizations').insert({ name: 'acme' }).returning('id');
  // The previous version's insert: every column it knows, the row read back whole.
  const previousInsert = (name: string) =>
    db('api_keys')
      .insert({ id: randomUUID(), org_id: org.id, name, display_prefix: 'ku_00000000', secret_hash: Buffer.alloc(32, 1), scopes: ['keys:read'] })
      .returning('*');
  const [before] = await previousInsert('made before');
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  const [during] = await previousInsert('made during the deploy');
  t.match(during, { name: 'made during the deploy', owner: null }, "the previous version's insert still works");
  t.same(
    await db('api_keys').where({ org_id: org.id }).orderBy('name').select('name', 'owner'),
    [
      { name: 'made before', owner: null },
      { name: 'made during the deploy', owner: null },
    ],
    'both keys have no owner',
  );
  const [column] = await db('information_schema.columns')
    .where({ table_name: 'api_keys', column_name: 'owner' })
    .select('data_type', 'is_nullable', 'column_default');
  t.same(column, { data_type: 'text', is_nullable: 'YES', column_default: null }, 'nullable, no default: no table rewrite');
  await db('api_keys').where({ id: before.id }).update({ owner: 'data team' });
  await migrateDownTo(db, BEFORE);
  t.notOk(await db.schema.hasColumn('api_keys', 'owner'), 'down drops it');
  t.equal((await db('api_keys').where({ org_id: org.id })).length, 2, 'and keeps the keys');
});
