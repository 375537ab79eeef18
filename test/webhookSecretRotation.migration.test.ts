import t from 'tap';
import { MIGRATION_CONFIG } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261207000200 keeps a webhook's previous signing secret through a rotation's grace period.
// Webhooks made before have none (both columns null), and down drops the columns again.

const MIGRATION = '20261207000200_webhook_secret_rotation.ts';
const BEFORE = '20261206000190_webhook_creator.ts';

t.test('webhooks gain a previous secret and its end, null for those made before, and lose them on the way down', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  const [org] = await db('organizations').insert({ name: 'acme' }).returning('id');
  const [hook] = await db('webhooks')
    .insert({ org_id: org.id, url: 'https://203.0.113.10/hook', event_types: ['*'], secret_box: Buffer.alloc(60, 1) })
    .returning('id');
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.match(await db('webhooks').where({ id: hook.id }).first(), {
    secret_box: Buffer.alloc(60, 1),
    previous_secret_box: null,
    previous_secret_expires_at: null,
  });
  const columns = await db('information_schema.columns')
    .where({ table_name: 'webhooks' })
    .whereIn('column_name', ['previous_secret_box', 'previous_secret_expires_at'])
    .orderBy('column_name')
    .select('column_name', 'data_type', 'is_nullable');
  t.same(
    columns.map((column) => [column.column_name, column.data_type, column.is_nullable]),
    [
      ['previous_secret_box', 'bytea', 'YES'],
      ['previous_secret_expires_at', 'timestamp with time zone', 'YES'],
    ],
  );
  await migrateDownTo(db, BEFORE);
  t.notOk(await db.schema.hasColumn('webhooks', 'previous_secret_box'), 'down drops the previous secret');
  t.notOk(await db.schema.hasColumn('webhooks', 'previous_secret_expires_at'), 'and its end');
});
