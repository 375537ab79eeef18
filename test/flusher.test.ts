import t from 'tap';
import { Aggregator, type KeyUsageDelta } from '../collector/aggregator';
import { APPEND_WAIT_MAX_MS } from '../collector/appendGate';
import { FOLD_SWEEP_MS, Flusher } from '../collector/flusher';
import { CommitInDoubtError, PartlyWrittenError, type KeyRef, type PendingBatch, type UsageStore, type WriteResult } from '../collector/usageStore';
import { sleep } from '../harness/wait';
import { renderPrometheus } from '../shared/metrics';
import { createLogger } from '../shared/logger';
import { capturingLogger } from './helpers/logLines';

const logger = createLogger({ level: 'silent', name: 'test' });
const ORG = '5d1f0f5e-8a47-4b53-8a0e-9c1d2e3f4a5b';
const key = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

// A store that keeps what it was given and fails on demand; the PostgreSQL store has its own
// tests against a real database.
function fakeStore() {
  const written: PendingBatch[][] = [];
  const pruned: KeyRef[][] = [];
  const applied = new Set<string>();
  let failNext: Error | undefined;
  const store: UsageStore = {
    async write(batches) {
      if (failNext) {
        const error = failNext;
        failNext = undefined;
        if (error instanceof CommitInDoubtError) batches.forEach((b) => applied.add(b.id));
        throw error;
      }
      written.push([...batches]);
      const fresh = batches.filter((b) => !applied.has(b.id));
      fresh.forEach((b) => applied.add(b.id));
      const uses = fresh.reduce((s, b) => s + b.batch.uses, 0);
      const duplicateUses = batches.filter((b) => !fresh.includes(b)).reduce((s, b) => s + b.batch.uses, 0);
      return {
        appliedBatches: fresh.length,
        duplicateBatches: batches.length - fresh.length,
        duplicateUses,
        keysWritten: 0,
        keysLogged: 0,
        usesWritten: uses,
        unknownKeys: 0,
        unknownUses: 0,
        quarantined: [],
        statements: 4,
        eventsRecorded: 0,
        eventCandidates: 0,
        // As if every key of the applied batches gained an address.
        keysToTrim: fresh.flatMap((b) => b.batch.keys.map(({ orgId, keyId }) => ({ orgId, keyId }))),
      };
    },
    prune: async (keys) => {
      pruned.push([...keys]);
    },
    expireOldRows: async () => {},
  };
  return { store, written, pruned, fail: (error: Error) => (failNext = error) };
}

t.test('backoff grows after each failure and resets after a success', async (t) => {
  const now = 0;
  const aggregator = new Aggregator({ maxKeys: 100, now: () => now });
  const { store, fail } = fakeStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger, now: () => now, backoff: { initialMs: 100, maxMs: 250 } });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  const retryAts: number[] = [];
  for (let i = 0; i < 3; i += 1) {
    fail(new Error('down'));
    t.equal(await flusher.flush(), false);
    retryAts.push((flusher as unknown as { retryAt: number }).retryAt);
  }
  t.same(retryAts, [100, 200, 250], 'doubling, capped');
  t.equal(flusher.stats.consecutiveFailures, 3);
  t.equal(await flusher.flush(), true);
  t.equal(flusher.stats.usesPersisted, 2);
  t.equal(flusher.stats.consecutiveFailures, 0);
});

t.test('an in-doubt batch is never merged with newer data and is skipped when it did land', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store, written, fail } = fakeStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 5 });
  fail(new CommitInDoubtError(new Error('connection lost')));
  await flusher.flush();
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 7 });
  t.equal(await flusher.flush(), true);
  // Alone, as it went (the same parts of a split write), then the new one right after.
  t.same(
    written.map((batches) => batches.map((b) => b.batch.uses)),
    [[5], [7]],
    'the in-doubt batch and the new one travel separately',
  );
  t.equal(flusher.stats.duplicateBatchesSkipped, 1);
  t.equal(flusher.stats.usesPersisted, 12, 'the 5 persisted by the in-doubt attempt count once, with the 7 of this one');
});

