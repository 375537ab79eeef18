import { performance } from 'node:perf_hooks';
import { Aggregator } from '../collector/aggregator';
import { Flusher } from '../collector/flusher';
import { createUsageStore } from '../collector/usageLog';
import { loadConfig } from '../shared/config';
import { createDb, type Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { TABLE } from '../shared/tables';
import { sleep } from '../harness/wait';
import { createOrg, insertKeys, openBenchDatabase, type BenchDatabase } from './lib/database';
import { fmt, writeResults } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// `npx tsx bench/sustainedLoad.ts [--keys=100000] [--orgs=100] [--seconds=60] [--runs=2]
//    [--variants=direct,log,log-1m]`
// Not part of `npm run bench`: does a collector keep up when every key is used in every interval?
// One process holds the real Aggregator, Flusher and store (the collector's defaults otherwise),
// and a feeder adds one use of every key each second, in ten slices, for --seconds; then the
// feeder stops and the flusher's stop() writes (and folds) what is left. Every 2 s it samples the
// usage log's rows, the keys waiting in memory and the flusher's counters. Reports per run: the
// log's most rows, its rows at the end of the load and their slope over its second half (rows per second: > 0 is
// a log that grows without bound), the uses fed against those due (a loop too busy to take them
// would have lost them in the socket's buffer), the catch-up time after the load, and checks that every use
// fed was persisted exactly once. Variants run interleaved: `direct` (COLLECTOR_USAGE_LOG off),
// `log` (on), `log-<n>` or `log-<n>k`/`-<n>m` (on, a fold taking at most n rows).

interface Variant {
  name: string;
  logFlushes: boolean;
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
  if (name === 'direct') return { name, logFlushes: false };
  const cap = /^log(?:-(\d+)([km]?))?$/.exec(name);
  if (cap === null) throw new Error(`unknown variant ${name}: direct, log or log-<rows>[k|m]`);
  const scale = cap[2] === 'k' ? 1e3 : cap[2] === 'm' ? 1e6 : 1;
  return { name, logFlushes: true, foldMaxRows: cap[1] === undefined ? undefined : Number(cap[1]) * scale };
}

function flag(name: string, fallback: string): string {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
  return arg === undefined ? fallback : arg.slice(name.length + 3);
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

async function createKeys(db: Db, keys: number, orgs: number) {
  const orgIds: string[] = [];
  const keyIds: string[] = [];
  for (let o = 0; o < orgs; o++) {
    const orgId = await createOrg(db, `bench-sustained-${o}`);
    for (const keyId of await insertKeys(db, orgId, Math.ceil(keys / orgs), 'sustained-')) {
      orgIds.push(orgId);
      keyIds.push(keyId);
    }
  }
  await db.raw('analyze api_keys');
  return { orgIds, keyIds };
}

async function runOnce(bench: BenchDatabase, keySet: { orgIds: string[]; keyIds: string[] }, variant: Variant, seconds: number) {
  const collector = loadConfig({ NODE_ENV: 'development' }).collector;
  const pool = createDb(bench.url, { poolMax: collector.flushParallelism + 3, applicationName: 'keyusage-bench-sustained' });
  const { orgIds, keyIds } = keySet;
  const before = await persistedUses(bench.db, orgIds);
  const aggregator = new Aggregator({ maxKeys: Math.max(collector.aggregatorMaxKeys, keyIds.length), now: Date.now });
  const store = createUsageStore(pool, {
    events: collector.events.enabled ? collector.events : undefined,
    parallelism: collector.flushParallelism,
    logFlushes: variant.logFlushes,
    foldMaxRows: variant.foldMaxRows,
  });
  const flusher = new Flusher({ aggregator, store, intervalMs: collector.flushIntervalMs, maxRetryKeys: keyIds.length, logger: silent });
  // Paced by the clock, not by the timer's firings: a tick that comes late (the loop busy with a
  // flush or a fold) feeds what was due, up to one second's keys, as a socket's buffer would hold
  // datagrams; what is beyond is not fed, and shows as `fed` below `offered`.
  let fed = 0;
  let offered = 0;
  let next = 0;
  const feedStarted = performance.now();
  const feeder = setInterval(() => {
    const due = Math.floor(((performance.now() - feedStarted) / 1000) * keyIds.length);
    const slice = Math.min(due - offered, keyIds.length);
    for (let i = 0; i < slice; i++, next = (next + 1) % keyIds.length) {
      aggregator.add({ keyId: keyIds[next], orgId: orgIds[next], ip: `10.${(next >> 16) & 255}.${(next >> 8) & 255}.${next & 255}`, outcome: 'ok', count: 1 });
    }
    fed += slice;
    offered = due;
  }, 1000 / FEED_SLICES);
  flusher.start();
  const samples: Sample[] = [];
  const started = performance.now();
  while (performance.now() - started < seconds * 1000) {
    await sleep(SAMPLE_MS);
    const logRows = Number((await bench.db.raw(`select count(*) as n from ${TABLE.usageLog}`)).rows[0].n);
    const s = flusher.stats;
    samples.push({
      atS: (performance.now() - started) / 1000,
      logRows,
      pendingKeys: aggregator.pendingKeys + flusher.pendingKeys,
      flushes: s.flushes,
      folds: s.folds,
      lastFlushMs: s.lastFlushDurationMs,
      lastFoldMs: s.lastFoldDurationMs,
    });
    process.stderr.write(`  ${variant.name} ${JSON.stringify(samples[samples.length - 1])}\n`);
  }
  clearInterval(feeder);
  const stopStarted = performance.now();
  const caughtUp = await flusher.stop(900_000);
  const catchUpMs = performance.now() - stopStarted;
  await pool.destroy();
  const persisted = (await persistedUses(bench.db, orgIds)) - before;
  if (persisted !== fed) throw new Error(`sustained load (${variant.name}): ${persisted} uses persisted of ${fed} fed`);
  return { variant: variant.name, fed, offered, caughtUp, catchUpMs, samples, ...shape(samples) };
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
  const keys = Number(flag('keys', '100000'));
  const orgs = Number(flag('orgs', '100'));
  const seconds = Number(flag('seconds', '60'));
  const runs = Number(flag('runs', '2'));
  const variants = flag('variants', 'direct,log,log-1m').split(',').map(parseVariant);
  const bench = await openBenchDatabase((line) => process.stderr.write(`${line}\n`));
  try {
    const keySet = await createKeys(bench.db, keys, orgs);
    // The rows every later flush updates, created first: the load measures the steady state.
    await runOnce(bench, keySet, parseVariant('direct'), SAMPLE_MS / 1000);
    const results = [];
    for (const round of interleavedSchedule(variants, runs)) {
      for (const variant of round) {
        const result = await runOnce(bench, keySet, variant, seconds);
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
    writeResults(`bench/results/sustained-${new Date().toISOString().replace(/[:.]/g, '-')}.json`, { keys, orgs, seconds, results });
  } finally {
    await bench.close();
  }
}

void main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
