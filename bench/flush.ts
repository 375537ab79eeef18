import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Aggregator } from '../collector/aggregator';
import { Flusher } from '../collector/flusher';
import { KeyList } from '../collector/keyList';
import { hashesOfAllKeys } from '../collector/keyListSync';
import { KnownKeys } from '../collector/knownKeys';
import { createUsageStore } from '../collector/usageLog';
import type { UsageStore } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import { createDb, type Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createOrg, insertKeys, walPosition, walSince } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';
import { MIGRATED, openVariantDatabase, selectedVariants, type UsageLogSetting, type VariantDatabase } from './flushVariants';

// Benchmark 4. The collector's real Flusher and PostgreSQL store (collector/flusher.ts,
// collector/usageStore.ts) on the collector's pool (its flush parts and trim), with N pending keys
// that exist in api_keys. Uses arrive as count-1 lines (as hot-shots would send them), all in one
// hour, so the rows a flush writes depend on the keys alone: that is what "statements independent
// of request volume" means. Two shapes: every key from the same address in every flush (the
// timed flushes update existing rows), and every key from a new address in a new /24 in every
// flush (issue 13: totals and hours are updated while recent IPs, the network history and the
// key.new_ip events grow by one row per key per flush). The keys are one org's, and at 100 k also
// 100 orgs' (a flush the store can split by org, COLLECTOR_FLUSH_PARALLELISM; one org's it cannot).
// The first flush of a key set creates its rows (reported apart as "cold").

interface Scenario {
  keys: number;
  uses: number;
  /** Event detection in the flush (EVENTS_ENABLED), with the default thresholds. */
  events: boolean;
  /** Every key arrives from an address (and /24) it never used before, in every flush. */
  newIps: boolean;
  /** The keys are spread evenly over this many organizations. */
  orgs: number;
  /** Collectors that each saw every key (one beside each API instance), flushing at once. */
  collectors: number;
}

interface Plan {
  scenarios: Scenario[];
  reps: number;
}

// Every same-address scenario with detection on and off, interleaved, so the ratio compares like
// with like; the new-address shape with detection on (the default), at each size.
const bothWays = (scenarios: Array<Pick<Scenario, 'keys' | 'uses'>>, orgs = 1): Scenario[] =>
  scenarios.flatMap((s) => [
    { ...s, events: true, newIps: false, orgs, collectors: 1 },
    { ...s, events: false, newIps: false, orgs, collectors: 1 },
  ]);
const newAddresses = (sizes: number[], orgs = 1): Scenario[] => sizes.map((keys) => ({ keys, uses: keys, events: true, newIps: true, orgs, collectors: 1 }));
// Three collectors that each saw every key of 100 orgs, flushing at once (detection on): what the
// usage log's fold coalesces, three flushes of a key into one upsert.
const threeCollectors = (keys: number, orgs: number): Scenario => ({ keys, uses: keys, events: true, newIps: false, orgs, collectors: 3 });

const FULL: Plan = {
  scenarios: [
    ...bothWays([
      { keys: 1_000, uses: 1_000 },
      { keys: 1_000, uses: 1_000_000 },
      { keys: 100_000, uses: 100_000 },
      { keys: 100_000, uses: 1_000_000 },
    ]),
    ...newAddresses([1_000, 10_000, 100_000]),
    ...bothWays([{ keys: 100_000, uses: 100_000 }], 100),
    ...newAddresses([100_000], 100),
    threeCollectors(100_000, 100),
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
    ...bothWays([{ keys: 5_000, uses: 5_000 }], 10),
    threeCollectors(5_000, 10),
  ],
  reps: 1,
};