t.test("a written batch's keys are reused for new keys; a failed or in-doubt write's are kept for its retry", async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const fake = fakeStore();
  // What each write was given, read while it ran: once written, a batch's keys are given back
  // (and emptied), as the store's contract says it keeps none.
  const seen: Array<{ objects: KeyUsageDelta[]; keys: Array<[string, number]> }> = [];
  const store: UsageStore = {
    ...fake.store,
    write: async (batches, toLog) => {
      const objects = batches.flatMap((b) => b.batch.keys);
      seen.push({ objects, keys: objects.map((k) => [k.keyId, k.total]) });
      return fake.store.write(batches, toLog);
    },
  };
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  const use = (i: number, count: number) => aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count });
  for (const failure of [new Error('down'), new CommitInDoubtError(new Error('connection lost'))]) {
    use(1, 5);
    fake.fail(failure);
    t.equal(await flusher.flush(), false);
    const failed = seen.length;
    // Taken while key 1's batch waits for its retry: it must not be key 1's object.
    use(2, 7);
    t.equal(await flusher.flush(), true);
    t.same(
      seen.slice(failed).flatMap((write) => write.keys),
      [
        [key(1), 5],
        [key(2), 7],
      ],
      `${failure.message}: the retry wrote key 1's uses and key 2's, each its own`,
    );
  }
  const written = seen[seen.length - 1].objects;
  t.same(
    written.map((k) => k.keyId),
    [''],
    'given back, a written key holds no id',
  );
  use(3, 1);
  t.equal(await flusher.flush(), true);
  t.equal(seen[seen.length - 1].objects[0], written[0], 'once written, a key is the object of the next new key');
  t.same(seen[seen.length - 1].keys, [[key(3), 1]]);
});

// What the committed part of a split write did, as a PartlyWrittenError carries it.
const COMMITTED_PART: WriteResult = {
  appliedBatches: 1,
  duplicateBatches: 0,
  duplicateUses: 0,
  keysWritten: 1,
  keysLogged: 0,
  usesWritten: 3,
  unknownKeys: 1,
  unknownUses: 1,
  quarantined: [{ keyId: key(9), orgId: ORG, uses: 1 }],
  statements: 8,
  eventsRecorded: 2,
  eventCandidates: 2,
  keysToTrim: [{ orgId: ORG, keyId: key(1) }],
};

t.test('a partly written flush is kept in doubt, and what its committed part wrote is reported once', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store, written, pruned, fail } = fakeStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 5 });
  fail(new PartlyWrittenError(new Error('the other part failed'), COMMITTED_PART));
  t.equal(await flusher.flush(), false);
  t.match(flusher.stats, { failedFlushes: 1, usesPersisted: 0, eventsRecorded: 2, unknownKeys: 1, quarantinedKeys: 1, quarantinedUses: 1 });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 7 });
  t.equal(await flusher.flush(), true);
  t.same(
    written.map((batches) => batches.map((b) => b.batch.uses)),
    [[5], [7]],
    'the partly written batch travels apart from the newer drain, under its id',
  );
  t.equal(flusher.stats.usesPersisted, 10, 'of the 5, the unknown and the quarantined use are not counted persisted again: 3 + 7');
  t.ok(await flusher.stop(1000));
  t.same(pruned[0], [{ orgId: ORG, keyId: key(1) }], "the committed part's keys are trimmed");
});

t.test('pending batches stop absorbing drains at the cap; the aggregator holds the rest', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 3, now: () => 0 });
  const { store, fail } = fakeStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 3, logger });
  for (let i = 0; i < 3; i += 1) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  fail(new Error('down'));
  await flusher.flush();
  t.equal(flusher.pendingKeys, 3);
  for (let i = 3; i < 10; i += 1) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  fail(new Error('down'));
  await flusher.flush();
  t.equal(flusher.pendingKeys, 3, 'no more keys taken into the retry batch');
  t.equal(aggregator.pendingKeys, 3, 'the aggregator is capped');
  t.equal(aggregator.overflowUses, 4, 'the overflow is counted');
  t.ok(await flusher.stop(1000), 'stop writes everything still pending');
  t.equal(flusher.stats.usesPersisted, 6);
});

