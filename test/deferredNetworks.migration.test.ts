import t from 'tap';
import { MIGRATION_CONFIG } from '../shared/db';
import { freshDatabase, migrateDownTo } from './helpers/database';
import { seedOrg, startTestApi } from './helpers/api';

// 20261205000130 adds api_key_ip_history.event_due_at (key.new_ip events the hourly limit
// deferred); its down leaves the history as the version before kept it.
const MIGRATION = '20261205000130_deferred_new_ip_events.ts';

t.test('down drops the pending networks, as the version before did, and keeps the others; up again marks none pending', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const network = (prefix: string, pending: boolean) => ({
    org_id: org.id,
    key_id: adminKeyId,
    prefix,
    first_ip: prefix.replace('0/24', '1'),
    first_seen: new Date(),
    last_seen: new Date(),
    event_due_at: pending ? new Date() : null,
  });
  await db('api_key_ip_history').insert([network('198.51.1.0/24', false), network('198.51.2.0/24', true)]);
  // The column's value, or undefined without it.
  const history = async () => (await db('api_key_ip_history').where({ key_id: adminKeyId }).orderBy('first_ip')).map((row) => [row.first_ip, row.event_due_at]);
  await migrateDownTo(db, '20261203000120_api_keys_created_at_index.ts');
  t.strictSame(await history(), [['198.51.1.1', undefined]], 'the pending network is gone, with the column');
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame(await history(), [['198.51.1.1', null]]);
});