// A/B work on one shape needs neither the whole plan nor its three reps: BENCH_FLUSH_SCENARIOS
// keeps the scenarios of the given ids (e.g. 100k-100k-same-off,100k-100k-newip-on) and
// BENCH_FLUSH_REPS sets the timed flushes of each; the default run takes the whole plan.
const thousands = (n: number) => (n % 1000 === 0 ? `${n / 1000}k` : String(n));
const scenarioId = (s: Scenario) =>
  `${thousands(s.keys)}-${thousands(s.uses)}-${s.newIps ? 'newip' : 'same'}-${s.events ? 'on' : 'off'}${s.orgs > 1 ? `-${s.orgs}orgs` : ''}${s.collectors > 1 ? `-${s.collectors}collectors` : ''}`;

// BENCH_FLUSH_USAGE_LOG: the migrated target's COLLECTOR_USAGE_LOG (and the schema variants'); unset,
// the collector's default. A schema variant changes the usage tables, which only a direct write
// touches in the flush: compare them with BENCH_FLUSH_USAGE_LOG=false.
function usageLogSetting(env: NodeJS.ProcessEnv): UsageLogSetting | undefined {
  const value = env.BENCH_FLUSH_USAGE_LOG;
  if (value === undefined || value === '') return undefined;
  if (value === 'true' || value === 'false' || value === 'auto') return value;
  throw new Error(`BENCH_FLUSH_USAGE_LOG must be true, false or auto; got ${value}`);
}

function selectedPlan(plan: Plan, env: NodeJS.ProcessEnv): Plan {
  const ids = (env.BENCH_FLUSH_SCENARIOS ?? '').split(',').filter(Boolean);
  const unknown = ids.filter((id) => !plan.scenarios.some((s) => scenarioId(s) === id));
  if (unknown.length > 0) throw new Error(`BENCH_FLUSH_SCENARIOS: unknown ${unknown.join(', ')}; known: ${plan.scenarios.map(scenarioId).join(', ')}`);
  const reps = env.BENCH_FLUSH_REPS ? Number(env.BENCH_FLUSH_REPS) : plan.reps;
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`BENCH_FLUSH_REPS must be a positive integer; got ${env.BENCH_FLUSH_REPS}`);
  return { scenarios: ids.length > 0 ? plan.scenarios.filter((s) => ids.includes(scenarioId(s))) : plan.scenarios, reps };
}

// The collector's defaults, read when a flush is measured (no import-time work), with
// COLLECTOR_FLUSH_PARALLELISM and COLLECTOR_KNOWN_KEYS_TTL_MS from the environment: their values
// are compared run against run.
// A variant may set COLLECTOR_USAGE_LOG.
const collectorConfig = (usageLog?: UsageLogSetting) =>
  loadConfig({
    NODE_ENV: 'development',
    ...(process.env.COLLECTOR_FLUSH_PARALLELISM ? { COLLECTOR_FLUSH_PARALLELISM: process.env.COLLECTOR_FLUSH_PARALLELISM } : {}),
    ...(process.env.COLLECTOR_KNOWN_KEYS_TTL_MS ? { COLLECTOR_KNOWN_KEYS_TTL_MS: process.env.COLLECTOR_KNOWN_KEYS_TTL_MS } : {}),
    ...(process.env.COLLECTOR_KEY_LIST_REFRESH_MS ? { COLLECTOR_KEY_LIST_REFRESH_MS: process.env.COLLECTOR_KEY_LIST_REFRESH_MS } : {}),
    // The runs before the per-org hourly limit raised every event: a limit above the keys brings that back.
    ...(process.env.EVENTS_MAX_PER_ORG_HOUR ? { EVENTS_MAX_PER_ORG_HOUR: process.env.EVENTS_MAX_PER_ORG_HOUR } : {}),
    ...(usageLog ? { COLLECTOR_USAGE_LOG: usageLog } : {}),
  }).collector;

interface FlushSample {
  scenario: string;
  variant: string;
  cold: boolean;
  wallMs: number;
  /** CPU of this process (user + system) during the flush: the client's share of it. */
  clientCpuMs: number;
  flusherMs: number;
  statements: number;
  roundTrips: number;
  keysWritten: number;
  usesPersisted: number;
  pruneMs: number;
  fillMs: number;
  walBytes: number;
  /** COLLECTOR_USAGE_LOG: the fold that applied this flush's rows, after it (0 without the log). */
  fold: { wallMs: number; clientCpuMs: number; walBytes: number; keys: number; heapPeakBytes: number } | undefined;
}