t.test(
  'a part-full retry batch never absorbs a drain that would take it past the cap: pending keys stay within twice the cap (fails without the fix)',
  async (t) => {
    const aggregator = new Aggregator({ maxKeys: 3, now: () => 0 });
    const { store, fail } = fakeStore();
    const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 3, logger });
    aggregator.add({ keyId: key(0), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
    fail(new Error('down'));
    await flusher.flush();
    t.equal(flusher.pendingKeys, 1, 'one key waits for a retry');
    for (let i = 1; i < 4; i += 1) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
    fail(new Error('down'));
    await flusher.flush();
    t.ok(flusher.pendingKeys <= 3, `the retry batch stays within the cap (${flusher.pendingKeys})`);
    for (let i = 4; i < 8; i += 1) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
    t.ok(flusher.pendingKeys + aggregator.pendingKeys <= 6, `pending keys ${flusher.pendingKeys + aggregator.pendingKeys} ≤ twice the cap`);
    t.ok(await flusher.stop(1000), 'stop writes everything still pending');
    t.equal(flusher.stats.usesPersisted + aggregator.overflowUses, 8, 'every use is persisted or counted as overflow');
  },
);

t.test('stop gives up after its deadline when the store stays down', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 3, now: () => 0 });
  const store: UsageStore = { write: async () => Promise.reject(new Error('down')), prune: async () => {}, expireOldRows: async () => {} };
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 3, logger });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  t.equal(await flusher.stop(300), false);
  t.equal(flusher.pendingUses, 1, 'what could not be written is reported, not hidden');
});

// A store whose writes take `ms` each (what the fake wrote is in `written`).
function slowStore(ms: number) {
  const fake = fakeStore();
  const store: UsageStore = { ...fake.store, write: async (batches, toLog) => (await sleep(ms), fake.store.write(batches, toLog)) };
  return { ...fake, store };
}

t.test('stop retries a failed final flush only when it can wait for it, and reports the retry that succeeded', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 3, now: Date.now });
  const { store, fail } = slowStore(20);
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 3, logger });
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  fail(new Error('connection refused'));
  t.equal(await flusher.stop(150), true, 'the retry waited less than its backoff, and finished before the deadline');
  t.equal(flusher.stats.usesPersisted, 2);
});

t.test('a flush that outlives stop begins no fold after it', async (t) => {
  let release = () => undefined as void;
  const writing = new Promise<void>((resolve) => (release = resolve));
  const { aggregator, flusher, folds, use, ways } = loggingFlusher(100, 1, () => writing);
  use(1);
  const ticking = flusher.tick();
  t.equal(await flusher.stop(50), false, 'the write in progress outlives the deadline');
  release();
  await ticking;
  t.same(ways, ['log'], 'it appended');
  t.equal(folds.calls, 0, 'and no fold began: the collector is stopping');
  t.equal(aggregator.pendingKeys, 0);
});

t.test('prometheus text', async (t) => {
  t.equal(
    renderPrometheus([
      { name: 'x_total', help: 'Things', type: 'counter', value: 3 },
      { name: 'y', help: 'Gauge', type: 'gauge', value: NaN },
    ]),
    '# HELP x_total Things\n# TYPE x_total counter\nx_total 3\n# HELP y Gauge\n# TYPE y gauge\ny 0\n',
  );
});

// Trimming reads every key it is given: only the keys the store says gained an address are.
t.test('a flush trims only the keys the write names', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store } = fakeStore();
  const write = store.write;
  store.write = async (batches) => ({ ...(await write(batches)), keysToTrim: [{ orgId: ORG, keyId: key(2) }] });
  const trims: string[][] = [];
  store.prune = async (keys) => void trims.push(keys.map((k) => k.keyId));
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  for (const i of [1, 2, 3]) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  t.equal(await flusher.flush(), true);
  t.equal(await flusher.stop(1000), true);
  t.same(trims, [[key(2)]]);
});

// On Citus a trim of 100 k keys outlasted several flushes; trims started after every flush took
// every pooled connection and the flushes then failed waiting for one.
t.test('one trim of recent IPs at a time; keys flushed meanwhile are trimmed next, each once', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store } = fakeStore();
  const trims: string[][] = [];
  let running = 0;
  let mostAtOnce = 0;
  let release: () => void = () => undefined;
  store.prune = async (keys) => {
    trims.push(keys.map((k) => k.keyId).sort());
    mostAtOnce = Math.max(mostAtOnce, ++running);
    await new Promise<void>((resolve) => (release = resolve));
    running -= 1;
  };
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  for (const keys of [[1], [2, 3], [3]]) {
    for (const i of keys) aggregator.add({ keyId: key(i), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
    await flusher.flush();
  }
  t.same(trims, [[key(1)]], 'the later flushes wait for the trim in progress');
  release();
  await new Promise((resolve) => setImmediate(resolve));
  t.same(trims, [[key(1)], [key(2), key(3)]], 'then one trim of the keys flushed meanwhile, each once');
  let stopDone = false;
  const stopped = flusher.stop(1000).then((drained) => {
    stopDone = true;
    return drained;
  });
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(stopDone, false, 'stop waits for the trim in progress');
  release();
  t.equal(await stopped, true);
  t.equal(mostAtOnce, 1);
  t.equal(running, 0);
});

