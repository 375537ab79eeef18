import t from 'tap';
import { MIGRATION_CONFIG, type Db } from '../shared/db';
import { createOrg } from '../bench/lib/database';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261205000150 numbers each org's audit entries on their own: the existing ones in their id
// order, and the inserts of a previous version's processes (a rolling deploy), which name no number.

const MIGRATION = '20261205000150_audit_log_org_sequence.ts';
const BEFORE = '20261205000140_usage_set_aside.ts';

const insertEntry = (db: Db, orgId: string, action: string) =>
  db.raw(`insert into audit_log (org_id, actor_type, action) values (?, 'cli', ?)`, [orgId, action]);
const entries = (db: Db, orgId: string) => db('audit_log').where({ org_id: orgId }).orderBy('id').select('action', 'seq');

t.test('existing entries are numbered per org in id order; a previous version’s insert gets the next number', async (t) => {
  const { db } = await freshDatabase(t);
  await migrateDownTo(db, BEFORE);
  const acme = await createOrg(db, 'acme');
  const globex = await createOrg(db, 'globex');
  for (const [orgId, action] of [
    [acme, 'key.create'],
    [globex, 'key.create'],
    [globex, 'key.rotate'],
    [acme, 'key.revoke'],
  ]) {
    await insertEntry(db, orgId, action);
  }
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame(await entries(db, acme), [
    { action: 'key.create', seq: 1 },
    { action: 'key.revoke', seq: 2 },
  ]);
  t.strictSame(await entries(db, globex), [
    { action: 'key.create', seq: 1 },
    { action: 'key.rotate', seq: 2 },
  ]);

  await insertEntry(db, acme, 'key.update');
  t.strictSame((await entries(db, acme)).at(-1), { action: 'key.update', seq: 3 }, 'an insert without a number is given the next');
  await t.rejects(db('audit_log').where({ org_id: acme }).update({ action: 'forged' }), /append-only/, 'the append-only trigger is on again');
  await t.rejects(db.raw(`insert into audit_log (org_id, actor_type, action, seq) values (?, 'cli', 'key.create', 1)`, [acme]), /audit_log_org_seq_idx/);

  await db.migrate.down({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame(
    await db('audit_log').where({ org_id: acme }).orderBy('id').pluck('action'),
    ['key.create', 'key.revoke', 'key.update'],
    'down keeps the entries',
  );
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  t.strictSame((await entries(db, acme)).at(-1), { action: 'key.update', seq: 3 }, 'and up numbers them again');
});