// A key set per size and shape: the new-address shape grows its keys' rows, the other does not.
const keySetOf = (s: Scenario) => `${s.keys}${s.newIps ? ' new-ip' : ''}${s.orgs > 1 ? ` ${s.orgs} orgs` : ''}`;

// Address of key `k` in flush `generation`: the same for every flush, or a new /24 each time.
function addressOf(k: number, newIps: boolean, generation: number): string {
  const high = newIps ? `${10 + (k >> 16)}.${generation & 255}` : `10.${(k >> 16) & 255}`;
  return `${high}.${(k >> 8) & 255}.${k & 255}`;
}

// Updates and HOT updates of the tables every flush updates, from PostgreSQL's statistics.
const HOT_TABLES = ['api_key_usage', 'api_key_usage_hourly', 'api_key_usage_current_hours', 'api_key_recent_ips'];
type UpdateCounts = Map<string, { updates: number; hot: number }>;
async function updateCounts(db: Db): Promise<UpdateCounts> {
  const rows = (await db.raw('select relname, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = any(?)', [HOT_TABLES])).rows;
  return new Map(
    rows.map((r: { relname: string; n_tup_upd: string; n_tup_hot_upd: string }) => [r.relname, { updates: Number(r.n_tup_upd), hot: Number(r.n_tup_hot_upd) }]),
  );
}

function hotShares(before: UpdateCounts, after: UpdateCounts): string {
  return HOT_TABLES.map((table) => {
    const updates = (after.get(table)?.updates ?? 0) - (before.get(table)?.updates ?? 0);
    const hotUpdates = (after.get(table)?.hot ?? 0) - (before.get(table)?.hot ?? 0);
    return `${table} ${updates > 0 ? ((100 * hotUpdates) / updates).toFixed(1) : '–'} % of ${fmt.int(updates)}`;
  }).join('; ');
}

const silent = createLogger({ level: 'silent', name: 'bench-flush' });

/** A schema the flushes run against: the benchmark database as migrated, or a variant's own. */
interface Target {
  name: string;
  /** Setup, statistics, checks. */
  db: Db;
  /** One pool per collector, each of the collector's own size; the first counts every round trip (query events, BEGIN and COMMIT included). */
  pools: Db[];
  /** Each key set's keys, and the org of each. */
  keySets: Map<string, { orgIds: string[]; keyIds: string[] }>;
  roundTrips: number;
  /** The store's: flushes of this many keys or more append to the usage log. */
  logMinKeys: number | undefined;
  /** Each collector's keys confirmed by its appends, kept across its flushes as a running collector keeps them. */
  known: Array<KnownKeys | undefined>;
  /** The collectors' key list, which their aggregators admit keys by and their appends trust. */
  listed: KeyList | undefined;
}

