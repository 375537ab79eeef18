import t from 'tap';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { encodeUsageLine } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { freshDatabase } from './helpers/database';

// A wall clock stepped back (NTP, a restored VM) must not hold the collector's retries: they
// were scheduled on it, so a failed flush was next tried only once the clock had caught up, an
// hour later for an hour's step, while /healthz stayed green and the aggregator filled.

t.test('a failed flush is retried on time after the wall clock steps back an hour', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const real = createPgUsageStore(db);
  let writes = 0;
  const failingOnce: UsageStore = {
    ...real,
    async write(batches, toLog) {
      writes += 1;
      if (writes === 1) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
      return real.write(batches, toLog);
    },
  };
  // The step lands once the failure is logged, which is after its retry was scheduled, and before
  // the retry is due (one flush interval later).
  let failureLogged = () => false;
  const wallClock = () => (failureLogged() ? Date.now() - 3_600_000 : Date.now());
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '300' }, { store: failingOnce, now: wallClock });
  failureLogged = () => collector.logLines.some((line) => line.includes('flush failed; usage kept in memory and retried'));
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: '198.51.100.7', outcome: 'ok', count: 4 })]);
  await waitFor('the retry to write the use', async () => {
    const row = await db('api_key_usage').where({ key_id: adminKeyId }).first();
    return row?.request_count === 4 ? true : undefined;
  });
  t.equal(writes, 2, 'one failure, one retry');
  t.equal(collector.flusher.stats.failedFlushes, 1);
});
