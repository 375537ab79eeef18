import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Aggregator } from '../collector/aggregator';
import { Flusher } from '../collector/flusher';
import { createUsageStore } from '../collector/usageLog';
import { loadConfig } from '../shared/config';
import { createDb, type Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { TABLE } from '../shared/tables';
import { sleep } from '../harness/wait';
import { createKeysInOrgs, openBenchDatabase, type BenchDatabase } from './lib/database';
import { fmt, writeResults } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// `npx tsx bench/sustainedLoad.ts [--keys=100000] [--orgs=100] [--seconds=60] [--runs=2]
//    [--collectors=1] [--pending-keys=100000] [--variants=direct,log,log-1m]`
// Not part of `npm run bench`: do the collectors keep up when every key is used every second?
// One process holds each collector's real Aggregator, Flusher and store (the defaults otherwise);
// a feeder adds one use of every key each second, in ten slices, for --seconds; then the feeder
// stops and each flusher's stop() writes (and folds) what is left. Every 2 s it samples the usage
// log's rows, the keys waiting in memory and the flushers' counters. Reports per run: the log's
// most rows, its rows at the end of the load and their slope over its second half (rows a second:
// above 0 is a log that grows), the uses fed against those due (a loop too busy to take them would
// have lost them in the socket's buffer), the catch-up time after the load, and checks that every
// use fed was persisted exactly once. Variants run interleaved: `direct` (COLLECTOR_USAGE_LOG
// off), `log` (on), `log-<n>` or `log-<n>k`/`-<n>m` (on, a fold taking at most n rows).

interface Variant {
  name: string;
  /** The store's logMinKeys: 1 appends every flush, undefined none. */
  logMinKeys: number | undefined;
  foldMaxRows?: number;
}

interface Sample {
  atS: number;
  logRows: number;
  pendingKeys: number;
  flushes: number;
  folds: number;
  lastFlushMs: number;
  lastFoldMs: number;
}

const silent = createLogger({ level: 'silent', name: 'bench-sustained' });
const SAMPLE_MS = 2000;
const FEED_SLICES = 10;

function parseVariant(name: string): Variant {
  if (name === 'direct') return { name, logMinKeys: undefined };
  const cap = /^log(?:-(\d+)([km]?))?$/.exec(name);
  if (cap === null) throw new Error(`unknown variant ${name}: direct, log or log-<rows>[k|m]`);
  const scale = cap[2] === 'k' ? 1e3 : cap[2] === 'm' ? 1e6 : 1;
  return { name, logMinKeys: 1, foldMaxRows: cap[1] === undefined ? undefined : Number(cap[1]) * scale };
}

// node:util's parser, strict: a misspelled flag stops the run instead of being ignored.
function flags() {
  const text = (fallback: string) => ({ type: 'string' as const, default: fallback });
  const { values } = parseArgs({
    options: {
      keys: text('100000'),
      orgs: text('100'),
      runs: text('2'),
      seconds: text('60'),
      collectors: text('1'),
      'pending-keys': text(String(loadConfig({ NODE_ENV: 'development' }).collector.aggregatorMaxKeys)),
      variants: text('direct,log,log-1m'),
    },
  });
  const number = (name: keyof typeof values) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a positive integer, got ${values[name]}`);
    return value;
  };
  return { number, variants: values.variants.split(',').map(parseVariant) };
}

const persistedUses = async (db: Db, orgIds: readonly string[]) =>
  Number(
    (
      await db('api_key_usage')
        .whereIn('org_id', [...new Set(orgIds)])
        .sum({ n: 'request_count' })
        .first()
    )?.n ?? 0,
  );

type KeySet = { orgIds: string[]; keyIds: string[] };

// One collector: its own pool, aggregator, store and flusher, the collector's defaults otherwise.
function collectorOf(bench: BenchDatabase, variant: Variant, keys: number, maxPendingKeys: number) {
  const config = loadConfig({ NODE_ENV: 'development' }).collector;
  const pool = createDb(bench.url, { poolMax: config.flushParallelism + 3, applicationName: 'keyusage-bench-sustained' });
  const aggregator = new Aggregator({ maxKeys: maxPendingKeys, now: Date.now });
  const store = createUsageStore(pool, {
    events: config.events.enabled ? config.events : undefined,
    parallelism: config.flushParallelism,
    logMinKeys: variant.logMinKeys,
    foldMaxRows: variant.foldMaxRows,
  });
  const flusher = new Flusher({ aggregator, store, intervalMs: config.flushIntervalMs, maxRetryKeys: keys, logger: silent });
  return { pool, aggregator, flusher };
}

// Paced by the clock, not by the timer's firings: a tick that comes late (the loop busy with a
// flush or a fold) feeds what was due, up to one second's keys, as a socket's buffer would hold
// datagrams; what is beyond is not fed, and shows as `fed` below `offered`. With several
// collectors, each second's uses of a key go to the next one, as datagrams spread over receivers.
function startFeeder({ orgIds, keyIds }: KeySet, aggregators: readonly Aggregator[]) {
  const feed = { fed: 0, offered: 0, stop: () => clearInterval(timer) };
  const started = performance.now();
  let next = 0;
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - started) / 1000) * keyIds.length);
    const slice = Math.min(due - feed.offered, keyIds.length);
    for (let i = 0; i < slice; i++, next = (next + 1) % keyIds.length) {
      const aggregator = aggregators[(next + Math.floor((feed.offered + i) / keyIds.length)) % aggregators.length];
      aggregator.add({ keyId: keyIds[next], orgId: orgIds[next], ip: `10.${(next >> 16) & 255}.${(next >> 8) & 255}.${next & 255}`, outcome: 'ok', count: 1 });
    }
    feed.fed += slice;
    feed.offered = due;
  }, 1000 / FEED_SLICES);
  return feed;
}

interface Load {
  seconds: number;
  collectors: number;
  /** Each collector's COLLECTOR_MAX_PENDING_KEYS. */
  maxPendingKeys: number;
}

async function runOnce(bench: BenchDatabase, keySet: KeySet, variant: Variant, load: Load) {
  const before = await persistedUses(bench.db, keySet.orgIds);
  const collectors = Array.from({ length: load.collectors }, () => collectorOf(bench, variant, keySet.keyIds.length, load.maxPendingKeys));
  const feed = startFeeder(
    keySet,
    collectors.map((c) => c.aggregator),
  );
  for (const { flusher } of collectors) flusher.start();
  const samples: Sample[] = [];
  const started = performance.now();
  const sum = (of: (c: (typeof collectors)[number]) => number) => collectors.reduce((total, c) => total + of(c), 0);
  while (performance.now() - started < load.seconds * 1000) {
    await sleep(SAMPLE_MS);
    const logRows = Number((await bench.db.raw(`select count(*) as n from ${TABLE.usageLog}`)).rows[0].n);
    samples.push({
      atS: (performance.now() - started) / 1000,
      logRows,
      pendingKeys: sum((c) => c.aggregator.pendingKeys + c.flusher.pendingKeys),
      flushes: sum((c) => c.flusher.stats.flushes),
      folds: sum((c) => c.flusher.stats.folds),
      lastFlushMs: Math.max(...collectors.map((c) => c.flusher.stats.lastFlushDurationMs)),
      lastFoldMs: Math.max(...collectors.map((c) => c.flusher.stats.lastFoldDurationMs)),
    });
    process.stderr.write(`  ${variant.name} ${JSON.stringify(samples[samples.length - 1])}\n`);
  }
  feed.stop();
  const stopStarted = performance.now();
  const caughtUp = (await Promise.all(collectors.map((c) => c.flusher.stop(900_000)))).every(Boolean);
  const catchUpMs = performance.now() - stopStarted;
  await Promise.all(collectors.map((c) => c.pool.destroy()));
  const persisted = (await persistedUses(bench.db, keySet.orgIds)) - before;
  // Uses refused at a full aggregator are counted, not lost unseen: every other one is persisted.
  const refused = sum((c) => c.aggregator.overflowUses);
  if (persisted !== feed.fed - refused) throw new Error(`sustained load (${variant.name}): ${persisted} uses persisted of ${feed.fed} fed, ${refused} refused`);
  return { variant: variant.name, fed: feed.fed, offered: feed.offered, refused, caughtUp, catchUpMs, samples, ...shape(samples) };
}

// The log at the end of the load, and its least-squares slope over the load's second half.
function shape(samples: readonly Sample[]) {
  const late = samples.slice(Math.floor(samples.length / 2));
  const meanT = late.reduce((sum, s) => sum + s.atS, 0) / late.length;
  const meanRows = late.reduce((sum, s) => sum + s.logRows, 0) / late.length;
  const num = late.reduce((sum, s) => sum + (s.atS - meanT) * (s.logRows - meanRows), 0);
  const den = late.reduce((sum, s) => sum + (s.atS - meanT) ** 2, 0);
  const last = samples[samples.length - 1];
  return {
    logRowsAtEnd: last?.logRows ?? 0,
    logRowsMax: Math.max(0, ...samples.map((s) => s.logRows)),
    logRowsPerS: den > 0 ? num / den : 0,
    pendingKeysMax: Math.max(0, ...samples.map((s) => s.pendingKeys)),
    flushes: last?.flushes ?? 0,
    folds: last?.folds ?? 0,
  };
}

async function main() {
  const { number, variants } = flags();
  const keys = number('keys');
  const orgs = number('orgs');
  const runs = number('runs');
  const load: Load = {
    seconds: number('seconds'),
    collectors: number('collectors'),
    maxPendingKeys: number('pending-keys'),
  };
  const bench = await openBenchDatabase((line) => process.stderr.write(`${line}\n`));
  try {
    const keySet = await createKeysInOrgs(bench.db, keys, orgs, 'sustained');
    // The rows every later flush updates, created first: the load measures the steady state.
    await runOnce(bench, keySet, parseVariant('direct'), { seconds: SAMPLE_MS / 1000, collectors: 1, maxPendingKeys: keys });
    const results = [];
    for (const round of interleavedSchedule(variants, runs)) {
      for (const variant of round) {
        const result = await runOnce(bench, keySet, variant, load);
        const { samples, ...summary } = result;
        console.log(JSON.stringify(summary));
        results.push(result);
      }
    }
    for (const variant of variants) {
      const of = results.filter((r) => r.variant === variant.name);
      const slopes = of.map((r) => r.logRowsPerS);
      const catchUps = of.map((r) => r.catchUpMs);
      const fedShares = of.map((r) => r.fed / r.offered);
      const peaks = of.map((r) => r.logRowsMax);
      process.stderr.write(
        `${variant.name}: log peak ${fmt.int(median(peaks))} rows (worst ${fmt.int(Math.max(...peaks))}), slope ${fmt.int(median(slopes))} rows/s (worst ${fmt.int(Math.max(...slopes))}), catch-up ${fmt.ms(median(catchUps), 0)} (worst ${fmt.ms(Math.max(...catchUps), 0)}), fed ${fmt.pct(median(fedShares), 1)} of the uses due (worst ${fmt.pct(Math.min(...fedShares), 1)})\n`,
      );
    }
    writeResults(`bench/results/sustained-${new Date().toISOString().replace(/[:.]/g, '-')}.json`, {
      keys,
      orgs,
      ...load,
      results,
    });
  } finally {
    await bench.close();
  }
}

void main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
