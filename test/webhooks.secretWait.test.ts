import t from 'tap';
import { claimDueDeliveries, failUnsent } from '../collector/webhookStore';
import { durationInWords } from '../collector/webhookWorker';
import { ConfigError, loadConfig } from '../shared/config';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// WEBHOOK_SECRET_WAIT_MAX_MS bounds how long a delivery whose signing secret no collector can open
// waits for a pepper; test/webhooks.delivery.test.ts has the worker's side, through the API.

t.test('WEBHOOK_SECRET_WAIT_MAX_MS: three days by default, a minute to 30 days, a bad value named', async (t) => {
  t.equal(loadConfig({ NODE_ENV: 'test' }).webhooks.secretWaitMaxMs, 259_200_000);
  t.equal(loadConfig({ NODE_ENV: 'test', WEBHOOK_SECRET_WAIT_MAX_MS: '3600000' }).webhooks.secretWaitMaxMs, 3_600_000);
  for (const value of ['59999', '2592000001', '1h', '-1']) {
    t.throws(() => loadConfig({ NODE_ENV: 'test', WEBHOOK_SECRET_WAIT_MAX_MS: value }), ConfigError);
    t.throws(
      () => loadConfig({ NODE_ENV: 'test', WEBHOOK_SECRET_WAIT_MAX_MS: value }),
      { message: /\bWEBHOOK_SECRET_WAIT_MAX_MS: / },
      `${value} is refused, named`,
    );
  }
});

t.test("the wait is written in the delivery's log in the largest whole unit", async (t) => {
  t.equal(durationInWords(259_200_000), '3 days');
  t.equal(durationInWords(86_400_000), '1 day');
  t.equal(durationInWords(5_400_000), '90 minutes');
  t.equal(durationInWords(3_600_000), '1 hour');
  t.equal(durationInWords(61_000), '61 seconds');
  t.equal(durationInWords(60_001), '60001 milliseconds');
});

// Two collectors holding claims of one delivery (the first's lease ended, the second claimed it)
// must not both fail it: only the current claim settles it, and records the one attempt.
t.test('a delivery failed unsent is failed by its current claim alone, with one attempt', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const created = await api.request('POST', `/api/orgs/${org.id}/webhooks`, { key: adminKey, body: { url: 'http://127.0.0.1:9/', events: ['*'] } });
  t.equal(created.status, 201, 'webhook created');
  await db('key_events').insert({ org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: new Date(), details: {} });
  const ours = () => db('webhook_deliveries').where({ org_id: org.id });
  // Other tests' deliveries may be due too (npm run test:citus shares one database): this org's only.
  const claim = async () => (await claimDueDeliveries(db, { leaseMs: 60_000, limit: 100, maxAttempts: 8 })).deliveries.find((d) => d.orgId === org.id)!;
  const stale = await claim();
  await ours().update({ next_attempt_at: db.raw(`now() - interval '1 second'`) });
  const current = await claim();
  t.equal(await failUnsent(db, stale, new Date(), 'unopened'), false, 'the stale claim records nothing');
  t.equal(await failUnsent(db, current, new Date(), 'unopened'), true, 'the current claim fails it');
  t.equal(await failUnsent(db, current, new Date(), 'unopened'), false, 'once');
  t.match(await ours().first('status', 'attempts'), { status: 'failed', attempts: 2 });
  t.same(
    (await db('webhook_delivery_attempts').where({ org_id: org.id }).select('attempt', 'error')).map((row) => [row.attempt, row.error]),
    [[2, 'unopened']],
    "one attempt, the current claim's",
  );
});