async function openTarget(ctx: BenchContext, plan: Plan, name: string, db: Db, url: string, usageLog?: UsageLogSetting): Promise<Target> {
  const keySets = new Map<string, { orgIds: string[]; keyIds: string[] }>();
  for (const scenario of plan.scenarios) {
    const set = keySetOf(scenario);
    if (keySets.has(set)) continue;
    const started = performance.now();
    const orgIds: string[] = [];
    const keyIds: string[] = [];
    for (let o = 0; o < scenario.orgs; o++) {
      const orgId = await createOrg(db, `bench-flush-${set}-${o}`);
      for (const keyId of await insertKeys(db, orgId, Math.ceil(scenario.keys / scenario.orgs), `flush-${set}-`)) {
        orgIds.push(orgId);
        keyIds.push(keyId);
      }
    }
    ctx.log(`flush: ${fmt.int(keyIds.length)} keys in ${scenario.orgs} org(s) (${set}, ${name}) created in ${fmt.ms(performance.now() - started, 0)}`);
    keySets.set(set, { orgIds, keyIds });
  }
  await db.raw('analyze api_keys');
  // The collector's pool, less the webhook worker's connection: the flush's parts and the trim.
  const collectors = Math.max(...plan.scenarios.map((s) => s.collectors));
  const pools = Array.from({ length: collectors }, () =>
    createDb(url, { poolMax: collectorConfig().flushParallelism + 1, applicationName: 'keyusage-bench-flush' }),
  );
  const { usageLogMinKeys, knownKeysTtlMs, keyListRefreshMs } = collectorConfig(usageLog);
  // A running collector's key list, read at its start, before its first flush (collector/keyListSync.ts).
  const listed = keyListRefreshMs > 0 ? await keyListOf(db) : undefined;
  const known = pools.map(() => (knownKeysTtlMs > 0 ? new KnownKeys(knownKeysTtlMs, Date.now, () => listed) : undefined));
  const target: Target = { name, db, pools, keySets, roundTrips: 0, logMinKeys: usageLogMinKeys, known, listed };
  pools[0].on('query', () => target.roundTrips++);
  return target;
}

async function keyListOf(db: Db): Promise<KeyList> {
  const list = new KeyList(randomInt(2 ** 31));
  list.replace((await hashesOfAllKeys(db, list))!);
  return list;
}

// One collector of `scenario` on `pool`: its aggregator filled with count-1 lines, and the real
// Flusher and store; trimming (after the commit) timed apart.
async function collectorOf(target: Target, pool: Db, scenario: Scenario, generation: number) {
  const { orgIds, keyIds } = target.keySets.get(keySetOf(scenario))!;
  const clock = Date.now();
  const aggregator = new Aggregator({ maxKeys: 200_000, listedKeys: target.listed, now: () => clock });
  const trim = { done: Promise.resolve(), ms: 0 };
  const { events, flushParallelism } = collectorConfig();
  const inner = createUsageStore(
    pool,
    {
      events: scenario.events ? events : undefined,
      parallelism: flushParallelism,
      logMinKeys: target.logMinKeys,
    },
    target.known[target.pools.indexOf(pool)],
  );
  const store: UsageStore = {
    write: (batches, toLog) => inner.write(batches, toLog),
    // The flusher decides a write's way from it.
    logMinKeys: inner.logMinKeys,
    prune: (ids) => {
      const started = performance.now();
      trim.done = inner.prune(ids).then(() => {
        trim.ms = performance.now() - started;
      });
      return trim.done;
    },
    expireOldRows: (days) => inner.expireOldRows(days),
    fold: () => inner.fold(),
  };
  const flusher = new Flusher({ aggregator, store, intervalMs: 1000, maxRetryKeys: 200_000, logger: silent });
  // A collector in its steady state: its first fold found the log empty (the last flush's fold
  // emptied it), so its small flushes go direct. A new one appends until then (collector/flusher.ts).
  await flusher.fold();
  const fillStarted = performance.now();
  for (let u = 0; u < scenario.uses; u++) {
    const k = u % keyIds.length;
    aggregator.add({ keyId: keyIds[k], orgId: orgIds[k], ip: addressOf(k, scenario.newIps, generation), outcome: 'ok', count: 1 });
  }
  return { flusher, inner, store, trim, fillMs: performance.now() - fillStarted };
}

