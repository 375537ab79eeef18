import { performance } from 'node:perf_hooks';
import { Aggregator } from '../collector/aggregator';
import { Flusher } from '../collector/flusher';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import { createDb } from '../shared/db';
import { createLogger } from '../shared/logger';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createOrg, insertKeys } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// Benchmark 4. The collector's real Flusher and PostgreSQL store (collector/flusher.ts,
// collector/usageStore.ts) on a pool of 2 connections like the collector's, with N pending keys
// that exist in api_keys. Uses arrive as count-1 lines (as hot-shots would send them), one client
// IP per key, all in one hour, so the rows a flush writes depend on the keys alone: that is what
// "statements independent of request volume" means. The first flush of a key set creates its
// rows (reported apart as "cold"); the timed flushes update them.

interface Scenario {
  keys: number;
  uses: number;
  /** Event detection in the flush (EVENTS_ENABLED), with the default thresholds. */
  events: boolean;
}

interface Plan {
  scenarios: Scenario[];
  reps: number;
}

// Every scenario with detection on and off, interleaved, so the ratio compares like with like.
const bothWays = (scenarios: Array<Omit<Scenario, 'events'>>): Scenario[] => scenarios.flatMap((s) => [{ ...s, events: true }, { ...s, events: false }]);

const FULL: Plan = {
  scenarios: bothWays([
    { keys: 1_000, uses: 1_000 },
    { keys: 1_000, uses: 1_000_000 },
    { keys: 100_000, uses: 100_000 },
    { keys: 100_000, uses: 1_000_000 },
  ]),
  reps: 5,
};
const QUICK: Plan = {
  scenarios: bothWays([
    { keys: 1_000, uses: 1_000 },
    { keys: 1_000, uses: 20_000 },
    { keys: 5_000, uses: 5_000 },
  ]),
  reps: 1,
};

// The collector's default detection thresholds, read when a flush is measured (no import-time work).
const defaultDetection = () => loadConfig({ NODE_ENV: 'development' }).collector.events;

interface FlushSample {
  scenario: string;
  cold: boolean;
  wallMs: number;
  flusherMs: number;
  statements: number;
  roundTrips: number;
  keysWritten: number;
  usesPersisted: number;
  pruneMs: number;
  fillMs: number;
}

const silent = createLogger({ level: 'silent', name: 'bench-flush' });

