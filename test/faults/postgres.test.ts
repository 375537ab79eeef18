// PostgreSQL faults under a real collector process: the database unavailable for a while during
// traffic, and connections cut at chosen protocol messages — in particular right after COMMIT was
// forwarded (the commit lands, the collector never hears back) and instead of COMMIT (it never lands).
import t, { type Test } from 'tap';
import { OUTCOMES, type UsageSample } from '../../shared/usageWire';
import { mib } from '../../harness/processMemory';
import type { Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';
import { sleep, waitFor } from '../../harness/wait';
import {
  LONG,
  Ledger,
  PgProxy,
  UdpSender,
  countMismatches,
  databaseWithKeys,
  persistedUsage,
  reportFigures,
  shipmentsOf,
  spawnCollector,
  type CutMode,
  type FaultCollector,
  type SeededKey,
} from '../helpers/faults';

const IPS = ['192.0.2.10', '198.51.100.20', '2001:db8::30'];

async function setup(t: Test, keyCount: number, flushIntervalMs: number, env: Record<string, string> = {}) {
  const { db, url, orgId, keys } = await databaseWithKeys(t, 'pgfaults', keyCount);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const collector = await spawnCollector(t, { databaseUrl: proxy.url, flushIntervalMs, maxPendingKeys: 1000, env });
  const sender = new UdpSender(collector.udpPort);
  t.teardown(() => sender.close());
  return { db, orgId, keys, proxy, collector, sender, ledger: new Ledger() };
}

/**
 * Waits until the collector has received everything sent and holds nothing back: the batch of a
 * flush stays pending until its write returns, so no pending key means every batch was written
 * (or, for the bug below, believed written). uses_persisted_total is not the signal: a batch whose
 * COMMIT landed unseen is skipped on retry and never credited to it.
 */
async function settled(collector: FaultCollector, sentUses: number, timeoutMs: number, db?: Db) {
  let lastSeen = {};
  try {
    return await waitFor(
      'the collector to persist everything it received',
      async () => {
        const m = await collector.metrics();
        // With the usage log, its rows are not counted until a fold applied them.
        const logRows = db === undefined ? 0 : Number((await db(TABLE.usageLog).count({ n: '*' }))[0].n);
        lastSeen = { sentUses, logRows, ...m };
        return m.uses_received_total === sentUses && m.pending_keys === 0 && logRows === 0 ? m : undefined;
      },
      timeoutMs,
      50,
    );
  } catch (error) {
    // The failure says which condition held out, what the collector said last, and what the
    // server's other sessions were doing: with these a rare timeout here (1 run in about 50) was
    // traced to a fold not made due after an in-doubt append (fixed in collector/flusher.ts).
    const server = db === undefined ? '' : `; the server's sessions: ${JSON.stringify(await serverSessions(db).catch((e: Error) => e.message))}`;
    throw new Error(
      `${(error as Error).message}; last seen ${JSON.stringify(lastSeen)}${server}; the collector's last lines:\n${collector.output.slice(-30).join('\n')}`,
      { cause: error },
    );
  }
}

// Every other session on the test's database that is not idle, and the advisory locks (the
// folds' org locks) held or awaited: a fold stuck on a lock, or a session that outlived its client.
async function serverSessions(db: Db) {
  const sessions = await db.raw(
    `select pid, state, wait_event_type, wait_event, now() - xact_start as in_transaction, left(query, 100) as query
       from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and state <> 'idle'`,
  );
  const locks = await db.raw(`select pid, objid, granted from pg_locks where locktype = 'advisory'`);
  return { sessions: sessions.rows, advisoryLocks: locks.rows };
}

// 8 samples per tick over the keys, every address and outcome in turn.
function steadyTraffic(orgId: string, keys: readonly SeededKey[], ledger: Ledger) {
  return (tick: number) => {
    const samples: UsageSample[] = Array.from({ length: 8 }, (_, j) => ({
      keyId: keys[(tick * 7 + j) % keys.length].id,
      orgId,
      ip: IPS[(tick + j) % IPS.length],
      outcome: OUTCOMES[(tick + j) % OUTCOMES.length],
      count: 1 + ((tick + j) % 5),
    }));
    return shipmentsOf(ledger.add(samples));
  };
}

// PostgreSQL away for `outageMs`: the collector's pending keys, failed flushes and health, every
// 200 ms, and the uses sent meanwhile.
async function outage(proxy: PgProxy, collector: FaultCollector, sender: UdpSender, outageMs: number) {
  const downAt = Date.now();
  await proxy.down();
  const during: Array<{ pending: number; failed: number; health: number }> = [];
  while (Date.now() - downAt < outageMs) {
    const m = await collector.metrics();
    during.push({ pending: m.pending_keys, failed: m.failed_flushes_total, health: await collector.health() });
    await sleep(200);
  }
  const sentDuringOutage = sender.sentUses - sender.usesSentBy(downAt);
  await proxy.up();
  return { during, sentDuringOutage };
}

// Each failed flush is logged at error level with its cause and the retry delay, which grows.
function assertBackoffLogged(t: Test, collector: FaultCollector, outageMs: number): number[] {
  const failures = collector.logs().filter((line) => line.msg === 'flush failed; usage kept in memory and retried');
  t.ok(failures.length >= 2, `each failed flush is logged (${failures.length} lines)`);
  const delays = failures.map((line) => Number(line.retryInMs));
  t.ok(
    delays.every((delay, i) => i === 0 || delay >= delays[i - 1]),
    `retries back off: ${delays.join(', ')} ms`,
  );
  t.ok(
    failures.every((line) => line.level === 50 && typeof (line.err as { message?: string })?.message === 'string'),
    'logged at error level with the cause',
  );
  t.ok(failures.length <= 2 + Math.log2(outageMs / 200) + outageMs / 30_000, 'backoff keeps the log quiet: no line per interval');
  return delays;
}

// Every key's total, outcomes, hourly buckets and recent-IP counts equal what the ledger sent.
async function assertEveryKeyExact(t: Test, db: Db, keys: readonly SeededKey[], ledger: Ledger) {
  t.same(await countMismatches(db, ledger), [], 'every key counted exactly once');
  const persisted = await persistedUsage(
    db,
    keys.map((k) => k.id),
  );
  t.equal(persisted.total, ledger.total, 'the totals sum to the uses sent');
  for (const key of keys) {
    if (persisted.outcomes(key.id).ok !== ledger.byKeyOutcome.get(key.id)?.ok) t.fail(`outcome counts of ${key.id}`);
    if (persisted.hourly.get(key.id) !== ledger.byKey.get(key.id)) t.fail(`hourly buckets of ${key.id}`);
    if (persisted.ips.get(key.id)?.total !== ledger.byKey.get(key.id)) t.fail(`recent IPs of ${key.id}`);
  }
  t.same(
    keys.map((k) => persisted.outcomes(k.id)),
    keys.map((k) => ledger.byKeyOutcome.get(k.id)),
    'counts by outcome, hourly buckets and recent-IP counts all agree',
  );
  return persisted;
}

t.test('PostgreSQL unavailable during traffic: the collector keeps aggregating, retries with backoff, and counts every use once', async (t) => {
  const outageMs = LONG ? 20_000 : 2_500;
  const { db, orgId, keys, proxy, collector, sender, ledger } = await setup(t, 20, 200);

  let stop = false;
  const traffic = sender.stream(steadyTraffic(orgId, keys, ledger), { tickMs: 10, maxMs: outageMs + 10_000, stop: () => stop });

  // A precondition, not a timing claim: on a loaded machine the first (cold) flush of a fresh
  // process, which also records each key's first-use events, can take longer than 600 ms. Uses
  // in PostgreSQL, not a flush counted, say the flushes reached it before the outage (waitFor
  // fails the test if they never do).
  await sleep(600);
  const keyIds = keys.map((k) => k.id);
  await waitFor('uses persisted before the outage', async () => ((await persistedUsage(db, keyIds)).total > 0 ? true : undefined), 10_000);
  const { during, sentDuringOutage } = await outage(proxy, collector, sender, outageMs);
  const upAt = Date.now();
  await sleep(600);
  stop = true;
  await traffic;

  const final = await settled(collector, ledger.total, LONG ? 60_000 : 20_000);
  const recoveredMs = Date.now() - upAt;
  t.equal(final.packets_total, sender.datagrams, 'every datagram reached the collector (loopback dropped none)');
  t.equal(final.uses_received_total, ledger.total, 'every use sent was received');
  t.equal(final.uses_persisted_total, ledger.total, 'and persisted, per its own metrics');
  t.ok(final.failed_flushes_total >= 2, `flushes failed while PostgreSQL was away (${final.failed_flushes_total})`);
  t.equal(await collector.health(), 200, 'healthy again after recovery');
  t.ok(
    during.some((d) => d.failed > 0),
    'failures were visible in /metrics during the outage',
  );
  const peakPending = Math.max(...during.map((d) => d.pending));
  // A key is pending at most twice: in the batch kept for retry and again in the aggregator.
  t.ok(peakPending <= 2 * keys.length, `pending keys stay within twice the keys in use (${peakPending}; the cap is 1000)`);
  if (outageMs >= 1500)
    t.ok(
      during.some((d) => d.health === 503),
      'the health check turns 503 after repeated failed flushes',
    );

  const persisted = await assertEveryKeyExact(t, db, keys, ledger);

  const delays = assertBackoffLogged(t, collector, outageMs);
  t.equal(collector.child.proc.exitCode, null, 'the collector never crashed');
  t.equal((await collector.sigterm()).code, 0, 'and exits 0 on SIGTERM');

  reportFigures(t, 'postgres-outage', {
    outageMs,
    usesSent: ledger.total,
    usesSentDuringOutage: sentDuringOutage,
    usesPersisted: persisted.total,
    duplicates: persisted.total - ledger.total,
    failedFlushes: final.failed_flushes_total,
    retryDelaysMs: delays,
    recoveredWithinMs: recoveredMs,
    crashes: 0,
    peakRssMiB: mib(collector.peakRssBytes()),
  });
});

// One use batch per cut, so each cut hits exactly the flush that carries it; then waits for the
// retry to go through (a success resets the backoff, so every cut starts from the same state).
async function cutOnce(t: Test, env: Awaited<ReturnType<typeof setup>>, pattern: RegExp, mode: CutMode, count: number, logged = false) {
  const { orgId, keys, proxy, sender, ledger, collector } = env;
  const cut = proxy.cutAt(pattern, mode);
  await sender.send(shipmentsOf(ledger.add([{ keyId: keys[0].id, orgId, ip: IPS[0], outcome: 'ok', count }])));
  await waitFor(`the cut at ${pattern} (${mode})`, () => Promise.race([cut.then(() => true), sleep(25).then(() => undefined)]), 10_000);
  t.pass(`cut the connection at ${pattern} (${mode})`);
  return settled(collector, ledger.total, 10_000, logged ? env.db : undefined);
}

t.test('connections cut mid-flush (one collector, one proxy, one cut per flush)', async (t) => {
  const env = await setup(t, 2, 100);
  const { db, keys, collector, ledger, proxy } = env;
  const persistedNow = async () => (await persistedUsage(db, [keys[0].id])).count(keys[0].id);

  await t.test('the connection drops after COMMIT reached PostgreSQL but before its reply: no use is counted twice', async (t) => {
    const sentBefore = ledger.total;
    const persistedBefore = await persistedNow();
    const flushIdsBefore = Number((await db('usage_flushes').count({ n: '*' }))[0].n);
    await cutOnce(t, env, /^COMMIT/i, 'after-forward', 100);
    await env.sender.send(shipmentsOf(ledger.add([{ keyId: keys[0].id, orgId: env.orgId, ip: IPS[1], outcome: 'ok', count: 23 }])));
    const m = await settled(collector, ledger.total, 20_000);
    await sleep(300); // three more intervals: a wrong retry would land now
    const persisted = (await persistedNow()) - persistedBefore;
    const flushIds = Number((await db('usage_flushes').count({ n: '*' }))[0].n) - flushIdsBefore;
    t.ok(proxy.stats.commitsForwarded >= 1, 'the COMMIT was forwarded before the cut');
    t.equal(persisted, ledger.total - sentBefore, 'counted once: the landed commit was not applied again');
    t.ok(flushIds >= 2, `the cut flush's id was recorded with its commit, then the next one's (${flushIds} ids)`);
    // The flusher's in-doubt path (CommitInDoubtError → keep the batch id → skip it on retry) runs
    // because the store awaits trx.executionPromise: knex 3's trx.commit() alone resolves even when
    // the COMMIT query fails.
    t.ok(
      m.failed_flushes_total >= 1 && m.duplicate_batches_skipped_total >= 1,
      `the lost reply is noticed and the retry skipped as a duplicate (failed ${m.failed_flushes_total}, skipped ${m.duplicate_batches_skipped_total})`,
    );
    reportFigures(t, 'commit-reply-lost', {
      usesSent: ledger.total - sentBefore,
      usesPersisted: persisted,
      duplicates: persisted - (ledger.total - sentBefore),
      failedFlushes: m.failed_flushes_total,
      duplicateBatchesSkipped: m.duplicate_batches_skipped_total,
      usesClaimedPersisted: m.uses_persisted_total,
    });
  });

  await t.test('cut at every other statement of a flush: retried, nothing lost, nothing doubled', async (t) => {
    const failedBefore = (await collector.metrics()).failed_flushes_total;
    const sentBefore = ledger.total;
    // Every statement knex sends in a flush transaction, cut before and after it reached PostgreSQL,
    // except "instead of COMMIT", which the last test covers.
    const points: Array<[RegExp, CutMode]> = [
      [/^BEGIN/i, 'before-forward'],
      [/^BEGIN/i, 'after-forward'],
      [/insert into usage_flushes/i, 'before-forward'],
      [/insert into usage_flushes/i, 'after-forward'],
      [/insert into api_key_usage \(/i, 'before-forward'],
      [/insert into api_key_usage \(/i, 'after-forward'],
      [/insert into api_key_usage_current_hours/i, 'after-forward'],
      [/insert into api_key_recent_ips/i, 'before-forward'],
      [/^COMMIT/i, 'after-forward'],
    ];
    for (const [i, [pattern, mode]] of points.entries()) {
      await cutOnce(t, env, pattern, mode, 10 + i);
      t.same(await countMismatches(db, ledger), [], `${ledger.total} uses, exactly, after the cut`);
    }
    await sleep(300);
    const m = await collector.metrics();
    t.same(await countMismatches(db, ledger), [], `exactly ${ledger.total} uses after ${points.length} more cuts`);
    const failed = m.failed_flushes_total - failedBefore;
    t.ok(failed >= points.length - 1, `each cut before COMMIT failed a flush that was retried (${failed})`);
    t.equal(collector.child.proc.exitCode, null, 'no crash');
    reportFigures(t, 'connection-cuts', {
      cuts: points.length,
      usesSent: ledger.total - sentBefore,
      usesPersisted: ledger.total - sentBefore,
      failedFlushes: failed,
    });
  });

  await t.test('the connection drops before COMMIT reaches PostgreSQL: the batch is retried, not lost', async (t) => {
    const sentBefore = ledger.total;
    const persistedBefore = await persistedNow();
    const { uses_persisted_total: claimedBefore, failed_flushes_total: failedBefore } = await collector.metrics();
    const m = await cutOnce(t, env, /^COMMIT/i, 'before-forward', 100);
    await sleep(500);
    const persisted = (await persistedNow()) - persistedBefore;
    const claimed = (await collector.metrics()).uses_persisted_total - claimedBefore;
    reportFigures(t, 'commit-never-sent', {
      usesSent: ledger.total - sentBefore,
      usesPersisted: persisted,
      usesClaimedPersisted: claimed,
      failedFlushes: m.failed_flushes_total - failedBefore,
    });
    t.equal(persisted, ledger.total - sentBefore, 'the rolled-back batch was written by a retry');
    t.equal(claimed, persisted, 'uses_persisted_total matches PostgreSQL');
  });
});

// No FIN, no RST: the server's reply never comes (a NAT's state dropped). Before the reply
// timeout the flush in progress waited on the kernel's retransmissions, about 15 minutes, and held
// every later flush while /healthz stayed green. The server does not hear the close either: its
// session, idle in the flush's transaction, holds the batch's ledger row until
// DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS, and the retries wait for it.
t.test('the network goes silent mid-flush: the connection is closed after DATABASE_REPLY_TIMEOUT_MS, the flush retried, nothing lost or doubled', async (t) => {
  const env = await setup(t, 2, 100, {
    DATABASE_REPLY_TIMEOUT_MS: '1000',
    COLLECTOR_LOCK_TIMEOUT_MS: '500',
    API_STATEMENT_TIMEOUT_MS: '500',
    DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '1000',
  });
  const { db, collector, ledger } = env;
  const points = [/insert into api_key_usage \(/i, /^COMMIT/i];
  for (const [i, pattern] of points.entries()) {
    await cutOnce(t, env, pattern, 'silence', 30 + i);
    t.same(await countMismatches(db, ledger), [], `${ledger.total} uses, exactly, after the silence at ${pattern}`);
  }
  const m = await collector.metrics();
  t.ok(m.failed_flushes_total >= points.length, `each silent flush failed and was retried (${m.failed_flushes_total})`);
  t.ok(
    collector.output.some((line) => line.includes('DATABASE_REPLY_TIMEOUT_MS')),
    'the failure names the limit that closed the connection',
  );
});

// The same cuts with COLLECTOR_USAGE_LOG: a flush appends to the log (ledger claim, COPY, commit)
// and a fold applies it (org locks, the log's delete, the upserts, commit). A COMMIT cut may hit
// either; both are exactly once.
t.test('connections cut in the appends and folds of the usage log: retried, nothing lost, nothing doubled', async (t) => {
  const env = await setup(t, 2, 100, { COLLECTOR_USAGE_LOG: 'true' });
  const { db, collector, ledger } = env;
  const points: Array<[RegExp, CutMode]> = [
    [/insert into usage_flushes/i, 'before-forward'],
    [/insert into usage_flushes/i, 'after-forward'],
    [/^copy api_key_usage_log/i, 'before-forward'],
    [/^copy api_key_usage_log/i, 'after-forward'],
    [/^COMMIT/i, 'after-forward'],
    [/^COMMIT/i, 'before-forward'],
    [/pg_try_advisory_xact_lock/i, 'before-forward'],
    [/^delete from api_key_usage_log/i, 'before-forward'],
    [/^delete from api_key_usage_log/i, 'after-forward'],
    [/insert into api_key_usage \(/i, 'after-forward'],
    [/^COMMIT/i, 'after-forward'],
  ];
  for (const [i, [pattern, mode]] of points.entries()) {
    await cutOnce(t, env, pattern, mode, 10 + i, true);
    t.same(await countMismatches(db, ledger), [], `${ledger.total} uses, exactly, after the cut`);
  }
  await sleep(300);
  t.same(await countMismatches(db, ledger), [], `exactly ${ledger.total} uses after ${points.length} cuts`);
  const m = await collector.metrics();
  t.ok(
    m.failed_flushes_total >= 1 && m.failed_folds_total >= 1,
    `appends and folds failed and were retried (${m.failed_flushes_total}, ${m.failed_folds_total})`,
  );
  // What the alerts read: the streaks end, though the fold after the last cut finds nothing.
  const streaks = async () => {
    const now = await collector.metrics();
    return now.consecutive_failed_flushes === 0 && now.consecutive_failed_folds === 0 ? true : undefined;
  };
  t.ok(await waitFor('the failure streaks to end', streaks), 'no failure streak after the cuts');
  t.equal(collector.child.proc.exitCode, null, 'no crash');
});