// One flush of `scenario` on `target`, by each of its collectors at once (each on its own pool,
// the same keys), timed until the last commits; with the usage log, the fold after it.
async function flushOnce(ctx: BenchContext, target: Target, scenario: Scenario, generation: number, cold: boolean): Promise<FlushSample> {
  const collectors = await Promise.all(target.pools.slice(0, scenario.collectors).map((pool) => collectorOf(target, pool, scenario, generation)));
  const tripsBefore = target.roundTrips;
  const walBefore = await walPosition(ctx.db);
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const done = await Promise.all(collectors.map(({ flusher }) => flusher.flush()));
  const wallMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  const trips = target.roundTrips - tripsBefore;
  const walBytes = await walSince(ctx.db, walBefore);
  await Promise.all(collectors.map(({ trim }) => trim.done));
  const failed = collectors.some(({ flusher }) => flusher.stats.failedFlushes > 0);
  if (!done.every(Boolean) || failed) throw new Error(`flush of ${scenario.keys} keys failed`);
  const [first] = collectors;
  const fold = first.flusher.stats.appendedFlushes > 0 ? await timedFold(ctx, first.inner, first.store) : undefined;
  return {
    scenario: label(scenario),
    variant: target.name,
    cold,
    wallMs,
    clientCpuMs: (cpu.user + cpu.system) / 1000,
    flusherMs: first.flusher.stats.lastFlushDurationMs,
    statements: first.flusher.stats.lastFlushStatements,
    roundTrips: trips,
    keysWritten: first.flusher.stats.lastFlushKeys,
    usesPersisted: collectors.reduce((sum, { flusher }) => sum + flusher.stats.usesPersisted, 0),
    pruneMs: Math.max(...collectors.map(({ trim }) => trim.ms)),
    fillMs: collectors.reduce((sum, c) => sum + c.fillMs, 0),
    walBytes,
    fold,
  };
}

// The fold that follows a flush in a collector with the usage log, on the same pool, then the
// trim its keys need (as the Flusher queues it), timed apart like the flush's.
async function timedFold(ctx: BenchContext, inner: ReturnType<typeof createUsageStore>, store: UsageStore) {
  const walBefore = await walPosition(ctx.db);
  const heap = heapPeakSampler();
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  let keys = 0;
  // One fold takes at most FOLD_MAX_ROWS rows (whole orgs): several collectors' rows may need more.
  for (let result = await inner.fold(); result.keysWritten > 0; result = await inner.fold()) {
    keys += result.keysWritten;
    // Each key once, as the Flusher queues it: a key is named once per table it gained a row in.
    await store.prune([...new Map(result.keysToTrim.map((k) => [`${k.orgId}/${k.keyId}`, k])).values()]);
  }
  const wallMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  const heapPeakBytes = heap.stop();
  const walBytes = await walSince(ctx.db, walBefore);
  return { wallMs, clientCpuMs: (cpu.user + cpu.system) / 1000, walBytes, keys, heapPeakBytes };
}

// The most heap in use above the start, sampled every 10 ms between the fold's awaits: garbage not
// yet collected counts, so it is an upper bound on what the fold holds, for A/B, not a size.
function heapPeakSampler() {
  const base = process.memoryUsage().heapUsed;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().heapUsed)), 10);
  return {
    stop: () => {
      clearInterval(timer);
      return Math.max(peak, process.memoryUsage().heapUsed) - base;
    },
  };
}

// Nothing lost or doubled: each key set's total is the sum of what its flushes persisted.
async function checkTotals(target: Target, plan: Plan, samples: readonly FlushSample[]) {
  for (const [set, { orgIds }] of target.keySets) {
    const ofSet = plan.scenarios.filter((s) => keySetOf(s) === set).map(label);
    const expected = samples.filter((s) => s.variant === target.name && ofSet.includes(s.scenario)).reduce((sum, s) => sum + s.usesPersisted, 0);
    const row = await target
      .db('api_key_usage')
      .whereIn('org_id', [...new Set(orgIds)])
      .sum({ n: 'request_count' })
      .first();
    if (Number(row?.n) !== expected) throw new Error(`flush benchmark: key set ${set} (${target.name}) holds ${row?.n} uses, expected ${expected}`);
  }
}