export async function runFlush(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const keySets = new Map<number, { orgId: string; keyIds: string[] }>();
  for (const size of new Set(plan.scenarios.map((s) => s.keys))) {
    const orgId = await createOrg(ctx.db, `bench-flush-${size}`);
    const started = performance.now();
    const keyIds = await insertKeys(ctx.db, orgId, size, `flush-${size}-`);
    ctx.log(`flush: ${fmt.int(size)} keys created in ${fmt.ms(performance.now() - started, 0)}`);
    keySets.set(size, { orgId, keyIds });
  }
  await ctx.db.raw('analyze api_keys');

  // The collector's own pool size; query events count every round trip, BEGIN and COMMIT included.
  const db = createDb(ctx.databaseUrl, { poolMax: 2, applicationName: 'keyusage-bench-flush' });
  let roundTrips = 0;
  db.on('query', () => roundTrips++);
  const samples: FlushSample[] = [];
  try {
    const flushOnce = async (scenario: Scenario, cold: boolean) => {
      const { orgId, keyIds } = keySets.get(scenario.keys)!;
      const clock = Date.now();
      const aggregator = new Aggregator({ maxKeys: 200_000, now: () => clock });
      let pruning: Promise<void> = Promise.resolve();
      let pruneMs = 0;
      const inner = createPgUsageStore(db, scenario.events ? { events: defaultDetection() } : {});
      const store: UsageStore = {
        write: (batches) => inner.write(batches),
        prune: (ids) => {
          const started = performance.now();
          pruning = inner.prune(ids).then(() => {
            pruneMs = performance.now() - started;
          });
          return pruning;
        },
        expireOldRows: (days) => inner.expireOldRows(days),
      };
      const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 200_000, logger: silent });

      const fillStarted = performance.now();
      for (let u = 0; u < scenario.uses; u++) {
        const k = u % keyIds.length;
        aggregator.add({ keyId: keyIds[k], orgId, ip: `10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`, outcome: 'ok', count: 1 });
      }
      const fillMs = performance.now() - fillStarted;

      const tripsBefore = roundTrips;
      const started = performance.now();
      const done = await flusher.flush();
      const wallMs = performance.now() - started;
      const trips = roundTrips - tripsBefore;
      await pruning;
      if (!done || flusher.stats.failedFlushes > 0) throw new Error(`flush of ${scenario.keys} keys failed`);
      samples.push({
        scenario: label(scenario),
        cold,
        wallMs,
        flusherMs: flusher.stats.lastFlushDurationMs,
        statements: flusher.stats.lastFlushStatements,
        roundTrips: trips,
        keysWritten: flusher.stats.lastFlushKeys,
        usesPersisted: flusher.stats.usesPersisted,
        pruneMs,
        fillMs,
      });
    };

    // Cold: the first flush of each key set inserts its rows (with detection on, its first-use
    // events and prefix history too), so the timed flushes see a steady state.
    for (const size of keySets.keys()) await flushOnce(plan.scenarios.find((s) => s.keys === size)!, true);
    for (const [round, order] of interleavedSchedule(plan.scenarios, plan.reps).entries()) {
      for (const scenario of order) await flushOnce(scenario, false);
      ctx.log(`flush: round ${round + 1}/${plan.reps}`);
    }

    // Nothing lost or doubled: each org's total is the sum of what its flushes persisted.
    for (const [size, { orgId }] of keySets) {
      const expected = samples.filter((s) => s.scenario.startsWith(`${fmt.int(size)} keys`)).reduce((sum, s) => sum + s.usesPersisted, 0);
      const row = await ctx.db('api_key_usage').where({ org_id: orgId }).sum({ n: 'request_count' }).first();
      if (Number(row?.n) !== expected) throw new Error(`flush benchmark: ${size} keys hold ${row?.n} uses, expected ${expected}`);
    }
  } finally {
    await db.destroy();
  }

  const rows = plan.scenarios.map((scenario) => {
    const name = label(scenario);
    const warm = samples.filter((s) => s.scenario === name && !s.cold);
    const cold = samples.find((s) => s.scenario === name && s.cold);
    const statements = [...new Set(warm.map((s) => s.statements))].join(', ');
    const trips = [...new Set(warm.map((s) => s.roundTrips))].join(', ');
    return [
      name,
      warm.length,
      fmt.ms(median(warm.map((s) => s.wallMs)), 0),
      fmt.ms(Math.max(...warm.map((s) => s.wallMs)), 0),
      cold ? fmt.ms(cold.wallMs, 0) : '–',
      statements,
      trips,
      fmt.int(median(warm.map((s) => s.keysWritten))),
      fmt.ms(median(warm.map((s) => s.pruneMs)), 0),
      fmt.ms(median(warm.map((s) => s.fillMs)), 0),
    ];
  });
  const ratios = plan.scenarios
    .filter((s) => s.events)
    .map((on) => {
      const wall = (events: boolean) => samples.filter((s) => s.scenario === label({ ...on, events }) && !s.cold).map((s) => s.wallMs);
      return `${fmt.int(on.keys)} keys / ${fmt.int(on.uses)} uses: ${(median(wall(true)) / median(wall(false))).toFixed(2)}×`;
    });
  const big = plan.scenarios.filter((s) => s.keys >= 100_000).map(label);
  const bigWarm = samples.filter((s) => big.includes(s.scenario) && !s.cold).map((s) => s.wallMs);
  const bigCold = samples.filter((s) => big.includes(s.scenario) && s.cold).map((s) => s.wallMs);
  const notes = [
    bigWarm.length > 0
      ? `Target 100 k keys per flush ≤ 1 s: ${fmt.verdict(median(bigWarm) <= 1000)} (median ${fmt.ms(median(bigWarm), 0)}, worst ${fmt.ms(Math.max(...bigWarm), 0)}; the cold flush that creates the rows: ${fmt.ms(bigCold[0], 0)}).`
      : 'Target 100 k keys per flush ≤ 1 s: not measured in --quick (5 k keys stand in).',
    'Statements = the Flusher\'s lastFlushStatements (flush-id insert, SET LOCAL work_mem, savepoint and its release, and one multi-row upsert each for totals, hourly buckets and recent IPs, whatever the number of keys); round trips = every query the pool sent during the flush, BEGIN and COMMIT included. Neither moves with the number of uses.',
    `Event detection on / off, ratio of flush medians: ${ratios.join('; ')}. Detection adds one statement per flush (prefix-history upsert and the facts of the flush's keys) and, when any event is raised, one insert.`,
    'Flush time is the wall time of Flusher.flush() (drain, merge, one transaction, commit). Trimming recent IPs runs after the commit, outside the transaction, and is shown apart; so is the time to feed the aggregator (count-1 lines).',
  ];
  return {
    heading: HEADINGS.flush,
    tables: [
      {
        title: `Real Flusher + PostgreSQL store, pool of 2; ${plan.reps} interleaved timed flushes per scenario after one cold flush per key set`,
        columns: ['pending keys / uses', 'flushes timed', 'flush p50', 'flush max', 'cold flush (rows created)', 'statements per flush', 'round trips per flush', 'keys written', 'IP trim after commit (p50)', 'aggregator fill (p50)'],
        rows,
      },
    ],
    notes,
    raw: { plan, samples },
  };
}

function label(s: Scenario): string {
  return `${fmt.int(s.keys)} keys / ${fmt.int(s.uses)} uses, events ${s.events ? 'on' : 'off'}`;
}
