import t, { type Test } from 'tap';
import { expireOldEvents } from '../collector/eventStore';
import { createUpkeep } from '../collector/upkeep';
import { createPgUsageStore } from '../collector/usageStore';
import { retryDelayMs } from '../collector/webhookRetry';
import { claimDueDeliveries, recordAttempt } from '../collector/webhookStore';
import { expireIpData } from '../shared/ipRetention';
import { DAY_MS } from '../shared/timeUnits';
import { loadConfig } from '../shared/config';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, onCitus } from './helpers/database';
import { capturingLogger } from './helpers/logLines';

// A delivery retried with backoff can wait longer than its event is kept: with
// WEBHOOK_RETRY_BASE_MS at its maximum (an hour) and WEBHOOK_MAX_ATTEMPTS at 12, the wait after
// attempt 11 alone is 21 to 42 days, and the retries 85 days in all; a delivery put back unsent
// (its secret unopened, for up to WEBHOOK_SECRET_WAIT_MAX_MS = 30 days, or lookups busy, without
// end) or not yet claimed (its org's backlog) waits too. Its payload copies the event's details,
// client addresses included: retention deleted the event and left the copy, pending.

const RETENTION_DAYS = 7;
const LONGEST_RETRY = { maxAttempts: 12, baseDelayMs: 3_600_000 };
const ADDRESS = '203.0.113.7';

// An org with a webhook and one event of `occurredAt` (now by default), whose delivery the
// outbox trigger makes: a snapshot of the event, the client's address included.
async function orgWithDelivery(t: Test, occurredAt = new Date()) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await db('webhooks').insert({ org_id: org.id, url: 'https://203.0.113.10/hook', event_types: ['*'], secret_box: Buffer.alloc(32) });
  await db('key_events').insert({ org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: occurredAt, details: { ip: ADDRESS } });
  return { db, org };
}

t.test('a delivery still pending after EVENTS_RETENTION_DAYS is failed by retention, saying why, then deleted', async (t) => {
  const { db, org } = await orgWithDelivery(t);
  const ours = () => db('webhook_deliveries').where({ org_id: org.id });
  // Other tests' deliveries may be due too (npm run test:citus shares one database): this org's only.
  const claimed = (await claimDueDeliveries(db, { leaseMs: 60_000, limit: 100, maxAttempts: 12 })).deliveries.find((d) => d.orgId === org.id)!;
  // Its attempt fails with the wait of attempt 11 of 12 at the longest base: 21 days at least.
  const retryInMs = retryDelayMs(11, LONGEST_RETRY, () => 0)!;
  t.ok(retryInMs > 3 * RETENTION_DAYS * DAY_MS, 'the next try is weeks away');
  const failed = { startedAt: new Date(), durationMs: 5, statusCode: 503, error: 'HTTP 503', succeeded: false, retryInMs };
  t.equal(await recordAttempt(db, claimed, failed), 'pending');

  // Retention runs (hourly) on a clock a day past the event's: the event goes.
  const retentionAt = Date.now() + (RETENTION_DAYS + 1) * DAY_MS + 3_600_000;
  await expireOldEvents(db, new Date(retentionAt), RETENTION_DAYS);
  t.equal((await db('key_events').where({ org_id: org.id }).count({ n: '*' }))[0].n, 0, 'the event is deleted');
  const delivery = await ours().first('id', 'status', 'attempts', 'completed_at');
  t.match(delivery, { status: 'failed', attempts: 2 }, 'its delivery is no longer pending: it is failed (fails without the fix: still pending)');
  t.equal(delivery.completed_at.getTime(), retentionAt, "completed at the retention's time");
  const attempts = await db('webhook_delivery_attempts')
    .where({ org_id: org.id })
    .orderBy('attempt')
    .select('attempt', 'status_code', 'error', 'succeeded', 'started_at');
  t.same(
    attempts.map((a) => [a.attempt, a.status_code, a.succeeded]),
    [
      [1, 503, false],
      [2, null, false],
    ],
    'one attempt more, unsent, in its log',
  );
  t.match(attempts[1].error, /^nothing more was sent: the delivery was still pending 7 days after it was made \(EVENTS_RETENTION_DAYS\)/, 'saying why');
  t.equal(attempts[1].started_at.getTime(), retentionAt);

  // The next run (an hour later) deletes it, with its attempts, as any finished delivery.
  await expireOldEvents(db, new Date(retentionAt + 3_600_000), RETENTION_DAYS);
  t.equal((await ours().count({ n: '*' }))[0].n, 0, 'the next run deletes it');
  t.equal((await db('webhook_delivery_attempts').where({ org_id: org.id }).count({ n: '*' }))[0].n, 0, 'and its attempts');
});