export async function runFlush(ctx: BenchContext, env: NodeJS.ProcessEnv = process.env): Promise<BenchResult> {
  const plan = selectedPlan(ctx.quick ? QUICK : FULL, env);
  const variants = selectedVariants(env.BENCH_FLUSH_VARIANTS);
  const opened: VariantDatabase[] = [];
  const targets: Target[] = [];
  const samples: FlushSample[] = [];
  const hot: string[] = [];
  try {
    const usageLog = usageLogSetting(env);
    targets.push(await openTarget(ctx, plan, MIGRATED, ctx.db, ctx.databaseUrl, usageLog));
    for (const variant of variants) {
      const database = await openVariantDatabase(ctx.databaseUrl, variant);
      opened.push(database);
      // A schema variant's flushes take the way the migrated target's do, so the two compare.
      targets.push(await openTarget(ctx, plan, variant.name, database.db, database.url, database.usageLog ?? usageLog));
    }
    let generation = 0;
    // Cold: the first flush of each key set inserts its rows (with detection on, its first-use
    // events and prefix history too), so the timed flushes see a steady state.
    for (const target of targets) {
      for (const set of target.keySets.keys()) {
        samples.push(
          await flushOnce(
            ctx,
            target,
            plan.scenarios.find((s) => keySetOf(s) === set)!,
            ++generation,
            true,
          ),
        );
      }
    }
    const countsBefore = await Promise.all(targets.map((t) => updateCounts(t.db)));
    const cases = plan.scenarios.flatMap((scenario) => targets.map((target) => ({ scenario, target })));
    for (const [round, order] of interleavedSchedule(cases, plan.reps).entries()) {
      for (const { scenario, target } of order) samples.push(await flushOnce(ctx, target, scenario, ++generation, false));
      ctx.log(`flush: round ${round + 1}/${plan.reps}`);
    }
    // The flushing connections report their statistics within a second of going idle.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    for (const [i, target] of targets.entries()) {
      hot.push(`${targets.length > 1 ? `${target.name}: ` : ''}${hotShares(countsBefore[i], await updateCounts(target.db))}`);
      await checkTotals(target, plan, samples);
    }
  } finally {
    for (const target of targets) for (const pool of target.pools) await pool.destroy();
    for (const database of opened) await database.drop().catch(() => undefined);
  }
  return report(
    plan,
    targets.map((t) => t.name),
    samples,
    hot,
    variants.map((v) => `${v.name}: ${v.change}`),
    usageLogSetting(env),
  );
}

function foldColumns(warm: FlushSample[]) {
  const folds = warm.flatMap((s) => (s.fold ? [s.fold] : []));
  if (folds.length === 0) return ['–', '–', '–', '–', '–'];
  const both = warm.map((s) => s.wallMs + (s.fold?.wallMs ?? 0));
  return [
    fmt.ms(median(folds.map((f) => f.wallMs)), 0),
    fmt.ms(Math.max(...folds.map((f) => f.wallMs)), 0),
    `${fmt.ms(median(both), 0)} / ${fmt.ms(Math.max(...both), 0)}`,
    `${(median(folds.map((f) => f.walBytes)) / 1e6).toFixed(1)} MB`,
    `${(median(folds.map((f) => f.heapPeakBytes)) / 1e6).toFixed(0)} / ${(Math.max(...folds.map((f) => f.heapPeakBytes)) / 1e6).toFixed(0)} MB`,
  ];
}

function summaryRow(name: string, warm: FlushSample[], cold: FlushSample | undefined) {
  return [
    name,
    warm.length,
    fmt.ms(median(warm.map((s) => s.wallMs)), 0),
    fmt.ms(Math.max(...warm.map((s) => s.wallMs)), 0),
    // An appended cold flush creates no usage row: its fold does.
    cold ? `${fmt.ms(cold.wallMs, 0)}${cold.fold ? ` + fold ${fmt.ms(cold.fold.wallMs, 0)}` : ''}` : '–',
    fmt.ms(median(warm.map((s) => s.clientCpuMs)), 0),
    [...new Set(warm.map((s) => s.statements))].join(', '),
    [...new Set(warm.map((s) => s.roundTrips))].join(', '),
    fmt.int(median(warm.map((s) => s.keysWritten))),
    `${(median(warm.map((s) => s.walBytes)) / 1e6).toFixed(1)} MB`,
    fmt.ms(median(warm.map((s) => s.pruneMs)), 0),
    fmt.ms(median(warm.map((s) => s.fillMs)), 0),
    ...foldColumns(warm),
  ];
}

