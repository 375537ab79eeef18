import { performance } from 'node:perf_hooks';
import { Aggregator } from '../collector/aggregator';
import { Flusher } from '../collector/flusher';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import { createDb, type Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createOrg, insertKeys } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// Benchmark 4. The collector's real Flusher and PostgreSQL store (collector/flusher.ts,
// collector/usageStore.ts) on a pool of 2 connections like the collector's, with N pending keys
// that exist in api_keys. Uses arrive as count-1 lines (as hot-shots would send them), all in one
// hour, so the rows a flush writes depend on the keys alone: that is what "statements independent
// of request volume" means. Two shapes: every key from the same address in every flush (the
// timed flushes update existing rows), and every key from a new address in a new /24 in every
// flush (issue 13: totals and hours are updated while recent IPs, the network history and the
// key.new_ip events grow by one row per key per flush). The first flush of a key set creates its
// rows (reported apart as "cold").

interface Scenario {
  keys: number;
  uses: number;
  /** Event detection in the flush (EVENTS_ENABLED), with the default thresholds. */
  events: boolean;
  /** Every key arrives from an address (and /24) it never used before, in every flush. */
  newIps: boolean;
}

interface Plan {
  scenarios: Scenario[];
  reps: number;
}

// Every same-address scenario with detection on and off, interleaved, so the ratio compares like
// with like; the new-address shape with detection on (the default), at each size.
const bothWays = (scenarios: Array<Pick<Scenario, 'keys' | 'uses'>>): Scenario[] =>
  scenarios.flatMap((s) => [
    { ...s, events: true, newIps: false },
    { ...s, events: false, newIps: false },
  ]);
const newAddresses = (sizes: number[]): Scenario[] => sizes.map((keys) => ({ keys, uses: keys, events: true, newIps: true }));

const FULL: Plan = {
  scenarios: [
    ...bothWays([
      { keys: 1_000, uses: 1_000 },
      { keys: 1_000, uses: 1_000_000 },
      { keys: 100_000, uses: 100_000 },
      { keys: 100_000, uses: 1_000_000 },
    ]),
    ...newAddresses([1_000, 10_000, 100_000]),
  ],
  reps: 3,
};
const QUICK: Plan = {
  scenarios: [
    ...bothWays([
      { keys: 1_000, uses: 1_000 },
      { keys: 1_000, uses: 20_000 },
      { keys: 5_000, uses: 5_000 },
    ]),
    ...newAddresses([1_000, 5_000]),
  ],
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
  walBytes: number;
}

// A key set per size and shape: the new-address shape grows its keys' rows, the other does not.
const keySetOf = (s: Scenario) => `${s.keys}${s.newIps ? ' new-ip' : ''}`;

// Address of key `k` in flush `generation`: the same for every flush, or a new /24 each time.
function addressOf(k: number, newIps: boolean, generation: number): string {
  const high = newIps ? `${10 + (k >> 16)}.${generation & 255}` : `10.${(k >> 16) & 255}`;
  return `${high}.${(k >> 8) & 255}.${k & 255}`;
}

const walPosition = async (db: Db): Promise<string> => (await db.raw('select pg_current_wal_lsn() as lsn')).rows[0].lsn;
const walSince = async (db: Db, from: string): Promise<number> =>
  Number((await db.raw('select pg_wal_lsn_diff(pg_current_wal_lsn(), ?) as bytes', [from])).rows[0].bytes);

// Updates and HOT updates of the tables every flush updates, from PostgreSQL's statistics.
const HOT_TABLES = ['api_key_usage', 'api_key_usage_hourly'];
async function updateCounts(db: Db): Promise<Map<string, { updates: number; hot: number }>> {
  const rows = (await db.raw('select relname, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = any(?)', [HOT_TABLES])).rows;
  return new Map(
    rows.map((r: { relname: string; n_tup_upd: string; n_tup_hot_upd: string }) => [r.relname, { updates: Number(r.n_tup_upd), hot: Number(r.n_tup_hot_upd) }]),
  );
}

const silent = createLogger({ level: 'silent', name: 'bench-flush' });

