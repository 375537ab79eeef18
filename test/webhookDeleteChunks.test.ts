// A webhook with a long delivery log deleted (DELETE /api/orgs/:id/webhooks/:webhookId): its
// deliveries go ahead of it in chunks, each its own transaction. Deleted by the webhook's cascade,
// one statement held the webhook's row until the last delivery was gone, and the collector's
// flush (every org's usage in one transaction) waited on that row as soon as it raised an event
// for the webhook's org (the outbox trigger's FOR KEY SHARE). Here a delivery held by another
// session, as a sender recording its attempt holds it, stops the delete midway.
// (Plain PostgreSQL only: on Citus the lock waits happen on a worker.)
import t, { type Test } from 'tap';
import { deleteSomeDeliveries, DELIVERIES_PER_DELETE } from '../api/webhooks/webhooks.repository';
import { createDb, type Db } from '../shared/db';
import { within } from '../shared/within';
import { TABLE } from '../shared/tables';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, onCitus, someoneWaitsOnLock } from './helpers/database';
import { flushUses } from './helpers/flushUses';
import { waitFor } from '../harness/wait';

const skip = onCitus() && 'the lock wait is on a worker';
// Enough for several chunks and a short last one.
const DELIVERIES = 2 * DELIVERIES_PER_DELETE + 500;

// Two orgs; A has a webhook to every event type with DELIVERIES settled deliveries, an attempt each.
async function world(t: Test) {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  const a = await seedOrg(api, db, 'a');
  const b = await seedOrg(api, db, 'b');
  const created = await api.request('POST', `/api/orgs/${a.org.id}/webhooks`, { key: a.adminKey, body: { url: 'http://127.0.0.1:9/h', events: ['*'] } });
  t.equal(created.status, 201);
  const webhookId: string = created.body.id;
  await db.raw(
    `insert into ${TABLE.webhookDeliveries} (webhook_id, org_id, event_id, event_type, payload, status, attempts, completed_at, created_at)
     select ?, ?, gen_random_uuid(), 'key.new_ip', '{}'::jsonb, 'failed', 1, now(), now() - interval '1 hour' + g * interval '1 ms' from generate_series(1, ?) g`,
    [webhookId, a.org.id, DELIVERIES],
  );
  await db.raw(
    `insert into ${TABLE.webhookDeliveryAttempts} (org_id, delivery_id, attempt, started_at, duration_ms, error, succeeded)
     select org_id, id, 1, now(), 5, 'HTTP 503', false from ${TABLE.webhookDeliveries} where webhook_id = ?`,
    [webhookId],
  );
  // Made now: a key's create takes its org's turn, which the delete takes for each chunk.
  const unused = await api.services.apiKeys.create(a.org.id, { name: 'unused', scopes: ['keys:read'], expiresAt: null });
  return { db, url, api, a, b, unusedKeyId: unused.key.id, webhookId, hook: `/api/orgs/${a.org.id}/webhooks/${webhookId}` };
}

type World = Awaited<ReturnType<typeof world>>;

// The webhook's newest delivery read FOR KEY SHARE (as recordAttempt reads it) on a connection of its own, until released.
async function heldDelivery(t: Test, url: string, webhookId: string) {
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const trx = await holder.transaction();
  t.teardown(() => (trx.isCompleted() ? undefined : trx.rollback()));
  await trx(TABLE.webhookDeliveries).where({ webhook_id: webhookId }).orderBy('created_at', 'desc').forKeyShare().first('id');
  const { pid } = (await trx.raw('select pg_backend_pid() as pid')).rows[0];
  return Object.assign(trx, { pid: pid as number });
}

const countOf = async (db: Db, table: string, where: Record<string, string>) => Number((await db(table).where(where).count({ n: '*' }))[0].n);

// The first use of A's unused key (a key.first_use event, so a delivery to A's webhook) and a use
// of B's key, in one transaction. The bound only stops a hang: what counts is that the write
// finished while the delivery was still held.
const flushBothOrgs = (w: World) =>
  within(
    flushUses(w.db, [
      { orgId: w.a.org.id, keyId: w.unusedKeyId },
      { orgId: w.b.org.id, keyId: w.b.adminKeyId },
    ]),
    30_000,
  );