// The 1 s target read on each target's 100 k-key flushes; for flushes that appended to the usage
// log, with what the folds of their rows took after them.
function flushVerdicts(plan: Plan, samples: FlushSample[], targetNames: string[]): string[] {
  const big = plan.scenarios.filter((s) => s.keys >= 100_000 && s.uses === s.keys && s.collectors === 1).map(label);
  return targetNames.flatMap((variant) => {
    const mine = samples.filter((s) => s.variant === variant && big.includes(s.scenario));
    const warm = mine.filter((s) => !s.cold).map((s) => s.wallMs);
    if (warm.length === 0) return [];
    const folds = mine.filter((s) => !s.cold && s.fold).map((s) => s.fold!.wallMs);
    const cold = mine.filter((s) => s.cold).map((s) => s.wallMs);
    const appended =
      folds.length === 0
        ? 'written directly'
        : `${folds.length} of ${warm.length} appended to the usage log; the fold of each one's rows, after it: median ${fmt.ms(median(folds), 0)}, worst ${fmt.ms(Math.max(...folds), 0)}. Each fold applies one flush here: it is paid once for every flush of a key since the last fold (none coalesced here)`;
    return [
      // Judged by the worst flush, a collector's first (cold) one included: each is a second of
      // uses the collector holds until it ends, and a median met while some flushes took longer
      // said "met" of runs whose worst flush was 1.2 s.
      `Target 100 k keys per flush ≤ 1 s [${variant}]: ${fmt.verdict(Math.max(...warm, ...cold) <= 1000)} (by the worst flush; every 100 k-key / 100 k-use scenario run: median ${fmt.ms(median(warm), 0)}, worst ${fmt.ms(Math.max(...warm), 0)}; the slowest cold flush: ${cold.length > 0 ? fmt.ms(Math.max(...cold), 0) : 'none in this run'}; ${appended}).`,
    ];
  });
}

function migratedWay(usageLog: UsageLogSetting | undefined): string {
  if (usageLog === 'true') return 'every flush appends to the usage log';
  if (usageLog === 'false') return 'every flush writes the usage tables';
  return `a flush of ${fmt.int(collectorConfig(usageLog).usageLogMinKeys ?? 0)} keys or more appends to the usage log, a smaller one writes the usage tables`;
}

