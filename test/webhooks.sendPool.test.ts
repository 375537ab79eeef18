import t, { type Test } from 'tap';
import { ConfigError, loadConfig } from '../shared/config';
import { fetchCollectorMetrics } from '../harness/collectorProcess';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { startTestCollector } from './helpers/collector';
import { freshDatabase } from './helpers/database';
import { startWebhookReceiver } from './helpers/webhookReceiver';

// The webhook worker's send pool (WEBHOOK_CONCURRENCY) and the outbox's backlog gauges: real
// PostgreSQL, the real collector, receivers on 127.0.0.1.

const FAST = {
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  WEBHOOK_POLL_INTERVAL_MS: '20',
  WEBHOOK_RETRY_BASE_MS: '60',
};

async function world(t: Test) {
  const { db, url: databaseUrl } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  // An org with a webhook to `url`, and a way to raise its key events (one delivery each).
  const org = async (name: string, url: string) => {
    const seeded = await seedOrg(api, db, name);
    const created = await api.request('POST', `/api/orgs/${seeded.org.id}/webhooks`, { key: seeded.adminKey, body: { url, events: ['*'] } });
    t.equal(created.status, 201, `${name}'s webhook created`);
    const raise = async (count: number) => {
      for (let i = 0; i < count; i += 1)
        await db('key_events').insert({
          org_id: seeded.org.id,
          key_id: seeded.adminKeyId,
          type: 'key.new_ip',
          occurred_at: new Date(),
          details: { ip: `203.0.113.${i + 1}` },
        });
    };
    return { id: seeded.org.id, raise };
  };
  return { db, databaseUrl, org };
}

t.test('WEBHOOK_CONCURRENCY: 10 by default, 1 to 1000, a bad value named', async (t) => {
  t.equal(loadConfig({ NODE_ENV: 'test' }).webhooks.concurrency, 10);
  t.equal(loadConfig({ NODE_ENV: 'test', WEBHOOK_CONCURRENCY: '40' }).webhooks.concurrency, 40);
  for (const value of ['0', '1001', 'ten', '-1']) {
    t.throws(() => loadConfig({ NODE_ENV: 'test', WEBHOOK_CONCURRENCY: value }), ConfigError);
    t.throws(() => loadConfig({ NODE_ENV: 'test', WEBHOOK_CONCURRENCY: value }), { message: /\bWEBHOOK_CONCURRENCY: / }, `'${value}' is refused, named`);
  }
});

// Each org held half the pool at most, so two orgs whose receivers never answer held all of it,
// and each slot freed at their timeouts went round to one of them again: a third org's
// deliveries went out one per WEBHOOK_TIMEOUT_MS. A quarter of the pool is kept for orgs with
// nothing in flight, and the third org's deliveries go out while the silent ones still wait.
t.test("two orgs' receivers that never answer leave slots for a third org's deliveries", async (t) => {
  const { db, databaseUrl, org } = await world(t);
  const silentReceivers = [await startWebhookReceiver(t, () => 'handled'), await startWebhookReceiver(t, () => 'handled')];
  const answering = await startWebhookReceiver(t);
  const silentOrgs = [await org('silent-1', silentReceivers[0].url), await org('silent-2', silentReceivers[1].url)];
  const third = await org('third', answering.url);
  // More due than an org's share (5 of the pool of 10).
  for (const silent of silentOrgs) await silent.raise(8);
  await startTestCollector(t, databaseUrl, { ...FAST, WEBHOOK_TIMEOUT_MS: '2000' });
  const silentRequests = () => silentReceivers[0].requests.length + silentReceivers[1].requests.length;
  await waitFor('the silent receivers holding sends', async () => silentRequests() >= 8 || undefined);

  await third.raise(3);
  await waitFor("the third org's deliveries", async () =>
    Number((await db('webhook_deliveries').where({ org_id: third.id, status: 'succeeded' }).count<{ count: string }[]>({ count: '*' }))[0].count) === 3
      ? true
      : undefined,
  );
  const silentAttempts = await db('webhook_delivery_attempts')
    .whereIn(
      'org_id',
      silentOrgs.map((silent) => silent.id),
    )
    .count<{ count: string }[]>({ count: '*' });
  t.equal(Number(silentAttempts[0].count), 0, "they went out while the silent receivers' first sends were in flight (none of theirs recorded)");
  t.equal(answering.requests.length, 3, 'each once');
  t.equal(silentRequests(), 8, "the silent orgs' sends leave a quarter of the pool free: 5 and 3 of 10");
});

// The outbox grew without a sign of it: retention keeps pending deliveries, and no metric counted
// them. The worker reads the backlog before its first claim, so the gauges show what was seeded.
t.test('the backlog gauges show the pending deliveries and how long the oldest due one has waited', async (t) => {
  const { db, databaseUrl, org } = await world(t);
  const receiver = await startWebhookReceiver(t);
  const seeded = await org('backlog', receiver.url);
  await seeded.raise(4);
  const ids: string[] = await db('webhook_deliveries').where({ org_id: seeded.id }).orderBy('created_at').orderBy('id').pluck('id');
  const dueFor = (id: string, seconds: number) =>
    db('webhook_deliveries')
      .where({ id })
      .update({ next_attempt_at: db.raw(`now() - ? * interval '1 second'`, [seconds]) });
  await dueFor(ids[0], 600);
  await dueFor(ids[1], 300);
  await dueFor(ids[2], -3600); // pending, due in an hour
  await db('webhook_deliveries').where({ id: ids[3] }).update({ status: 'succeeded', completed_at: new Date() });
  const seededAt = Date.now();

  const collector = await startTestCollector(t, databaseUrl, FAST);
  // Sent after the first read of the backlog, which comes before the first claim.
  await waitFor('the due deliveries sent', async () => receiver.requests.length === 2 || undefined);
  const metrics = await fetchCollectorMetrics(collector.metricsPort);
  t.equal(metrics.webhook_pending_deliveries, 3, 'three pending: two due, one due in an hour; the delivered one not counted');
  const age = metrics.webhook_oldest_due_age_seconds;
  t.ok(age >= 600 && age <= 600 + (Date.now() - seededAt) / 1000 + 1, `the oldest due one has waited 600 s since it was seeded (${age})`);
});
