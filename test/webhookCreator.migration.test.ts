import t from 'tap';
import { MIGRATION_CONFIG } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, migrateDownTo } from './helpers/database';

// 20261206000190 keeps the key that created each webhook; webhooks made before take it from their
// audit entry (webhook.create names the acting key); one whose entry names no key (a CLI actor,
// which no release has written for a webhook, or none at all) stays unknown.

const MIGRATION = '20261206000190_webhook_creator.ts';
const BEFORE = '20261205000180_outbox_trigger_locks_webhooks.ts';

t.test('webhooks made before the migration take their creator from the audit log, and back', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  await migrateDownTo(db, BEFORE);
  const webhook = (orgId: string, url: string) => ({ org_id: orgId, url, event_types: ['*'], secret_box: Buffer.alloc(60) });
  const [byKey, byCli, other] = await db('webhooks')
    .insert([webhook(acme.org.id, 'https://127.0.0.1/a'), webhook(acme.org.id, 'https://127.0.0.1/b'), webhook(globex.org.id, 'https://127.0.0.1/c')])
    .returning<Array<{ id: string }>>('id');
  // Numbered past the entries the seeded keys' creation wrote.
  const audit = (orgId: string, actorKeyId: string | null, webhookId: string, seq: number) => ({
    org_id: orgId,
    seq,
    actor_type: actorKeyId ? 'key' : 'cli',
    actor_key_id: actorKeyId,
    action: 'webhook.create',
    details: { webhookId },
  });
  await db('audit_log').insert([
    audit(acme.org.id, acme.adminKeyId, byKey.id, 100),
    audit(acme.org.id, null, byCli.id, 101),
    audit(globex.org.id, globex.adminKeyId, other.id, 100),
  ]);
  await db.migrate.up({ ...MIGRATION_CONFIG, name: MIGRATION });
  const creators = Object.fromEntries((await db('webhooks').select('id', 'created_by_key_id')).map((row) => [row.id, row.created_by_key_id]));
  t.strictSame(creators, { [byKey.id]: acme.adminKeyId, [byCli.id]: null, [other.id]: globex.adminKeyId }, "each from its own org's entry");
  await migrateDownTo(db, BEFORE);
  t.notOk(await db.schema.hasColumn('webhooks', 'created_by_key_id'), 'down drops the column');
});