// Retention runs while a worker sends the delivery (claimed, its lease not ended, no attempt
// recorded yet): failed under it, a send that succeeded was logged as failed, its success as
// superseded (a review).
t.test('a delivery being sent when retention runs is left to its send', async (t) => {
  const { db, org } = await orgWithDelivery(t);
  const madeAt = new Date(Date.now() - (RETENTION_DAYS + 1) * DAY_MS);
  await db('webhook_deliveries').where({ org_id: org.id }).update({ created_at: madeAt, next_attempt_at: madeAt });
  const claimed = (await claimDueDeliveries(db, { leaseMs: 60_000, limit: 100, maxAttempts: 12 })).deliveries.find((d) => d.orgId === org.id)!;
  await expireOldEvents(db, new Date(), RETENTION_DAYS);
  const sent = { startedAt: new Date(), durationMs: 5, statusCode: 200, error: null, succeeded: true, retryInMs: undefined };
  t.equal(await recordAttempt(db, claimed, sent), 'succeeded', 'its send records its outcome (fails without the fix: superseded)');
  t.match(await db('webhook_deliveries').where({ org_id: org.id }).first('status', 'attempts'), { status: 'succeeded', attempts: 1 });
});

t.test('a delivery pending within EVENTS_RETENTION_DAYS is left to its retries', async (t) => {
  const { db, org } = await orgWithDelivery(t);
  await expireOldEvents(db, new Date(Date.now() + RETENTION_DAYS * DAY_MS - 3_600_000), RETENTION_DAYS);
  t.match(await db('webhook_deliveries').where({ org_id: org.id }).first('status', 'attempts'), { status: 'pending', attempts: 0 });
  t.equal((await db('webhook_delivery_attempts').where({ org_id: org.id }).count({ n: '*' }))[0].n, 0, 'no attempt written');
});

// The stricter of the two wins: with IP_RETENTION_DAYS shorter, the addresses go from a pending
// delivery's payload first (shared/ipRetention.ts), and the delivery goes on with its retries.
t.test('a pending delivery loses its addresses at IP_RETENTION_DAYS, and stays pending', async (t) => {
  const { db, org } = await orgWithDelivery(t, new Date(Date.now() - 3 * DAY_MS));
  await expireOldEvents(db, new Date(), RETENTION_DAYS);
  await expireIpData(db, 2);
  const delivery = await db('webhook_deliveries').where({ org_id: org.id }).first('status', 'payload');
  t.equal(delivery.status, 'pending');
  t.strictSame(delivery.payload.details, { ip: null }, 'its address erased, 2 days after the event');
});

// The collector's retention run says so: an error line with the count, and the deliveries counted
// as given up (webhook_deliveries_failed_total).
t.test("the collector's retention run logs and counts the deliveries it fails", async (t) => {
  const { db, org } = await orgWithDelivery(t);
  // Its next try weeks away: the upkeep's own worker leaves it alone.
  await db('webhook_deliveries')
    .where({ org_id: org.id })
    .update({ next_attempt_at: db.raw(`now() + interval '30 days'`) });
  const lines: string[] = [];
  const config = loadConfig({ NODE_ENV: 'test', EVENTS_RETENTION_DAYS: String(RETENTION_DAYS) });
  const upkeep = createUpkeep({
    db,
    store: createPgUsageStore(db),
    config,
    logger: capturingLogger(lines, 'upkeep-test'),
    now: () => Date.now() + (RETENTION_DAYS + 1) * DAY_MS,
    intervals: { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 0 },
  });
  upkeep.start();
  t.teardown(() => upkeep.stop());
  const line = await waitFor('the retention run to log', () => lines.map((l) => JSON.parse(l)).find((l) => l.deliveries !== undefined), 10_000);
  t.match(line, { level: 50, retentionDays: RETENTION_DAYS, msg: /^webhook deliveries failed: still pending after EVENTS_RETENTION_DAYS/ });
  // On Citus the other tests' deliveries share the database, and a clock 8 days ahead takes theirs too.
  if (!onCitus()) t.equal(line.deliveries, 1, 'with their count');
  t.equal(upkeep.webhooks.stats.gaveUp, line.deliveries, 'counted as given up');
  t.equal((await db('webhook_deliveries').where({ org_id: org.id }).first('status')).status, 'failed');
});
