// COLLECTOR_FOLD_THREAD (collector/foldThread.ts, collector/foldWorker.ts): the usage log's folds
// run in a worker thread with a pool of their own; results and errors cross back intact.
import t from 'tap';
import { startFoldThread } from '../collector/foldThread';
import { MessageChannel } from 'node:worker_threads';
import { FOLD_WORKER, fromFailure, serveFolds, toFailure, type FoldReply } from '../collector/foldWorker';
import { CommitInDoubtError, PartlyWrittenError, type WriteResult } from '../collector/usageStore';
import { createOrg, insertKeys } from '../bench/lib/database';
import { waitFor } from '../harness/wait';
import { TABLE } from '../shared/tables';
import { encodeUsageLine } from '../shared/usageWire';
import type { Db } from '../shared/db';
import { freshDatabase } from './helpers/database';
import { sendDatagrams, startTestCollector } from './helpers/collector';

// The fold thread's connections to this test's database (its pool names them FOLD_WORKER), or
// those waiting for `waitingFor` (pg_stat_activity's wait_event_type).
const foldConnections = async (db: Db, waitingFor?: string) =>
  Number(
    (
      await db.raw(
        `select count(*)::int as n from pg_stat_activity
          where application_name = ? and datname = current_database() and (cast(? as text) is null or wait_event_type = ?)`,
        [FOLD_WORKER, waitingFor ?? null, waitingFor ?? null],
      )
    ).rows[0].n,
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
  const fold = thread.fold().then(
    () => 'folded',
    (error: Error) => error.message,
  );
  await waitFor('the fold to wait on the lock', async () => ((await foldConnections(db, 'Lock')) >= 1 ? true : undefined), 10_000);
  t.equal(await thread.stop(200), false, 'not closed in time: terminated');
  t.match(await fold, /the fold thread exited/);
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

// The thread's side, served on a channel of this thread: coverage is not collected from worker
// threads, and this is the code they run.
t.test('the fold thread’s service: ready, a fold’s result, a failure, and a stop that closes its port', async (t) => {
  const { db, url } = await freshDatabase(t);
  const orgId = await createOrg(db, 'served');
  const [keyId] = await insertKeys(db, orgId, 1, 'served-');
  await db(TABLE.usageLog).insert({ org_id: orgId, key_id: keyId, delta: '[4,4,0,0,0,0,0,null,"",null,"",null,null,0,0,0]' });
  const { port1, port2 } = new MessageChannel();
  const replies: FoldReply[] = [];
  port2.on('message', (reply: FoldReply) => replies.push(reply));
  const closed = new Promise<void>((resolve) => port2.once('close', () => resolve()));
  await serveFolds(port1, { role: FOLD_WORKER, databaseUrl: url, connectTimeoutMs: 2_000, store: { logMinKeys: 1 } });
  port2.postMessage({ id: 1, cmd: 'fold' });
  await waitFor('the fold’s reply', () => (replies.length === 2 ? true : undefined), 10_000);
  t.same(replies[0], { ready: true });
  t.match(replies[1], { id: 1, result: { usesWritten: 4, logRowsLeft: 0 } });
  t.equal(await usesOf(db, orgId), 4);
  // A row it cannot decode is set aside (quarantined), reported in the result.
  await db(TABLE.usageLog).insert({ org_id: orgId, key_id: keyId, delta: 'not a delta' });
  port2.postMessage({ id: 2, cmd: 'fold' });
  await waitFor('the second fold’s reply', () => (replies.length === 3 ? true : undefined), 10_000);
  t.match(replies[2], { id: 2, result: { usesWritten: 0, quarantined: [{ keyId, orgId, uses: 0 }] } });
  port2.postMessage({ id: 3, cmd: 'stop' });
  await closed;
  t.equal(replies.length, 3, 'a stop is answered by the port closing, nothing else');
});
