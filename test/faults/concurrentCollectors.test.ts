// Several collectors (one beside each API instance) writing the same keys at once: the sums are
// exact and no transaction deadlocks. First with flushes forced to overlap (2 and 4 in-process
// collectors, each with its own pool), then 4 real processes flushing on their own timers.
import t, { type Test } from 'tap';
import { OUTCOMES, type UsageSample } from '../../shared/usageWire';
import type { Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';
import { sendDatagrams, startTestCollector } from '../helpers/collector';
import { shuffled } from '../../harness/random';
import { sleep, waitFor } from '../../harness/wait';
import {
  LONG,
  Ledger,
  UdpSender,
  countMismatches,
  databaseWithKeys,
  persistedUsage,
  reportFigures,
  shipmentsOf,
  spawnCollector,
  type SeededKey,
} from '../helpers/faults';

// Eight IPs per key: more than the five kept, so each flush's prune deletes rows the other
// collectors' flushes are upserting.
const IPS = Array.from({ length: 8 }, (_, i) => (i % 2 ? `2001:db8::${i + 1}` : `203.0.113.${i + 1}`));

function round(orgId: string, keys: readonly SeededKey[], r: number, c: number): UsageSample[] {
  return keys.flatMap((key, i) =>
    IPS.map((ip, j) => ({ keyId: key.id, orgId, ip, outcome: OUTCOMES[(i + j + r) % OUTCOMES.length], count: 1 + ((r + c + i + j) % 5) })),
  );
}

async function deadlocks(db: Db): Promise<number> {
  await db.raw('select pg_stat_clear_snapshot()');
  const [{ deadlocks: n }] = (await db.raw('select deadlocks from pg_stat_database where datname = current_database()')).rows;
  return Number(n);
}

async function forcedOverlap(t: Test, collectorCount: number) {
  const { db, url, orgId, keys } = await databaseWithKeys(t, `overlap${collectorCount}`, LONG ? 400 : 80, { poolMax: 2 });
  const deadlocksBefore = await deadlocks(db);
  const collectors: Array<Awaited<ReturnType<typeof startTestCollector>>> = [];
  for (let c = 0; c < collectorCount; c += 1) collectors.push(await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' }));
  const ledger = new Ledger();
  const rounds = LONG ? 20 : 3;
  let flushMs = 0;
  for (let r = 0; r < rounds; r += 1) {
    // The same keys, each collector in its own order, so the transactions meet on shared rows.
    await Promise.all(
      collectors.map((collector, c) =>
        sendDatagrams(
          collector.receiver.port,
          shipmentsOf(ledger.add(shuffled(round(orgId, keys, r, c), r * 31 + c))).map((s) => s.datagram),
        ),
      ),
    );
    await waitFor('every collector to receive the round', () =>
      collectors.every((collector) => collector.ingest.usageLines === (r + 1) * keys.length * IPS.length) ? true : undefined,
    );
    const started = Date.now();
    const flushed = await Promise.all(collectors.map((collector) => collector.flusher.flush()));
    flushMs = Math.max(flushMs, Date.now() - started);
    if (!flushed.every(Boolean)) t.fail(`round ${r}: a flush failed`);
  }
  const failed = collectors.reduce((sum, c) => sum + c.flusher.stats.failedFlushes, 0);
  await sleep(200); // the last prunes run after their flush
  const deadlockLines = collectors.flatMap((c) => c.logLines.filter((line) => /deadlock/i.test(line)));
  t.equal(failed, 0, `no failed flush (a deadlock would abort one) in ${rounds} rounds of ${collectorCount} overlapping flushes`);
  t.same(await countMismatches(db, ledger), [], `${keys.length} keys, every sum exact (${ledger.total} uses)`);
  const persisted = await persistedUsage(
    db,
    keys.map((k) => k.id),
  );
  t.equal(
    [...persisted.hourly.values()].reduce((a, b) => a + b, 0),
    ledger.total,
    'hourly buckets sum exactly',
  );
  t.same(
    keys.map((k) => persisted.outcomes(k.id)),
    keys.map((k) => ledger.byKeyOutcome.get(k.id)),
    'counts by outcome exact',
  );
  const ipRows: Array<{ n: number }> = (await db.raw('select count(*)::int as n from api_key_recent_ips group by key_id')).rows;
  t.ok(
    ipRows.every((row) => row.n <= 8),
    'recent IPs per key stay bounded',
  );
  t.same(deadlockLines, [], 'no deadlock in any log, prunes included');
  for (const collector of collectors) await collector.stop();
  await sleep(600); // backends report their statistics when they exit
  const deadlocksSeen = (await deadlocks(db)) - deadlocksBefore;
  t.equal(deadlocksSeen, 0, 'pg_stat_database counts no deadlock');
  reportFigures(t, `collectors-overlap-${collectorCount}`, {
    collectors: collectorCount,
    rounds,
    keys: keys.length,
    linesPerFlush: keys.length * IPS.length,
    usesSent: ledger.total,
    usesPersisted: persisted.total,
    duplicates: persisted.total - ledger.total,
    failedFlushes: failed,
    deadlocks: deadlocksSeen,
    slowestRoundMs: flushMs,
  });
}

t.test('2 collectors flushing the same keys at the same moment: exact sums, no deadlock', (t) => forcedOverlap(t, 2));
t.test('4 collectors flushing the same keys at the same moment: exact sums, no deadlock', (t) => forcedOverlap(t, 4));

// With COLLECTOR_USAGE_LOG each flush appends to the log and the four fold it, each org by one
// fold at a time; the last folds run as the collectors stop.
type Appends = 'every flush' | 'no flush' | 'any';

async function freeRunning(t: Test, name: string, appendsOf: (collector: number) => Appends, envOf: (collector: number) => Record<string, string>) {
  const { db, url, orgId, keys } = await databaseWithKeys(t, name, 40);
  const deadlocksBefore = await deadlocks(db);
  const collectors = await Promise.all(Array.from({ length: 4 }, (_, c) => spawnCollector(t, { databaseUrl: url, flushIntervalMs: 50, env: envOf(c) })));
  const ledger = new Ledger();
  const senders = collectors.map((collector) => new UdpSender(collector.udpPort));
  t.teardown(() => Promise.all(senders.map((s) => s.close())));
  const loadMs = LONG ? 20_000 : 1_500;
  await Promise.all(
    senders.map((sender, c) =>
      sender.stream((tick) => shipmentsOf(ledger.add(shuffled(round(orgId, keys, tick, c), tick * 7 + c).slice(0, 40))), { tickMs: 10, maxMs: loadMs }),
    ),
  );
  const metrics = await Promise.all(
    collectors.map((collector, c) =>
      waitFor(`collector ${c} to write what it received`, async () => {
        const m = await collector.metrics();
        return m.uses_received_total === senders[c].sentUses && m.pending_keys === 0 ? m : undefined;
      }),
    ),
  );
  const failed = metrics.reduce((sum, m) => sum + m.failed_flushes_total, 0);
  const flushes = metrics.reduce((sum, m) => sum + m.flushes_total, 0);
  const appended = metrics.reduce((sum, m) => sum + m.appended_flushes_total, 0);
  const codes = [];
  for (const collector of collectors) codes.push((await collector.sigterm()).code);
  const deadlockLines = collectors.flatMap((c) => c.output.filter((line) => /deadlock/i.test(line)));
  t.same(codes, [0, 0, 0, 0], 'all four exit 0');
  t.equal(failed, 0, `no failed flush in ${flushes} flushes`);
  for (const [c, m] of metrics.entries()) {
    const appends = appendsOf(c);
    if (appends !== 'any') t.equal(m.appended_flushes_total, appends === 'every flush' ? m.flushes_total : 0, `collector ${c}: ${appends} appended`);
  }
  t.equal(Number((await db(TABLE.usageLog).count({ n: '*' }))[0].n), 0, 'nothing left in the usage log');
  t.same(await countMismatches(db, ledger), [], `every sum exact (${ledger.total} uses)`);
  t.same(deadlockLines, [], 'no deadlock in any log, prunes included');
  await sleep(600);
  const deadlocksSeen = (await deadlocks(db)) - deadlocksBefore;
  t.equal(deadlocksSeen, 0, 'pg_stat_database counts no deadlock');
  const persisted = await persistedUsage(
    db,
    keys.map((k) => k.id),
  );
  reportFigures(t, `collectors-free-running-4-${name}`, {
    loadMs,
    flushes,
    appendedFlushes: appended,
    // Longer than the 50 ms interval on two cores: flushes of different collectors overlap all the time.
    lastFlushDurationsMs: metrics.map((m) => Math.round(m.last_flush_duration_seconds * 1000)),
    usesSent: ledger.total,
    usesPersisted: persisted.total,
    duplicates: persisted.total - ledger.total,
    failedFlushes: failed,
    deadlocks: deadlocksSeen,
  });
}

t.test('4 collector processes on their own 50 ms timers under sustained load: exact sums, no deadlock', (t) =>
  freeRunning(
    t,
    'free4',
    () => 'no flush',
    () => ({ COLLECTOR_USAGE_LOG: 'false' }),
  ),
);
t.test('the same with COLLECTOR_USAGE_LOG: appends and folds of 4 processes, exact sums, no deadlock', (t) =>
  freeRunning(
    t,
    'free4log',
    () => 'every flush',
    () => ({ COLLECTOR_USAGE_LOG: 'true' }),
  ),
);
// Flushes of up to 40 keys: the first collector appends every one, the second none, the other two
// a flush of all 40 keys and what follows it until a fold empties the log, writing the others
// directly.
const MIN_KEYS_BY_COLLECTOR = ['1', '100000', '40', '40'];
const APPENDS_BY_COLLECTOR: Appends[] = ['every flush', 'no flush', 'any', 'any'];
t.test('the same with COLLECTOR_USAGE_LOG=auto: appends and direct writes side by side, exact sums, no deadlock', (t) =>
  freeRunning(
    t,
    'free4auto',
    (c) => APPENDS_BY_COLLECTOR[c],
    (c) => ({ COLLECTOR_USAGE_LOG: 'auto', COLLECTOR_USAGE_LOG_MIN_KEYS: MIN_KEYS_BY_COLLECTOR[c] }),
  ),
);