export async function runFlush(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const keySets = new Map<string, { orgId: string; keyIds: string[] }>();
  for (const scenario of plan.scenarios) {
    const set = keySetOf(scenario);
    if (keySets.has(set)) continue;
    const orgId = await createOrg(ctx.db, `bench-flush-${set}`);
    const started = performance.now();
    const keyIds = await insertKeys(ctx.db, orgId, scenario.keys, `flush-${set}-`);
    ctx.log(`flush: ${fmt.int(scenario.keys)} keys (${set}) created in ${fmt.ms(performance.now() - started, 0)}`);
    keySets.set(set, { orgId, keyIds });
  }
  await ctx.db.raw('analyze api_keys');

  // The collector's own pool size; query events count every round trip, BEGIN and COMMIT included.
  const db = createDb(ctx.databaseUrl, { poolMax: 2, applicationName: 'keyusage-bench-flush' });
  let roundTrips = 0;
  db.on('query', () => roundTrips++);
  const samples: FlushSample[] = [];
  let generation = 0;
  const hot: string[] = [];
  try {
    const flushOnce = async (scenario: Scenario, cold: boolean) => {
      const { orgId, keyIds } = keySets.get(keySetOf(scenario))!;
      generation += 1;
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
        aggregator.add({ keyId: keyIds[k], orgId, ip: addressOf(k, scenario.newIps, generation), outcome: 'ok', count: 1 });
      }
      const fillMs = performance.now() - fillStarted;

      const tripsBefore = roundTrips;
      const walBefore = await walPosition(ctx.db);
      const started = performance.now();
      const done = await flusher.flush();
      const wallMs = performance.now() - started;
      const trips = roundTrips - tripsBefore;
      const walBytes = await walSince(ctx.db, walBefore);
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
        walBytes,
      });
    };

    // Cold: the first flush of each key set inserts its rows (with detection on, its first-use
    // events and prefix history too), so the timed flushes see a steady state.
    for (const set of keySets.keys())
      await flushOnce(
        plan.scenarios.find((s) => keySetOf(s) === set)!,
        true,
      );
    const countsBefore = await updateCounts(ctx.db);
    for (const [round, order] of interleavedSchedule(plan.scenarios, plan.reps).entries()) {
      for (const scenario of order) await flushOnce(scenario, false);
      ctx.log(`flush: round ${round + 1}/${plan.reps}`);
    }
    // The flushing connections report their statistics within a second of going idle.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const countsAfter = await updateCounts(ctx.db);
    hot.push(
      ...HOT_TABLES.map((table) => {
        const updates = (countsAfter.get(table)?.updates ?? 0) - (countsBefore.get(table)?.updates ?? 0);
        const hotUpdates = (countsAfter.get(table)?.hot ?? 0) - (countsBefore.get(table)?.hot ?? 0);
        return `${table} ${updates > 0 ? ((100 * hotUpdates) / updates).toFixed(1) : '–'} % of ${fmt.int(updates)}`;
      }),
    );

    // Nothing lost or doubled: each org's total is the sum of what its flushes persisted.
    for (const [set, { orgId }] of keySets) {
      const ofSet = plan.scenarios.filter((s) => keySetOf(s) === set).map(label);
      const expected = samples.filter((s) => ofSet.includes(s.scenario)).reduce((sum, s) => sum + s.usesPersisted, 0);
      const row = await ctx.db('api_key_usage').where({ org_id: orgId }).sum({ n: 'request_count' }).first();
      if (Number(row?.n) !== expected) throw new Error(`flush benchmark: key set ${set} holds ${row?.n} uses, expected ${expected}`);
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
      `${(median(warm.map((s) => s.walBytes)) / 1e6).toFixed(1)} MB`,
      fmt.ms(median(warm.map((s) => s.pruneMs)), 0),
      fmt.ms(median(warm.map((s) => s.fillMs)), 0),
    ];
  });
  const ratios = plan.scenarios
    .filter((s) => s.events && !s.newIps)
    .map((on) => {
      const wall = (events: boolean) => samples.filter((s) => s.scenario === label({ ...on, events }) && !s.cold).map((s) => s.wallMs);
      return `${fmt.int(on.keys)} keys / ${fmt.int(on.uses)} uses: ${(median(wall(true)) / median(wall(false))).toFixed(2)}×`;
    });
  const big = plan.scenarios.filter((s) => s.keys >= 100_000 && s.uses === s.keys).map(label);
  const bigWarm = samples.filter((s) => big.includes(s.scenario) && !s.cold).map((s) => s.wallMs);
  const bigCold = samples.filter((s) => big.includes(s.scenario) && s.cold).map((s) => s.wallMs);
  const notes = [
    bigWarm.length > 0
      ? `Target 100 k keys per flush ≤ 1 s: ${fmt.verdict(median(bigWarm) <= 1000)} (every 100 k-key / 100 k-use scenario, both shapes, events on and off: median ${fmt.ms(median(bigWarm), 0)}, worst ${fmt.ms(Math.max(...bigWarm), 0)}; the slowest cold flush that creates the rows: ${fmt.ms(Math.max(...bigCold), 0)}).`
      : 'Target 100 k keys per flush ≤ 1 s: not measured in --quick (5 k keys stand in).',
    "Statements = the Flusher's lastFlushStatements, the store's round trips (flush-id insert, SET LOCAL work_mem, savepoint and its release, staging tables prepared, one COPY each for keys, hours and addresses, one multi-statement query that writes every usage table; detection: one facts query and, when any event is raised, a COPY and an insert); round trips = the queries knex saw (BEGIN and COMMIT included; COPYs and the store's own multi-statement queries are not among them). Neither moves with the number of keys or uses.",
    `Event detection on / off (same address every flush), ratio of flush medians: ${ratios.join('; ')}.`,
    `WAL = pg_current_wal_lsn() moved during the flush. HOT updates over the timed flushes: ${hot.join('; ')}.`,
    'Flush time is the wall time of Flusher.flush() (drain, merge, one transaction, commit). Trimming recent IPs runs after the commit, outside the transaction, and is shown apart; so is the time to feed the aggregator (count-1 lines).',
  ];
  return {
    heading: HEADINGS.flush,
    tables: [
      {
        title: `Real Flusher + PostgreSQL store, pool of 2; ${plan.reps} interleaved timed flushes per scenario after one cold flush per key set`,
        columns: [
          'pending keys / uses',
          'flushes timed',
          'flush p50',
          'flush max',
          'cold flush (rows created)',
          'statements per flush',
          'round trips per flush',
          'keys written',
          'WAL per flush (p50)',
          'IP trim after commit (p50)',
          'aggregator fill (p50)',
        ],
        rows,
      },
    ],
    notes,
    raw: { plan, samples },
  };
}

function label(s: Scenario): string {
  return `${fmt.int(s.keys)} keys / ${fmt.int(s.uses)} uses${s.newIps ? ', new IP per key' : ''}, events ${s.events ? 'on' : 'off'}`;
}