// A store that keeps the usage log: its writes report their keys as logged when the flusher sends
// them to the log (a write of it, or of fewer keys than logMinKeys, would be direct), its folds
// are counted, and each write's way is recorded.
function loggingStore() {
  const fake = fakeStore();
  const ways: Array<'log' | 'tables'> = [];
  const folds = {
    calls: 0,
    fail: false as boolean | Error,
    keys: 0,
    left: 0,
    skipped: 0,
    unknown: { keys: 0, uses: 0 },
    quarantined: [] as WriteResult['quarantined'],
    running: Promise.resolve(),
  };
  const store: UsageStore = {
    ...fake.store,
    logMinKeys: 1,
    write: async (batches, toLog = true) => {
      ways.push(toLog ? 'log' : 'tables');
      const result = await fake.store.write(batches);
      // Keys of the batches this write applied: none when it found them committed already.
      return { ...result, keysLogged: toLog && result.appliedBatches > 0 ? batches.reduce((n, b) => n + b.batch.keys.length, 0) : 0 };
    },
    fold: async () => {
      folds.calls += 1;
      await folds.running;
      if (folds.fail) throw folds.fail === true ? new Error('fold failed') : folds.fail;
      const keys = folds.keys;
      folds.keys = 0;
      const { unknown } = folds;
      return {
        ...(await fake.store.write([])),
        keysWritten: keys,
        usesWritten: keys,
        unknownKeys: unknown.keys,
        unknownUses: unknown.uses,
        quarantined: folds.quarantined,
        logRowsLeft: folds.left,
        orgsSkipped: folds.skipped,
      };
    },
  };
  // The fake's folds call its write with no batch.
  const appends = () => fake.written.filter((batches) => batches.length > 0);
  return { ...fake, store, folds, appends, ways };
}

t.test('the usage log is folded at start, after an append, while folds find rows, after a failure or a commit in doubt, and every FOLD_SWEEP_MS', async (t) => {
  let now = 0;
  const aggregator = new Aggregator({ maxKeys: 100, now: () => now });
  const { store, folds, fail } = loggingStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger, now: () => now });
  const calls = async () => {
    await flusher.fold();
    return folds.calls;
  };
  t.equal(await calls(), 1, 'at start, for rows an earlier collector left');
  t.equal(await calls(), 1, 'not again while nothing was appended');

  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  await flusher.flush();
  folds.keys = 1;
  t.equal(await calls(), 2, 'after an append');
  t.equal(await calls(), 3, 'again after a fold that found rows');
  t.equal(await calls(), 3, 'not after one that found none');
  t.match(flusher.stats, { folds: 1, usesFolded: 1, lastFoldKeys: 1 });

  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  await flusher.flush();
  folds.fail = true;
  t.equal(await calls(), 4);
  t.equal(await calls(), 4, 'not before the backoff');
  now += 1000;
  t.equal(await calls(), 5, 'then retried');
  t.equal(await calls(), 5, 'and the next wait is longer');
  now += 1000;
  t.equal(await calls(), 5);
  now += 1000;
  folds.fail = false;
  t.equal(await calls(), 6, 'a failed fold is retried until it succeeds');
  t.equal(flusher.stats.failedFolds, 2);

  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  fail(new CommitInDoubtError(new Error('connection lost')));
  await flusher.flush();
  t.equal(await calls(), 7, 'an append in doubt may have logged rows its retry will not log again');

  now += FOLD_SWEEP_MS;
  t.equal(await calls(), 8, 'and every FOLD_SWEEP_MS, for rows another collector left');
});