function report(
  plan: Plan,
  targetNames: string[],
  samples: FlushSample[],
  hot: string[],
  variantNotes: string[],
  usageLog: UsageLogSetting | undefined,
): BenchResult {
  const named = (scenario: Scenario, variant: string) => `${label(scenario)}${targetNames.length > 1 ? ` [${variant}]` : ''}`;
  const rows = plan.scenarios.flatMap((scenario) =>
    targetNames.map((variant) => {
      const mine = samples.filter((s) => s.scenario === label(scenario) && s.variant === variant);
      return summaryRow(
        named(scenario, variant),
        mine.filter((s) => !s.cold),
        mine.find((s) => s.cold),
      );
    }),
  );
  const migrated = samples.filter((s) => s.variant === MIGRATED);
  // Flushes that wrote directly: an append detects nothing, its fold does.
  const wallOf = (scenario: Scenario) => migrated.filter((s) => s.scenario === label(scenario) && !s.cold && !s.fold).map((s) => s.wallMs);
  const ratios = plan.scenarios
    .filter(
      (s) =>
        s.events &&
        !s.newIps &&
        plan.scenarios.some((o) => !o.events && !o.newIps && o.keys === s.keys && o.uses === s.uses && o.orgs === s.orgs && o.collectors === s.collectors) &&
        wallOf(s).length > 0 &&
        wallOf({ ...s, events: false }).length > 0,
    )
    .map((on) => `${label(on).replace(/, events on$/, '')}: ${(median(wallOf(on)) / median(wallOf({ ...on, events: false }))).toFixed(2)}×`);
  const verdicts = flushVerdicts(plan, samples, targetNames);
  const notes = [
    ...(verdicts.length > 0 ? verdicts : ['Target 100 k keys per flush ≤ 1 s: not measured in this run (--quick: 5 k keys stand in).']),
    "Statements = the Flusher's lastFlushStatements, the store's round trips (flush-id insert, SET LOCAL work_mem, savepoint and its release, staging tables prepared, one COPY each for keys, hours and addresses, one multi-statement query that writes every usage table; detection: one facts query and, when any event is raised, a COPY and an insert); round trips = the queries knex saw (BEGIN and COMMIT included; COPYs and the store's own multi-statement queries are not among them). Neither moves with the number of keys or uses; a flush split by org (10,000 keys or more of several orgs, COLLECTOR_FLUSH_PARALLELISM) has each part's own.",
    ...(ratios.length > 0 ? [`Event detection on / off (same address every flush), ratio of flush medians: ${ratios.join('; ')}.`] : []),
    `WAL = pg_current_wal_lsn() moved during the flush. HOT updates over the timed flushes: ${hot.join(' | ')}.`,
    "Flush time is the wall time of Flusher.flush() (drain, merge, one transaction, commit); client CPU is this process's user + system CPU over the same span. Trimming recent IPs runs after the commit, outside the transaction, and is shown apart; so is the time to feed the aggregator (count-1 lines). \"N collectors at once\": N collectors (each its own pool) that all saw every key flush at the same moment, timed until the last commits; with the usage log the fold that follows applies the N flushes' rows, each key's in one upsert per table. Heap peak during the fold: the most heap in use above the fold's start, sampled every 10 ms between its awaits, garbage not yet collected included (an A/B figure, not a size).",
    `"${MIGRATED}": the schema as migrated and the collector's store as configured (COLLECTOR_USAGE_LOG=${usageLog ?? 'auto, the default'}: ${migratedWay(usageLog)}); a flush that appended is followed by the fold of its rows, timed apart. Schema variants take the same setting unless they name their own.`,
    ...(variantNotes.length > 0
      ? [`Schema variants (BENCH_FLUSH_VARIANTS), each in its own database on the same server, interleaved with "${MIGRATED}": ${variantNotes.join('; ')}.`]
      : []),
  ];
  return {
    heading: HEADINGS.flush,
    tables: [
      {
        title: `Real Flusher + PostgreSQL store, COLLECTOR_FLUSH_PARALLELISM=${collectorConfig().flushParallelism} (a pool of as many connections + 1); ${plan.reps} interleaved timed flushes per scenario after one cold flush per key set`,
        columns: [
          'pending keys / uses',
          'flushes timed',
          'flush p50',
          'flush max',
          'cold flush (rows created; appended: + the fold that creates them)',
          'client CPU (p50)',
          'statements per flush',
          'round trips per flush',
          'keys written',
          'WAL per flush (p50)',
          'IP trim after commit (p50)',
          'aggregator fill (p50)',
          'fold p50 (usage log)',
          'fold max',
          'flush + fold p50 / max',
          'WAL per fold (p50)',
          'heap peak during the fold (p50 / max)',
        ],
        rows,
      },
    ],
    notes,
    raw: { plan, samples },
  };
}

function label(s: Scenario): string {
  const collectors = s.collectors > 1 ? `, ${s.collectors} collectors at once` : '';
  return `${fmt.int(s.keys)} keys${s.orgs > 1 ? ` in ${s.orgs} orgs` : ''} / ${fmt.int(s.uses)} uses${s.newIps ? ', new IP per key' : ''}, events ${s.events ? 'on' : 'off'}${collectors}`;
}
