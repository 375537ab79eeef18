// COLLECTOR_FOLD_THREAD (collector/foldThread.ts, collector/foldWorker.ts): the usage log's folds
// run in a worker thread with a pool of their own; results and errors cross back intact.
import t from 'tap';
import { startFoldThread } from '../collector/foldThread';
import { FOLD_WORKER, fromFailure, toFailure } from '../collector/foldWorker';
import { CommitInDoubtError, PartlyWrittenError, type WriteResult } from '../collector/usageStore';
import { createOrg, insertKeys } from '../bench/lib/database';
import { waitFor } from '../harness/wait';
import { TABLE } from '../shared/tables';
import { encodeUsageLine } from '../shared/usageWire';
import type { Db } from '../shared/db';
import { freshDatabase } from './helpers/database';
import { sendDatagrams, startTestCollector } from './helpers/collector';

// The fold thread's connections to this test's database (its pool names them FOLD_WORKER).
const foldConnections = async (db: Db) =>
  Number(
    (await db.raw(`select count(*)::int as n from pg_stat_activity where application_name = ? and datname = current_database()`, [FOLD_WORKER])).rows[0].n,
  );
const usesOf = async (db: Db, orgId: string) => Number((await db(TABLE.usage).where({ org_id: orgId }).sum({ n: 'request_count' }).first())?.n ?? 0);

t.test('a collector folds in its fold thread, on the thread’s own pool, and closes it at stop', async (t) => {
  const { db, url } = await freshDatabase(t);
  const orgId = await createOrg(db, 'threaded');
  const keyIds = await insertKeys(db, orgId, 3, 'threaded-');
  const collector = await startTestCollector(t, url, { COLLECTOR_USAGE_LOG: 'true' });
  const lines = keyIds.map((keyId) => encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 2 }));
  await sendDatagrams(collector.receiver.port, lines);
  await waitFor('the fold', async () => ((await usesOf(db, orgId)) === 6 ? true : undefined), 10_000);
  await waitFor('the fold to be counted', () => (collector.flusher.stats.usesFolded === 6 ? true : undefined));
  t.ok((await foldConnections(db)) >= 1, 'the fold ran on the fold thread’s pool');
  t.equal(await collector.stop(), true);
  await waitFor('the fold thread’s connections to close', async () => ((await foldConnections(db)) === 0 ? true : undefined), 5_000);
  t.equal(await usesOf(db, orgId), 6);
});

t.test('COLLECTOR_FOLD_THREAD=false folds on the collector’s own pool', async (t) => {
  const { db, url } = await freshDatabase(t);
  const orgId = await createOrg(db, 'unthreaded');
  const [keyId] = await insertKeys(db, orgId, 1, 'unthreaded-');
  const collector = await startTestCollector(t, url, { COLLECTOR_USAGE_LOG: 'true', COLLECTOR_FOLD_THREAD: 'false' });
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 5 })]);
  await waitFor('the fold', async () => ((await usesOf(db, orgId)) === 5 ? true : undefined), 10_000);
  t.equal(await foldConnections(db), 0);
});

t.test('a fold thread stopped while its fold waits on a lock is terminated, and its fold fails', async (t) => {
  const { db, url } = await freshDatabase(t);
  const thread = await startFoldThread({ databaseUrl: url, connectTimeoutMs: 2_000, store: { logMinKeys: 1, lockTimeoutMs: 0 } });
  const holder = await db.transaction();
  t.teardown(() => holder.rollback().catch(() => undefined));
  await holder.raw(`lock table ${TABLE.usageLog} in access exclusive mode`);
  const fold = thread.fold();
  await waitFor('the fold to wait on the lock', async () => ((await foldConnections(db)) >= 1 ? true : undefined), 10_000);
  t.equal(await thread.stop(200), false, 'not closed in time: terminated');
  await t.rejects(fold, /the fold thread exited/);
  await t.rejects(thread.fold(), /the fold thread is stopped/);
  // PostgreSQL notices the closed connection only when the lock is granted and it answers.
  await holder.rollback();
  await waitFor('the terminated thread’s connection to close', async () => ((await foldConnections(db)) === 0 ? true : undefined), 5_000);
});

t.test('a fold thread reports its fold’s error, code included', async (t) => {
  // A port nothing listens on: the fold's first read fails to connect.
  const thread = await startFoldThread({ databaseUrl: 'postgres://nobody:nothing@127.0.0.1:9/none', connectTimeoutMs: 500, store: { logMinKeys: 1 } });
  t.teardown(() => thread.stop(1_000));
  const error = await thread.fold().catch((e: Error & { code?: string }) => e);
  t.match(error, { code: 'ECONNREFUSED' });
  t.equal(await thread.stop(5_000), true, 'an idle thread closes in time');
});

t.test('a fold’s error crosses the thread as the class the flusher reads', async (t) => {
  const written = { keysWritten: 3, usesWritten: 7 } as WriteResult;
  const cause = Object.assign(new Error('connection lost'), { code: '08006' });
  const partly = fromFailure(toFailure(new PartlyWrittenError(cause, written)));
  t.ok(partly instanceof PartlyWrittenError);
  t.same((partly as PartlyWrittenError).written, written);
  t.match(partly, { message: /connection lost/, cause: { code: '08006' } });
  const doubt = fromFailure(toFailure(new CommitInDoubtError(cause)));
  t.ok(doubt instanceof CommitInDoubtError && !(doubt instanceof PartlyWrittenError));
  t.match(doubt, { message: 'commit outcome unknown: connection lost' });
  const plain = fromFailure(toFailure(Object.assign(new Error('lock timeout'), { code: '55P03' })));
  t.notOk(plain instanceof CommitInDoubtError);
  t.match(plain, { message: 'lock timeout', code: '55P03' });
  t.match(fromFailure(toFailure('a string')), { message: 'a string' });
});
