import { randomUUID } from 'node:crypto';
import t from 'tap';
import { MIGRATION_CONFIG } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261207000210 keeps, per key, the newest use of its previous secret and its address in
// api_key_usage. Rows written before have neither (null), and down drops the columns again.

const MIGRATION = '20261207000210_previous_secret_last_use.ts';
const BEFORE = '20261207000200_webhook_secret_rotation.ts';
const COLUMNS = ['previous_secret_last_used_at', 'previous_secret_last_used_ip'];

t.test("api_key_usage gains a previous secret's last use and address, null for rows written before, and loses them on the way down", async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  const [org] = await db('organizations').insert({ name: 'acme' }).returning('id');
  const [key] = await db('api_keys')
    .insert({ id: randomUUID(), org_id: org.id, name: 'ci', display_prefix: 'ku_00000000', secret_hash: Buffer.alloc(32, 1), scopes: ['keys:read'] })
    .returning('id');
  const usedAt = new Date('2026-12-06T10:00:00.000Z');
  await db('api_key_usage').insert({ org_id: org.id, key_id: key.id, request_count: 3, last_used_at: usedAt, last_used_ip: '192.0.2.1' });
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.match(await db('api_key_usage').where({ org_id: org.id, key_id: key.id }).first(), {
    request_count: '3',
    last_used_at: usedAt,
    last_used_ip: '192.0.2.1',
    previous_secret_last_used_at: null,
    previous_secret_last_used_ip: null,
  });
  const columns = await db('information_schema.columns')
    .where({ table_name: 'api_key_usage' })
    .whereIn('column_name', COLUMNS)
    .orderBy('column_name')
    .select('column_name', 'data_type', 'is_nullable', 'column_default');
  t.same(
    columns.map((column) => [column.column_name, column.data_type, column.is_nullable, column.column_default]),
    [
      ['previous_secret_last_used_at', 'timestamp with time zone', 'YES', null],
      ['previous_secret_last_used_ip', 'text', 'YES', null],
    ],
  );
  await migrateDownTo(db, BEFORE);
  for (const column of COLUMNS) t.notOk(await db.schema.hasColumn('api_key_usage', column), `down drops ${column}`);
  t.match(await db('api_key_usage').where({ org_id: org.id, key_id: key.id }).first(), { last_used_ip: '192.0.2.1' }, 'and keeps the rest');
});