// A flusher over loggingStore(), with a clock the test moves and one use of key k at a time; its
// store appends from logMinKeys keys, each write once `before` resolves.
function loggingFlusher(maxKeys = 100, logMinKeys = 1, before = () => Promise.resolve()) {
  const clock = { now: 0 };
  const aggregator = new Aggregator({ maxKeys, now: () => clock.now });
  const logging = loggingStore();
  const write: UsageStore['write'] = async (batches, toLog) => (await before(), logging.store.write(batches, toLog));
  const store = { ...logging.store, write, logMinKeys };
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: maxKeys, logger, now: () => clock.now });
  const use = (k = 1) => aggregator.add({ keyId: key(k), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  return { ...logging, clock, aggregator, flusher, use };
}

t.test('an interval appends nothing while the usage log is behind, and folds until a fold takes all it found', async (t) => {
  const { clock, aggregator, flusher, folds, appends, use } = loggingFlusher();
  const tick = async () => {
    await flusher.tick();
    await flusher.fold();
  };
  use();
  folds.left = 500;
  await tick();
  t.equal(appends().length, 1, 'appended while the log was not known to be behind');
  t.equal(flusher.stats.logBacklogRows, 500, 'the fold left rows');

  use();
  folds.left = 200;
  await tick();
  t.equal(appends().length, 1, 'no append while the log is behind');
  t.equal(aggregator.pendingKeys, 1, 'the uses wait in memory');
  t.equal(folds.calls, 2, 'a log that is behind is folded again though the fold found no rows of its own');
  t.match(flusher.stats, { appendsHeldBack: 1, logBacklogRows: 200 });

  use();
  folds.left = 0;
  await tick();
  t.equal(appends().length, 1);
  t.equal(flusher.stats.logBacklogRows, 0);
  await tick();
  t.equal(appends().length, 2, 'appends resume once a fold took all it found');
  t.equal(appends()[1][0].batch.uses, 2, 'with the uses held back, coalesced into one append');
  t.equal(flusher.stats.appendsHeldBack, 2);

  use();
  folds.left = 300;
  await tick();
  use();
  folds.fail = true;
  clock.now += 1000;
  await tick();
  t.equal(flusher.stats.failedFolds, 1);
  t.match(flusher.stats, { logBacklogRows: 300, consecutiveFailedFolds: 1 }, 'a failed fold leaves the backlog as the last fold found it');
  t.equal(appends().length, 3, 'held after the fold that left rows');
  clock.now += 1000;
  await tick();
  t.equal(appends().length, 4, 'appends go on once a fold failed: the log keeps the uses durable');
});

t.test('while a fold runs, an interval appends once, then holds the uses until it ends', async (t) => {
  const { flusher, folds, appends, use } = loggingFlusher();
  let endFold = () => {};
  folds.running = new Promise((resolve) => (endFold = resolve));
  use();
  await flusher.tick();
  t.equal(appends().length, 1, 'the append before the fold');
  use();
  await flusher.tick();
  t.equal(appends().length, 2, 'one append while the fold runs');
  use();
  await flusher.tick();
  use();
  await flusher.tick();
  t.equal(appends().length, 2, 'no second one while it runs');
  t.equal(flusher.stats.appendsHeldBack, 2);
  endFold();
  await flusher.fold();
  await flusher.tick();
  t.equal(appends().length, 3, 'the held uses go once the fold ended');
  t.equal(appends()[2][0].batch.uses, 2, 'coalesced into that append');
});

t.test('a held-back append goes as soon as new keys reach 90 % of the aggregator, before any is refused', async (t) => {
  const { aggregator, flusher, folds, appends } = loggingFlusher(10);
  const use = (from: number, to: number) => {
    for (let k = from; k < to; k++) aggregator.add({ keyId: key(k), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  };
  use(0, 1);
  folds.left = 100;
  await flusher.tick();
  await flusher.fold();
  t.equal(appends().length, 1);
  use(1, 9);
  await flusher.tick();
  t.equal(appends().length, 1, 'eight keys of ten: held back');
  // The append the ninth key sets off runs after the current task (the datagram being read).
  const afterTask = () => new Promise((resolve) => setImmediate(resolve));
  use(9, 10);
  t.equal(appends().length, 1, 'not inside add()');
  await afterTask();
  t.equal(appends().length, 2, 'the ninth key set the append off, between two intervals');
  use(10, 19);
  await afterTask();
  use(19, 28);
  await afterTask();
  t.equal(aggregator.overflowUses, 0, 'twenty-seven new keys in what would be one interval: none refused');
  t.equal(appends().length, 4);
  t.equal(appends().reduce((sum, batches) => sum + batches[0].batch.uses, 0) + aggregator.pendingKeys, 28, 'every use appended or waiting');
});

t.test('appends wait at most APPEND_WAIT_MAX_MS since the last one: a fold that hangs does not stop them', async (t) => {
  const { clock, flusher, folds, appends, use } = loggingFlusher();
  let endFold = () => {};
  folds.running = new Promise((resolve) => (endFold = resolve));
  for (let tick = 0; tick < 3; tick++) {
    use();
    await flusher.tick();
  }
  t.equal(appends().length, 2, 'one append before the fold, one beside it, then held');
  clock.now += APPEND_WAIT_MAX_MS - 1;
  await flusher.tick();
  t.equal(appends().length, 2, 'still held just before the bound');
  clock.now += 1;
  await flusher.tick();
  t.equal(appends().length, 3, 'appended once the bound passed since the last append');
  endFold();
  await flusher.fold();
});

t.test('a failed append is retried at its time though the log is behind', async (t) => {
  const { clock, aggregator, flusher, folds, fail, appends } = loggingFlusher();
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  fail(new Error('connection refused'));
  folds.left = 100;
  await flusher.tick();
  await flusher.fold();
  t.equal(flusher.stats.failedFlushes, 1);
  t.equal(flusher.stats.logBacklogRows, 100, 'the log is behind');
  clock.now += 1000;
  await flusher.tick();
  t.equal(appends().length, 1, 'the drained batch was written at its retry');
  t.equal(flusher.pendingKeys, 0);
});

t.test('a store that does not append to the log never waits for its folds', async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store, folds, appends } = loggingStore();
  const flusher = new Flusher({ aggregator, store: { ...store, logMinKeys: undefined }, intervalMs: 1000, maxRetryKeys: 100, logger, now: () => 0 });
  folds.left = 100;
  for (let tick = 0; tick < 3; tick++) {
    aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
    await flusher.tick();
    await flusher.fold();
  }
  t.equal(flusher.stats.logBacklogRows, 100, "another collector's log is behind");
  t.equal(appends().length, 3, 'a direct write adds nothing to it: every interval writes');
});

// A flusher whose first fold took every row in the log (so its small flushes go direct), and whose
// next found the log filled by another collector.
async function behindLogFlusher(maxKeys: number, logMinKeys: number) {
  const flusher = loggingFlusher(maxKeys, logMinKeys);
  flusher.folds.keys = 1;
  await flusher.flusher.fold();
  flusher.folds.left = 100;
  await flusher.flusher.fold();
  return flusher;
}

t.test('with the log behind, fewer keys than the store appends from are written directly, not held', async (t) => {
  const { flusher, ways, use } = await behindLogFlusher(100, 2);
  use(1);
  await flusher.tick();
  t.same(ways, ['tables'], "one key: written directly at its interval, though another collector's log is behind");
  use(2);
  use(3);
  await flusher.tick();
  t.same(ways, ['tables'], 'two keys would append: held while the log is behind');
  t.equal(flusher.stats.appendsHeldBack, 1);
});

t.test('after an append every flush appends until a fold begun after it leaves the log empty', async (t) => {
  const { flusher, folds, ways, use } = loggingFlusher(100, 2);
  await flusher.fold();
  const flushKeys = async (...ids: number[]) => {
    for (const n of ids) use(n);
    await flusher.flush();
  };
  await flushKeys(1);
  await flushKeys(1, 2);
  await flushKeys(1);
  t.same(ways, ['tables', 'log', 'log'], 'a key of the append, flushed alone: to the log, so its fold applies it after the append');
  let release = () => undefined as void;
  folds.running = new Promise<void>((resolve) => (release = resolve));
  const folding = flusher.fold();
  await flushKeys(1);
  release();
  await folding;
  await flushKeys(1);
  t.same(ways.slice(3), ['log', 'log'], 'a fold that began before the last append does not end it');
  folds.left = 5;
  await flusher.fold();
  await flushKeys(1);
  t.equal(ways[5], 'log', 'nor one that left rows');
  folds.left = 0;
  folds.skipped = 1;
  await flusher.fold();
  await flushKeys(1);
  t.equal(ways[6], 'log', "nor one that found an org held by another collector's fold");
  folds.skipped = 0;
  await flusher.fold();
  await flushKeys(1);
  t.equal(ways[7], 'tables', 'a fold that found the log empty does');
});

t.test('after a restart every flush appends until its first fold that leaves the log empty: the log may hold what it appended before', async (t) => {
  const { flusher, folds, ways, use } = loggingFlusher(100, 2);
  use(1);
  await flusher.flush();
  folds.left = 3;
  await flusher.fold();
  use(1);
  await flusher.flush();
  t.same(ways, ['log', 'log'], 'one key, before any fold, and after one that left rows: to the log');
  folds.left = 0;
  await flusher.fold();
  use(1);
  await flusher.flush();
  t.equal(ways[2], 'tables', 'after one that left the log empty: written directly');
});

t.test(
  'while its appends may be in the log, a small flush waits for the fold in progress instead of appending beside it, so that fold can end the phase',
  async (t) => {
    const { flusher, folds, ways, use } = loggingFlusher(100, 2);
    let endFold = () => {};
    folds.running = new Promise<void>((resolve) => (endFold = resolve));
    flusher.start();
    use(1);
    await flusher.tick();
    t.same(ways, [], 'one key during the first fold: held, not appended');
    t.equal(flusher.stats.appendsHeldBack, 1);
    endFold();
    await flusher.fold();
    await flusher.tick();
    t.same(ways, ['tables'], 'the fold ended the phase: written directly');
    t.ok(await flusher.stop(1000));
  },
);

t.test('a small flush held for a fold that hangs appends APPEND_WAIT_MAX_MS after the fold began: its uses are not kept in memory only', async (t) => {
  const { clock, flusher, folds, ways, use } = loggingFlusher(100, 2);
  folds.running = new Promise<void>(() => {});
  flusher.start();
  use(1);
  await flusher.tick();
  t.same(ways, [], 'held while the fold runs');
  clock.now += APPEND_WAIT_MAX_MS;
  await flusher.tick();
  t.same(ways, ['log'], 'appended once the fold has hung that long');
});

t.test('a small flush held for the fold in progress goes at once near the key cap: no key is refused', async (t) => {
  const { aggregator, flusher, folds, ways, use } = loggingFlusher(10, 100);
  let endFold = () => {};
  folds.running = new Promise<void>((resolve) => (endFold = resolve));
  flusher.start();
  for (let n = 1; n <= 9; n++) use(n);
  await new Promise((resolve) => setImmediate(resolve));
  t.same(ways, ['log'], 'the ninth key of ten: appended during the fold, with no interval');
  for (let n = 10; n <= 12; n++) use(n);
  t.equal(aggregator.overflowUses, 0);
  endFold();
  t.ok(await flusher.stop(1000));
});

t.test('keys a fold drops as deleted since their append, or sets aside, are counted apart: their uses were counted persisted at the append', async (t) => {
  const { flusher, folds, use } = loggingFlusher();
  use(1);
  use(1);
  await flusher.flush();
  t.match(flusher.stats, { usesPersisted: 2, unknownUses: 0 });
  folds.unknown = { keys: 1, uses: 2 };
  await flusher.fold();
  t.match(flusher.stats, { usesPersisted: 2, unknownKeys: 0, unknownUses: 0, unknownKeysAtFold: 1, unknownUsesAtFold: 2 }, 'each use counted once as received');
  use(2);
  await flusher.flush();
  folds.quarantined = [{ keyId: key(2), orgId: ORG, uses: 1 }];
  await flusher.fold();
  t.match(
    flusher.stats,
    { usesPersisted: 3, quarantinedKeys: 1, quarantinedUses: 1, quarantinedUsesAtFold: 1 },
    "a fold's quarantined uses: counted quarantined, and apart as the fold's, to be told from the flushes'",
  );
});

t.test("a fold's unreadable row is logged as such, with where it went, not as a row PostgreSQL refused", async (t) => {
  const lines: string[] = [];
  const { store, folds } = loggingStore();
  const flusher = new Flusher({
    aggregator: new Aggregator({ maxKeys: 10, now: () => 0 }),
    store,
    intervalMs: 1000,
    maxRetryKeys: 10,
    logger: capturingLogger(lines, 'test'),
  });
  folds.quarantined = [{ keyId: key(3), orgId: ORG, uses: 0, unreadable: true }];
  await flusher.fold();
  const logged = lines.map((line) => JSON.parse(line)).filter((line) => line.keyId === key(3));
  t.equal(logged.length, 1);
  t.match(logged[0].msg, /could not be decoded .*moved to api_key_usage_set_aside: npm run cli -- usage-log requeue/);
  t.match(flusher.stats, { quarantinedKeys: 1, quarantinedUses: 0, unreadableLogRows: 1 });
});

t.test('start begins a fold at once, so the first interval need not wait for one to write directly', async (t) => {
  const { flusher, folds } = loggingFlusher(100, 2);
  flusher.start();
  t.equal(folds.calls, 1);
  t.ok(await flusher.stop(1000));
});

t.test('an append whose COMMIT is in doubt keeps the flushes appending, though a fold found the log empty', async (t) => {
  const { flusher, ways, fail, use } = loggingFlusher(100, 2);
  await flusher.fold();
  use(1);
  use(2);
  await flusher.flush();
  use(1);
  fail(new CommitInDoubtError(new Error('connection lost at COMMIT')));
  await flusher.flush();
  // Its COMMIT lands after this fold looked.
  await flusher.fold();
  await flusher.flush();
  t.same(ways, ['log', 'log', 'log'], 'the retry, with its one key, appends');
});

t.test('near the key cap a held flush goes at once, even one below the threshold: no key is refused', async (t) => {
  const { aggregator, ways, use } = await behindLogFlusher(10, 10);
  for (let n = 1; n <= 9; n++) use(n);
  await new Promise((resolve) => setImmediate(resolve));
  t.same(ways, ['tables'], 'the ninth key of ten: written, with no interval');
  for (let n = 10; n <= 12; n++) use(n);
  t.equal(aggregator.overflowUses, 0);
});

t.test('stop folds while folds find rows, and not on when one found none of the rows left', async (t) => {
  const { aggregator, flusher, folds } = loggingFlusher();
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  folds.keys = 1;
  folds.left = 100;
  t.equal(await flusher.stop(5000), true);
  t.equal(folds.calls, 2, 'one fold that found rows, one that found none of the rows left (other folds hold them)');
});

// A fold begun near the stop's deadline is cut there and rolls back: its work is wasted, and
// with the fold thread it held the stop until the thread was terminated.
t.test('stop begins no fold that the last fold’s length says would not end before its deadline', async (t) => {
  const foldOf3s = async () => {
    const logging = loggingFlusher();
    let endFold = () => {};
    logging.folds.running = new Promise((resolve) => (endFold = resolve));
    logging.folds.keys = 1;
    logging.folds.left = 100;
    const fold = logging.flusher.fold();
    logging.clock.now += 3000;
    endFold();
    await fold;
    logging.folds.keys = 1;
    return logging;
  };
  const short = await foldOf3s();
  t.equal(await short.flusher.stop(2000), true);
  t.equal(short.folds.calls, 1, '2 s left: none begun');
  const long = await foldOf3s();
  t.equal(await long.flusher.stop(5000), true);
  t.ok(long.folds.calls > 1, '5 s left: folded on');
});

t.test('foldRunningMs: how long the fold in progress has run, 0 when none runs', async (t) => {
  const { clock, flusher, folds } = loggingFlusher();
  let endFold = () => {};
  folds.running = new Promise((resolve) => (endFold = resolve));
  t.equal(flusher.foldRunningMs, 0);
  const fold = flusher.fold();
  clock.now += 1500;
  t.equal(flusher.foldRunningMs, 1500);
  endFold();
  await fold;
  t.equal(flusher.foldRunningMs, 0);
});

// Seen in CI's fault battery ('cut at COMMIT after-forward', 1 run in about 50): the fold made due
// by the in-doubt append ran before the lost COMMIT was visible, and the row waited a minute.

t.test('an append found committed by its retry is folded, though the fold its doubt started found nothing', async (t) => {
  const { aggregator, flusher, folds, fail } = loggingFlusher();
  await flusher.fold();
  aggregator.add({ keyId: key(1), orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  fail(new CommitInDoubtError(new Error('connection lost')));
  await flusher.flush();
  await flusher.fold();
  t.equal(folds.calls, 2, 'the doubt started a fold, which found nothing yet');
  await flusher.flush();
  t.equal(flusher.stats.duplicateBatchesSkipped, 1, 'the retry found the batch committed');
  await flusher.fold();
  t.equal(folds.calls, 3, 'and that made a fold due again');
});

// A fold split in parts, one committed and one failed: the committed part's log rows are gone,
// so its uses are folded now or never. They were never counted in uses_folded_total (found by a
// review; fails without the fix).
t.test("a fold partly written counts its committed part's uses folded", async (t) => {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => 0 });
  const { store, folds } = loggingStore();
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 100, logger });
  folds.fail = new PartlyWrittenError(new Error('the other part failed'), COMMITTED_PART);
  await flusher.fold();
  t.match(flusher.stats, { failedFolds: 1, usesFolded: COMMITTED_PART.usesWritten, eventsRecorded: COMMITTED_PART.eventsRecorded });
});
