import { randomUUID } from 'node:crypto';
import t from 'tap';
import { migrateLatest, MIGRATION_CONFIG, type Db } from '../shared/db';
import { freshDatabase } from './helpers/database';

// 20261201000060: org_id in every key of the webhook, audit and IP-history tables (Citus
// distributes them by it), while processes of the previous version, still running during a
// rolling deploy, keep working.

const TABLES = ['webhooks', 'webhook_deliveries', 'webhook_delivery_attempts', 'audit_log', 'api_key_ip_history'];
const LEGACY = 'api_key_ip_history_key_prefix_legacy';
const AT = new Date('2026-11-30T12:00:00Z');

async function world(db: Db) {
  const [org] = await db('organizations').insert({ name: 'acme' }).returning('id');
  const keyId = randomUUID();
  await db('api_keys').insert({ id: keyId, org_id: org.id, name: 'k', display_prefix: 'ku_test', secret_hash: Buffer.alloc(32), scopes: ['keys:read'] });
  const [webhook] = await db('webhooks')
    .insert({ org_id: org.id, url: 'https://example.test/hook', event_types: ['*'], secret_box: Buffer.alloc(8) })
    .returning('id');
  return { orgId: org.id as string, keyId, webhookId: webhook.id as string };
}

// The unique indexes (primary keys included) of `tables` whose columns lack org_id.
async function uniqueWithoutOrg(db: Db): Promise<string[]> {
  const { rows } = await db.raw(
    `select i.indexrelid::regclass::text as name
       from pg_index i
      where i.indisunique and i.indrelid = any (cast(? as regclass[]))
        and not exists (select 1 from pg_attribute a where a.attrelid = i.indrelid and a.attnum = any (i.indkey) and a.attname = 'org_id')`,
    [TABLES],
  );
  return rows.map((row: { name: string }) => row.name).sort();
}

// What the previous version sends: no org_id, and its ON CONFLICT target.
async function previousVersionWrites(db: Db, w: Awaited<ReturnType<typeof world>>) {
  for (const lastSeen of [AT, new Date(AT.getTime() + 7_200_000)]) {
    await db.raw(
      `insert into api_key_ip_history (key_id, prefix, first_ip, first_seen, last_seen) values (?, '192.0.2.0/24', '192.0.2.7', ?, ?)
       on conflict (key_id, prefix) do update set last_seen = excluded.last_seen`,
      [w.keyId, AT, lastSeen],
    );
  }
  await db('key_events').insert({ org_id: w.orgId, key_id: w.keyId, type: 'key.new_ip', occurred_at: AT, details: {} });
  const [delivery] = await db('webhook_deliveries').where({ webhook_id: w.webhookId }).select('id');
  await db.raw(
    `insert into webhook_delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error, succeeded)
     select id, 1, ?, 12, 200, null, true from webhook_deliveries where id = ?`,
    [AT, delivery.id],
  );
}

t.test('every unique key of the five tables includes org_id; the previous version still writes', async (t) => {
  const { db } = await freshDatabase(t);
  t.strictSame(await uniqueWithoutOrg(db), [LEGACY], 'only the index kept for the rolling deploy lacks org_id');
  const w = await world(db);
  await previousVersionWrites(db, w);
  const history = await db('api_key_ip_history').select('org_id', 'last_seen');
  t.strictSame(history, [{ org_id: w.orgId, last_seen: new Date(AT.getTime() + 7_200_000) }], 'one row, upserted, org filled in');
  t.strictSame(await db('webhook_delivery_attempts').pluck('org_id'), [w.orgId], "the attempt got its delivery's org");
  t.strictSame(await db('webhook_deliveries').pluck('org_id'), [w.orgId], 'the outbox trigger enqueued one delivery');
});

t.test('down to 20261201000050 and up again keeps the rows', async (t) => {
  const { db } = await freshDatabase(t);
  const w = await world(db);
  await previousVersionWrites(db, w);
  await db.raw(`insert into audit_log (org_id, actor_type, action) values (?, 'cli', 'key.revoke')`, [w.orgId]);
  await db.migrate.down({ ...MIGRATION_CONFIG, name: '20261201000060_citus_ready_webhooks_audit.ts' });
  t.notOk(
    (await db.raw(`select 1 from information_schema.columns where table_name = 'api_key_ip_history' and column_name = 'org_id'`)).rows.length,
    'org_id gone',
  );
  await migrateLatest(db);
  t.strictSame(await uniqueWithoutOrg(db), [LEGACY]);
  t.equal((await db('api_key_ip_history').where({ org_id: w.orgId })).length, 1);
  t.equal((await db('webhook_delivery_attempts').where({ org_id: w.orgId })).length, 1);
  t.equal((await db('audit_log').where({ org_id: w.orgId })).length, 1);
});
