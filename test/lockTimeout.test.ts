// A session that holds a usage row and never ends its transaction (an operator's psql left open, a
// stuck job) made the collector's flush, or its fold of the usage log, wait for ever: nothing was
// written for any key, and nothing said why. With COLLECTOR_LOCK_TIMEOUT_MS (the write's own
// lock_timeout, set in its transaction) the statement gives up, the write fails like any other
// (retried, counted, logged with PostgreSQL's reason), and its uses are written once when the row
// is free. The usage log's append takes the same timeout: a lock on the log held the same way
// blocked every flush of a collector that appends.
import t, { type Test } from 'tap';
import { sleep, waitFor } from '../harness/wait';
import { createOrg, insertKeys } from '../bench/lib/database';
import { createDb, type Db } from '../shared/db';
import { TABLE } from '../shared/tables';
import { within } from '../shared/within';
import { encodeUsageLine } from '../shared/usageWire';
import { freshDatabase } from './helpers/database';
import { sendDatagrams, startTestCollector } from './helpers/collector';

const LOCK_TIMEOUT_MS = 300;

const usesOf = async (db: Db, keyId: string) => Number((await db('api_key_usage').where({ key_id: keyId }).first())?.request_count ?? 0);

// What each case holds, and which of the collector's writes it blocks: the usage row blocks a
// direct flush, or with the usage log the fold; a lock on the log (an index built on it, an
// operator's LOCK TABLE) blocks the append.
const HELD_ROW = 'select 1 from api_key_usage where org_id = ? and key_id = ? for update';
const cases = [
  { usageLog: false, what: 'a held row', hold: HELD_ROW, blocked: 'failedFlushes' },
  { usageLog: true, what: 'a held row', hold: HELD_ROW, blocked: 'failedFolds' },
  { usageLog: true, what: 'a lock on the log', hold: `lock table ${TABLE.usageLog} in share mode`, blocked: 'failedFlushes' },
] as const;

// A collector with one key, its first use written, and a transaction of another session, open,
// to hold what a test holds.
async function collectorWithWrittenKey(t: Test, env: Record<string, string>) {
  const { db, url } = await freshDatabase(t);
  const orgId = await createOrg(db, 'held');
  const [keyId] = await insertKeys(db, orgId, 1, 'held-');
  const collector = await startTestCollector(t, url, env);
  const use = (count: number) => sendDatagrams(collector.receiver.port, [encodeUsageLine({ orgId, keyId, ip: '192.0.2.1', outcome: 'ok', count })]);
  await use(1);
  await waitFor('the first use to be written', async () => ((await usesOf(db, keyId)) === 1 ? true : undefined));
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const held = await holder.transaction();
  return { db, collector, use, held, orgId, keyId };
}

for (const { usageLog, what, hold, blocked } of cases) {
  t.test(`usage log ${usageLog ? 'on' : 'off'}: a write blocked by ${what} fails after the lock timeout and is written once it is free`, async (t) => {
    const env = { COLLECTOR_LOCK_TIMEOUT_MS: String(LOCK_TIMEOUT_MS), COLLECTOR_USAGE_LOG: String(usageLog) };
    const { db, collector, use, held, orgId, keyId } = await collectorWithWrittenKey(t, env);
    const [{ lock_timeout: setting }] = (await collector.db.raw('show lock_timeout')).rows;
    t.equal(setting, '0', "the collector's other statements keep the server's setting");
    // By org and key: Citus runs FOR UPDATE only on a query it can route to one shard.
    await held.raw(hold, hold === HELD_ROW ? [orgId, keyId] : []);
    const failures = () => collector.flusher.stats[blocked];
    try {
      await use(5);
      await waitFor('the blocked write to give up three times', () => (failures() >= 3 ? true : undefined));
      const health = await fetch(`http://127.0.0.1:${collector.metricsPort}/healthz`);
      t.equal(health.status, 503, `/healthz is red after three ${blocked}`);
      t.equal((await fetch(`http://127.0.0.1:${collector.metricsPort}/livez`)).status, 200, '/livez, the probe to restart on, is not');
      t.equal(await usesOf(db, keyId), 1, 'nothing written while it is held');
      t.ok(
        collector.logLines.some((line) => line.includes('lock timeout') && line.includes('55P03')),
        "the failure is logged with PostgreSQL's reason and code",
      );
    } finally {
      await held.rollback();
    }
    await waitFor('the uses to be written once it is free', async () => ((await usesOf(db, keyId)) === 6 ? true : undefined));
    t.ok(await collector.stop(), 'the collector stops with nothing pending');
    t.equal(await usesOf(db, keyId), 6, 'every use once');
  });
}

// LOCK TABLE's default mode, as DDL takes: reads of the log wait too, so the fold waits at its
// first statement, the count of the log's rows by org.
async function holdLogExclusively(t: Test, url: string) {
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const held = await holder.transaction();
  await held.raw(`lock table ${TABLE.usageLog}`);
  return held;
}

t.test('a fold that finds the log locked exclusively gives up after the lock timeout', async (t) => {
  const { url } = await freshDatabase(t);
  const held = await holdLogExclusively(t, url);
  try {
    const collector = await startTestCollector(t, url, { COLLECTOR_LOCK_TIMEOUT_MS: String(LOCK_TIMEOUT_MS) });
    await waitFor('the fold begun at start to give up', () => (collector.flusher.stats.failedFolds >= 1 ? true : undefined));
  } finally {
    await held.rollback();
  }
});

t.test('stop keeps its deadline while a fold waits on a lock with no timeout', async (t) => {
  const { url } = await freshDatabase(t);
  const held = await holdLogExclusively(t, url);
  const collector = await startTestCollector(t, url, { COLLECTOR_LOCK_TIMEOUT_MS: '0' });
  try {
    await waitFor('the fold begun at start to wait', () => (collector.flusher.foldRunningMs > 0 ? true : undefined));
    t.equal(await within(collector.stop(1000), 30_000), true, 'stop returns, with nothing pending');
    t.ok(collector.logLines.some((line) => line.includes('a write, fold, key-list read or upkeep task (a webhook send, retention) is still running at stop')));
  } finally {
    await held.rollback();
  }
  await waitFor('the fold to end once the lock is gone', () => (collector.flusher.foldRunningMs === 0 ? true : undefined));
});

t.test('a final flush that commits after the flusher stopped waiting for it is not reported lost', async (t) => {
  const { db, collector, use, held, orgId, keyId } = await collectorWithWrittenKey(t, { COLLECTOR_LOCK_TIMEOUT_MS: '0', COLLECTOR_USAGE_LOG: 'false' });
  await held.raw(HELD_ROW, [orgId, keyId]);
  await use(5);
  await waitFor('the uses to be received', () => (collector.ingest.usesReceived === 6 ? true : undefined));
  const stopped = collector.stop(500);
  // Past the flusher's deadline, within the pool's wait.
  await sleep(1500);
  await held.rollback();
  t.equal(await stopped, true, 'stop reports the uses written');
  t.notOk(
    collector.logLines.some((line) => line.includes('these uses are lost')),
    'nothing reported lost',
  );
  t.equal(await usesOf(db, keyId), 6);
});
