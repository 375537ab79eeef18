// A webhook deleted (DELETE /api/orgs/:id/webhooks/:webhookId) while the collector writes to it:
// the flush's outbox trigger inserting its deliveries, or the worker recording an attempt. The
// writer waits for the DELETE, then finds the webhook and its deliveries gone; that is no error of
// the writer's. (Plain PostgreSQL only: on Citus the lock waits happen on a worker.)
import { randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { deleteWebhookInOrg } from '../api/webhooks/webhooks.repository';
import { Aggregator } from '../collector/aggregator';
import { createPgUsageStore } from '../collector/usageStore';
import { claimDueDeliveries, recordAttempt } from '../collector/webhookStore';
import { loadConfig } from '../shared/config';
import type { Db } from '../shared/db';
import { TABLE } from '../shared/tables';
import { freshDatabase, onCitus, someoneWaitsOnLock } from './helpers/database';

const detection = () => loadConfig({ NODE_ENV: 'development' }).collector.events;
const skip = onCitus() && 'the lock wait is on a worker';

// An org with one key and one webhook subscribed to every event type.
async function seed(db: Db) {
  const [org] = await db(TABLE.organizations).insert({ name: 'acme' }).returning('id');
  const keyId = randomUUID();
  await db(TABLE.apiKeys).insert({ id: keyId, org_id: org.id, name: 'k', display_prefix: 'ku_test', secret_hash: randomBytes(32), scopes: ['keys:read'] });
  const [webhook] = await db(TABLE.webhooks)
    .insert({ org_id: org.id, url: 'https://203.0.113.10/hook', event_types: ['*'], secret_box: randomBytes(40) })
    .returning('id');
  return { orgId: org.id as string, keyId, webhookId: webhook.id as string };
}

// The key's first use: its usage rows and a key.first_use event, whose trigger enqueues a delivery.
function flushFirstUse(db: Db, key: { orgId: string; keyId: string }) {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => Date.now() });
  aggregator.add({ ...key, ip: '192.0.2.1', outcome: 'ok', count: 3 });
  return createPgUsageStore(db, { events: detection() }).write([{ id: randomUUID(), batch: aggregator.drain() }]);
}

const countOf = async (db: Db, table: string, where: Record<string, string>) => Number((await db(table).where(where).count({ n: '*' }))[0].n);

t.test('a webhook deleted while a flush enqueues its delivery: the usage and the event are written, nothing is set aside', { skip }, async (t) => {
  const { db } = await freshDatabase(t);
  const { orgId, keyId, webhookId } = await seed(db);

  const operator = await db.transaction();
  await deleteWebhookInOrg(operator, orgId, webhookId);
  const writing = flushFirstUse(db, { orgId, keyId });
  await someoneWaitsOnLock(db);
  await operator.commit();
  const result = await writing;

  t.strictSame(result.quarantined, [], 'the key is not quarantined');
  t.equal(result.keysWritten, 1, 'its usage is written');
  t.equal(await countOf(db, TABLE.usage, { key_id: keyId }), 1, 'its totals row exists');
  t.equal(await countOf(db, TABLE.keyEvents, { key_id: keyId, type: 'key.first_use' }), 1, 'its event exists');
  t.equal(await countOf(db, TABLE.usageSetAside, { key_id: keyId }), 0, 'none of its uses is set aside');
  t.equal(await countOf(db, TABLE.webhookDeliveries, { org_id: orgId }), 0, 'no delivery for the deleted webhook');
});

t.test('a webhook deleted while an attempt of its delivery is recorded: the attempt is dropped with the delivery', { skip }, async (t) => {
  const { db } = await freshDatabase(t);
  const { orgId, keyId, webhookId } = await seed(db);
  await db(TABLE.keyEvents).insert({ org_id: orgId, key_id: keyId, type: 'key.new_ip', occurred_at: new Date(), details: {} });
  const [delivery] = (await claimDueDeliveries(db, { leaseMs: 60_000, limit: 10, maxAttempts: 8 })).deliveries;

  const operator = await db.transaction();
  await deleteWebhookInOrg(operator, orgId, webhookId);
  const outcome = { startedAt: new Date(), durationMs: 5, statusCode: 204, error: null, succeeded: true, retryInMs: undefined };
  const recording = recordAttempt(db, delivery, outcome);
  await someoneWaitsOnLock(db);
  await operator.commit();

  t.equal(await recording, 'deleted', 'the delivery is reported deleted, not failed to record');
  t.equal(await countOf(db, TABLE.webhookDeliveryAttempts, { org_id: orgId }), 0, 'no attempt row is left');
});

t.test('an attempt of a delivery deleted before it is recorded is reported deleted, not superseded', async (t) => {
  const { db } = await freshDatabase(t);
  const { orgId, keyId, webhookId } = await seed(db);
  await db(TABLE.keyEvents).insert({ org_id: orgId, key_id: keyId, type: 'key.new_ip', occurred_at: new Date(), details: {} });
  const [delivery] = (await claimDueDeliveries(db, { leaseMs: 60_000, limit: 10, maxAttempts: 8 })).deliveries;
  await deleteWebhookInOrg(db, orgId, webhookId);
  const outcome = { startedAt: new Date(), durationMs: 5, statusCode: 503, error: 'HTTP 503', succeeded: false, retryInMs: 1000 };
  t.equal(await recordAttempt(db, delivery, outcome), 'deleted');
});
