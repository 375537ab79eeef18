import t from 'tap';
import { insertKeys } from '../bench/lib/database';
import { ACTOR_INDEX, CREATOR_INDEX } from '../migrations/20261207000240_key_creator';
import { MIGRATION_CONFIG } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261207000240 keeps the key that created each key; keys made before take it from their
// key.create audit entry (the new key is its target, the acting key its actor). A key made by the
// CLI stays null, and an entry of one org never names the creator of another org's key.

const MIGRATION = '20261207000240_key_creator.ts';
const BEFORE = '20261207000230_idempotency_resource.ts';

const indexes = async (db: Awaited<ReturnType<typeof freshDatabase>>['db']) =>
  (await db('pg_indexes').whereIn('indexname', [CREATOR_INDEX.name, ACTOR_INDEX.name]).pluck('indexname')).sort();

t.test('keys created through the API before the migration take their creator from the audit log, and back', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const create = async (orgId: string, key: string, name: string) =>
    (await api.request('POST', `/api/orgs/${orgId}/api-keys`, { key, body: { name, scopes: ['keys:read', 'keys:write'] } })).body as {
      id: string;
      key: string;
    };
  const leaked = await create(acme.org.id, acme.adminKey, 'leaked');
  const planted = await create(acme.org.id, leaked.key, 'planted');
  const theirs = await create(globex.org.id, globex.adminKey, 'theirs');
  const byCli = await api.services.apiKeys.create(acme.org.id, { name: 'by-cli', scopes: ['keys:read'], expiresAt: null });
  // Past the page of entries the backfill reads at once (1000): 2,100 keys of one creator.
  const many = await insertKeys(db, acme.org.id, 2100, 'bulk-');
  await migrateDownTo(db, BEFORE);
  t.notOk(await db.schema.hasColumn('api_keys', 'created_by_key_id'), 'the previous schema');
  const entry = (orgId: string, seq: number, targetKeyId: string, actorKeyId: string) => ({
    org_id: orgId,
    seq,
    actor_type: 'key',
    actor_key_id: actorKeyId,
    action: 'key.create',
    target_key_id: targetKeyId,
    details: {},
  });
  await db.batchInsert(
    'audit_log',
    [
      ...many.map((keyId, i) => entry(acme.org.id, 100 + i, keyId, leaked.id)),
      // Another org's entry naming acme's key (no release writes one): not taken across orgs.
      entry(globex.org.id, 100, byCli.key.id, globex.adminKeyId),
    ],
    500,
  );

  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  const creators = Object.fromEntries((await db('api_keys').select('id', 'created_by_key_id')).map((row) => [row.id, row.created_by_key_id]));
  t.match(
    creators,
    {
      [acme.adminKeyId]: null,
      [globex.adminKeyId]: null,
      [leaked.id]: acme.adminKeyId,
      [planted.id]: leaked.id,
      [theirs.id]: globex.adminKeyId,
      [byCli.key.id]: null,
    },
    "each from its own org's key.create entry; the CLI's and the seeded keys' stay null",
  );
  t.same(
    many.filter((keyId) => creators[keyId] !== leaked.id),
    [],
    'every key of a long log, across pages',
  );
  t.same(await indexes(db), [ACTOR_INDEX.name, CREATOR_INDEX.name].sort(), 'both indexes');
  const answered = await api.request('GET', `/api/orgs/${acme.org.id}/api-keys?createdByKeyId=${leaked.id}&limit=1`, { key: acme.adminKey });
  t.match(answered.body, { data: [{ createdByKeyId: leaked.id }], page: { total: 2101 } }, 'the API lists them');

  await migrateDownTo(db, BEFORE);
  t.notOk(await db.schema.hasColumn('api_keys', 'created_by_key_id'), 'down drops the column');
  t.same(await indexes(db), [], 'and the indexes');
});
