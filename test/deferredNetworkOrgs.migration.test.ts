import t from 'tap';
import { sweepTimeEvents } from '../collector/eventStore';
import { MIGRATION_CONFIG, type Db } from '../shared/db';
import { insertKeys } from '../bench/lib/database';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261205000170 lists the orgs with deferred networks for the sweep and replaces the history's
// due index over (event_due_at, first_seen) with one per org, on the networks the previous version
// left deferred.

const MIGRATION = '20261205000170_deferred_network_orgs.ts';
const BEFORE = '20261205000160_webhook_deliveries_due_per_org.ts';

const dueIndexes = async (db: Db) =>
  (
    await db.raw<{ rows: Array<{ name: string }> }>(
      `select c.relname as name from pg_index i join pg_class c on c.oid = i.indexrelid
        where i.indrelid = to_regclass('api_key_ip_history') and c.relname like '%due%' order by 1`,
    )
  ).rows.map((row) => row.name);

t.test('on networks the previous version deferred: their orgs are listed and swept, the index is per org, and back', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const deferring = await seedOrg(api, db, 'deferring');
  const quiet = await seedOrg(api, db, 'quiet');
  await migrateDownTo(db, BEFORE);
  t.strictSame(await dueIndexes(db), ['api_key_ip_history_due_idx'], 'the previous version had the index over event_due_at');
  const now = Date.now();
  const network = (orgId: string, keyId: string, prefix: string, due: boolean) => ({
    org_id: orgId,
    key_id: keyId,
    prefix,
    first_ip: prefix.replace('0/24', '1'),
    first_seen: new Date(now - 60_000),
    last_seen: new Date(now - 60_000),
    event_due_at: due ? new Date(now - 60_000) : null,
  });
  const [keyId] = await insertKeys(db, deferring.org.id, 1, 'deferring');
  await db('api_key_usage').insert({ org_id: deferring.org.id, key_id: keyId, request_count: 1 });
  await db('api_key_ip_history').insert([
    network(deferring.org.id, keyId, '198.51.1.0/24', true),
    network(quiet.org.id, quiet.adminKeyId, '198.51.2.0/24', false),
  ]);
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame(await dueIndexes(db), ['api_key_ip_history_org_due_idx']);
  t.strictSame(await db('deferred_network_orgs').pluck('org_id'), [deferring.org.id], 'only the org with a deferred network');
  // Swept by this version's collector on the schema it runs on (the migrations first, as the
  // upgrade notes say: its sweep reads columns later migrations add).
  await db.migrate.latest(MIGRATION_CONFIG);
  const swept = await sweepTimeEvents(db, new Date(now), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });
  t.equal(swept.newIp, 1, 'its network is raised by the sweep');
  await migrateDownTo(db, MIGRATION);
  await db.migrate.down({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame(await dueIndexes(db), ['api_key_ip_history_due_idx'], 'down builds the old one again');
  t.equal((await db.raw(`select to_regclass('deferred_network_orgs') as name`)).rows[0].name, null, 'and drops the list');
});