async function assertGone(t: Test, { db, a, webhookId }: World) {
  t.equal(await countOf(db, TABLE.webhooks, { id: webhookId }), 0, 'the webhook is gone');
  t.equal(await countOf(db, TABLE.webhookDeliveries, { org_id: a.org.id }), 0, 'its deliveries are gone');
  t.equal(await countOf(db, TABLE.webhookDeliveryAttempts, { org_id: a.org.id }), 0, 'their attempts are gone');
  t.equal(await countOf(db, TABLE.auditLog, { org_id: a.org.id, action: 'webhook.delete' }), 1, 'one audit entry');
}

t.test("a delete stopped midway by a delivery's lock holds no flush: every org's usage is written meanwhile", { skip }, async (t) => {
  const w = await world(t);
  const held = await heldDelivery(t, w.url, w.webhookId);
  const deleting = w.api.request('DELETE', w.hook, { key: w.a.adminKey });
  await someoneWaitsOnLock(w.db);

  const written = await flushBothOrgs(w);
  t.not(written, undefined, "the flush did not wait for the delete's lock");
  if (written) t.equal(written.keysWritten, 2, "A's and B's uses are written");
  t.equal(await countOf(w.db, TABLE.keyEvents, { org_id: w.a.org.id, type: 'key.first_use' }), 1, "A's event is written");
  t.ok(!held.isCompleted(), 'the delivery is still held');

  await held.commit();
  const deleted = await deleting;
  t.equal(deleted.status, 204, 'answered as before');
  t.equal(deleted.text, '', 'with no body');
  await assertGone(t, w);
});

// The chunk's ids were taken by another delete first (the retention's, of the oldest settled
// deliveries): its DELETE waited for that one and found none of them. Counting what it deleted, the
// loop ended there and the webhook's cascade took the rest, holding its row (a review).
t.test('a chunk whose deliveries another delete took first does not end the chunks: the rest still holds no flush', { skip }, async (t) => {
  const w = await world(t);
  const other = await w.db.transaction();
  t.teardown(() => (other.isCompleted() ? undefined : other.rollback()));
  await other(TABLE.webhookDeliveries).where({ webhook_id: w.webhookId }).delete();
  const deleting = w.api.request('DELETE', w.hook, { key: w.a.adminKey });
  await someoneWaitsOnLock(w.db);
  // The first chunk has picked its ids and waits for the other delete. A delivery made now, which
  // that chunk cannot have picked, is left for what comes after it, and a sender holds it.
  await w.db.raw(
    `insert into ${TABLE.webhookDeliveries} (webhook_id, org_id, event_id, event_type, payload, status, attempts)
     values (?, ?, gen_random_uuid(), 'key.new_ip', '{}'::jsonb, 'pending', 0)`,
    [w.webhookId, w.a.org.id],
  );
  const held = await heldDelivery(t, w.url, w.webhookId);
  await other.commit();
  await waitFor('the delete to wait on the held delivery', async () =>
    (await w.db.raw('select 1 from pg_stat_activity where ? = any(pg_blocking_pids(pid))', [held.pid])).rows.length > 0 ? true : undefined,
  );

  const written = await flushBothOrgs(w);
  t.not(written, undefined, "the flush did not wait for the delete's lock");
  await held.commit();
  t.equal((await deleting).status, 204);
  await assertGone(t, w);
});

t.test('a delete cut short after some chunks is finished by the next one', async (t) => {
  const w = await world(t);
  t.equal(
    await deleteSomeDeliveries(w.db, w.a.org.id, w.webhookId, DELIVERIES_PER_DELETE),
    DELIVERIES_PER_DELETE,
    'a chunk was deleted, then the process died',
  );
  t.equal((await w.api.request('DELETE', w.hook, { key: w.a.adminKey })).status, 204);
  await assertGone(t, w);
});

t.test("another org's webhook: 404, and none of its deliveries is deleted", async (t) => {
  const w = await world(t);
  const response = await w.api.request('DELETE', `/api/orgs/${w.b.org.id}/webhooks/${w.webhookId}`, { key: w.b.adminKey });
  t.equal(response.status, 404);
  t.equal(response.body.error.code, 'not_found');
  t.equal(await countOf(w.db, TABLE.webhooks, { id: w.webhookId }), 1, 'the webhook is kept');
  t.equal(await countOf(w.db, TABLE.webhookDeliveries, { webhook_id: w.webhookId }), DELIVERIES, 'every delivery is kept');
  t.equal(await countOf(w.db, TABLE.webhookDeliveryAttempts, { org_id: w.a.org.id }), DELIVERIES, 'every attempt is kept');
});
