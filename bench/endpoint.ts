import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { readUsageSeries, listKeyUsage, type UsageQuery } from '../api/usage/usage.repository';
import { PRIMARY_KEY, setPrimaryKey } from '../migrations/20261201000070_usage_windows_index_only';
import { ORG_HOUR_INDEX } from '../migrations/20261208000280_org_usage_series';
import { createDb, type Db } from '../shared/db';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createCallableKey, createOrg } from './lib/database';
import { startBenchServer } from './lib/benchServer';
import { stopChild } from '../harness/processes';
import { captureMainStatement, explainStatement, type CapturedStatement } from '../harness/explain';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median, summarize } from './lib/stats';
import { SEED_SHAPE, seedTenants } from './lib/usageSeed';
import { DAY_MS } from '../shared/timeUnits';

// Benchmark 5. Many orgs of many keys with 30 days of hourly buckets (bench/lib/usageSeed.ts),
// served by the real app (a bench/server.ts process with tracking off) and read over HTTP one
// request at a time, each round on the next org; several runs, each summarized on its own. Then
// the query plans, captured from the repository's own SQL (knex's query event) and run under
// EXPLAIN (ANALYZE, BUFFERS).

interface Plan {
  orgs: number;
  keysPerOrg: number;
  runs: number;
  /** Rounds of one request per query in a run, stopped early when the run's budget is spent. */
  rounds: number;
  runBudgetMs: number;
  seedBudgetMs: number;
}

const FULL: Plan = { orgs: 100, keysPerOrg: 10_000, runs: 3, rounds: 100, runBudgetMs: 60_000, seedBudgetMs: 50 * 60_000 };
const QUICK: Plan = { orgs: 3, keysPerOrg: 300, runs: 2, rounds: 5, runBudgetMs: 10_000, seedBudgetMs: 60_000 };
const PREFIX = 'endpoint-';
// Key 100 of each org is one of its hot keys (usageSeed.ts): 720 buckets in the 30-day series.
const SERIES_KEY = 100;

interface Tenant {
  orgId: string;
  token: string;
  hotKeyId: string;
}

const QUERY_NAMES = ['page', 'recent', 'busiest', 'dormant', 'deep', 'series', 'orgWeek', 'orgMonth'] as const;
type QueryName = (typeof QUERY_NAMES)[number];

function queries(plan: Plan): Record<QueryName, { label: string; path: (t: Tenant, now: Date) => string }> {
  const list = (query: string) => (t: Tenant) => `/api/orgs/${t.orgId}/api-keys/usage?${query}`;
  const orgSeries = (granularity: 'hour' | 'day', days: number) => (t: Tenant, now: Date) =>
    `/api/orgs/${t.orgId}/usage?granularity=${granularity}&byOutcome=true&from=${new Date(now.getTime() - days * DAY_MS).toISOString()}&to=${now.toISOString()}`;
  const deepOffset = plan.keysPerOrg - 50;
  return {
    page: { label: 'first page (limit 50, newest keys first)', path: list('limit=50') },
    recent: { label: "most recently used first (sort=lastUsedAt, limit 50: the dashboard's default)", path: list('limit=50&sort=lastUsedAt') },
    busiest: { label: 'busiest first (sort=requestCount, limit 50)', path: list('limit=50&sort=requestCount') },
    dormant: { label: 'dormant filter (dormant=true, limit 50)', path: list('limit=50&dormant=true') },
    deep: { label: `deep page (offset ${fmt.int(deepOffset)}, limit 50: the last)`, path: list(`limit=50&offset=${deepOffset}`) },
    series: {
      label: "one hot key's 30-day hourly series (720 buckets)",
      path: (t, now) =>
        `/api/orgs/${t.orgId}/api-keys/${t.hotKeyId}/usage?granularity=hour&from=${new Date(now.getTime() - 30 * DAY_MS).toISOString()}&to=${now.toISOString()}`,
    },
    orgWeek: { label: "the org's 7-day hourly series, every key summed (the dashboard's default; 168 buckets)", path: orgSeries('hour', 7) },
    orgMonth: { label: "the org's 30-day daily series, every key summed (30 buckets)", path: orgSeries('day', 30) },
  };
}

async function createTenants(ctx: BenchContext, plan: Plan): Promise<Tenant[]> {
  const tenants: Array<Omit<Tenant, 'hotKeyId'>> = [];
  for (let i = 0; i < plan.orgs; i++) {
    const orgId = await createOrg(ctx.db, `bench-endpoint-${i}`);
    const admin = await createCallableKey(ctx.db, orgId, ctx.pepper, 'bench-endpoint-admin', ['keys:read', 'keys:write']);
    tenants.push({ orgId, token: admin.plaintext });
  }
  const seed = await seedTenants(
    ctx.db,
    tenants.map((t) => t.orgId),
    plan.keysPerOrg,
    { prefix: PREFIX, budgetMs: plan.seedBudgetMs, log: ctx.log },
  );
  ctx.log(
    `endpoint: ${fmt.int(seed.keys)} keys, ${fmt.int(seed.usage)} usage rows, ${fmt.int(seed.hourly)} hourly rows seeded in ${seed.seconds.toFixed(0)} s`,
  );
  const hot = await ctx
    .db('api_keys')
    .select('org_id', 'id')
    .where({ name: `${PREFIX}${SERIES_KEY}` });
  const hotOf = new Map(hot.map((row: { org_id: string; id: string }) => [row.org_id, row.id]));
  return tenants.map((t) => ({ ...t, hotKeyId: hotOf.get(t.orgId)! }));
}

interface Run {
  latencies: Record<QueryName, number[]>;
  loadBefore: number;
  loadAfter: number;
}

// The same seeded data read as migrated, then without 20261208000280's (org_id, hour) index, then
// also with the primary key as it was before 20261201000070 (without request_count in its leaf
// entries, which makes the window sums index-only). Each variant changes the one before it.
const VARIANTS: ReadonlyArray<{ name: string; change?: (db: Db) => Promise<void> }> = [
  { name: 'as migrated' },
  { name: 'without 20261208000280 (no (org_id, hour) index)', change: (db) => db.raw('drop index ??', [ORG_HOUR_INDEX.name]).then(() => undefined) },
  { name: 'also before 20261201000070 (plain primary key)', change: (db) => setPrimaryKey(db, PRIMARY_KEY.plain) },
];

interface VariantResult {
  name: string;
  runs: Run[];
  matching: Record<QueryName, number>;
  plans: Record<QueryName, PlanInfo>;
}

export async function runEndpoint(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const tenants = await createTenants(ctx, plan);
  const seed = await ctx.db.raw(
    `select (select count(*) from api_key_usage_hourly) as hourly, (select count(*) from api_keys) as keys,
            pg_relation_size('api_key_usage_hourly') as heap, pg_relation_size(?) as org_hour_index`,
    [ORG_HOUR_INDEX.name],
  );
  const results: VariantResult[] = [];
  for (const variant of VARIANTS) {
    if (variant.change) {
      const started = performance.now();
      await variant.change(ctx.db);
      await ctx.db.raw('vacuum analyze api_key_usage_hourly');
      ctx.log(`endpoint: ${variant.name}: changed in ${fmt.ms(performance.now() - started, 0)}`);
    }
    const { runs, matching } = await measure(ctx, plan, tenants, variant.name);
    results.push({ name: variant.name, runs, matching, plans: await explainPlans(ctx, tenants[Math.floor(tenants.length / 2)], plan) });
  }
  const { hourly, keys, heap, org_hour_index: orgHourIndex } = seed.rows[0];
  return report(plan, results, { hourly: Number(hourly), keys: Number(keys), heapBytes: Number(heap), orgHourIndexBytes: Number(orgHourIndex) });
}

async function measure(ctx: BenchContext, plan: Plan, tenants: Tenant[], variant: string) {
  const defs = queries(plan);
  const server = await startBenchServer('off', { DATABASE_URL: ctx.databaseUrl, KEY_PEPPER: ctx.pepper, KEY_CACHE_TTL_MS: '60000' });
  const runs: Run[] = [];
  const matching = {} as Record<QueryName, number>;
  try {
    const get = async (name: QueryName, tenant: Tenant) => {
      const started = performance.now();
      const response = await fetch(`${server.url}${defs[name].path(tenant, new Date())}`, { headers: { authorization: `Bearer ${tenant.token}` } });
      const body = (await response.json()) as { page?: { total: number }; buckets?: unknown[] };
      const ms = performance.now() - started;
      if (response.status !== 200) throw new Error(`${name} answered ${response.status}: ${JSON.stringify(body)}`);
      matching[name] = body.page?.total ?? body.buckets?.length ?? 0;
      return ms;
    };
    // Warm-up: every org's key into the server's cache, every query once.
    for (const tenant of tenants) await get('page', tenant);
    for (const name of QUERY_NAMES) await get(name, tenants[0]);
    for (let r = 0; r < plan.runs; r++) {
      const latencies = Object.fromEntries(QUERY_NAMES.map((name) => [name, []])) as unknown as Record<QueryName, number[]>;
      const run: Run = { latencies, loadBefore: os.loadavg()[0], loadAfter: NaN };
      const deadline = performance.now() + plan.runBudgetMs;
      for (const [round, order] of interleavedSchedule(QUERY_NAMES, plan.rounds).entries()) {
        if (performance.now() > deadline) break;
        const tenant = tenants[(r * plan.rounds + round) % tenants.length];
        for (const name of order) run.latencies[name].push(await get(name, tenant));
      }
      run.loadAfter = os.loadavg()[0];
      runs.push(run);
      ctx.log(`endpoint: ${variant}, run ${r + 1}: ${QUERY_NAMES.map((name) => `${name} p50 ${fmt.ms(summarize(run.latencies[name]).p50)}`).join(', ')}`);
    }
  } finally {
    await stopChild(server.child);
  }
  return { runs, matching };
}

function variantTable(plan: Plan, variant: VariantResult, table: TableSizes) {
  const defs = queries(plan);
  const rows = QUERY_NAMES.map((name) => {
    const s = variant.runs.map((run) => summarize(run.latencies[name]));
    const p50s = s.map((x) => x.p50);
    const p95s = s.map((x) => x.p95);
    const explained = variant.plans[name];
    return [
      defs[name].label,
      s.reduce((n, x) => n + x.n, 0),
      fmt.int(variant.matching[name]),
      fmt.ms(median(p50s)),
      fmt.ms(Math.max(...p50s)),
      fmt.ms(median(p95s)),
      fmt.ms(Math.max(...p95s)),
      fmt.ms(Math.max(...s.map((x) => x.max))),
      explained.executionMs === null ? 'n/a' : fmt.ms(explained.executionMs, 1),
      explained.indexes.join(', ') || 'none',
    ];
  });
  return {
    title: `${variant.name}: GET /api/orgs/:id/api-keys/usage (and /:keyId/usage, and the org's /api/orgs/:id/usage) over HTTP, one request at a time, queries interleaved, each round on the next org; ${plan.runs} runs of up to ${plan.rounds} rounds or ${plan.runBudgetMs / 1000} s; ${fmt.int(plan.orgs)} orgs × ${fmt.int(plan.keysPerOrg)} keys (${fmt.int(table.keys)} in api_keys, ${fmt.int(table.hourly)} hourly rows)`,
    columns: [
      'query',
      'requests',
      'keys (buckets) matching',
      'p50 median of runs',
      'p50 worst run',
      'p95 median of runs',
      'p95 worst run',
      'max',
      'EXPLAIN ANALYZE execution',
      'indexes in the plan',
    ],
    rows,
  };
}

interface TableSizes {
  hourly: number;
  keys: number;
  heapBytes: number;
  orgHourIndexBytes: number;
}

function report(plan: Plan, variants: VariantResult[], table: TableSizes): BenchResult {
  const defs = queries(plan);
  const verdicts = (variant: VariantResult) => {
    const worstP50 = (name: QueryName) => Math.max(...variant.runs.map((run) => summarize(run.latencies[name]).p50));
    const loads = variant.runs.map((run) => `${run.loadBefore.toFixed(2)}→${run.loadAfter.toFixed(2)}`).join(', ');
    const against50 = (names: readonly QueryName[]) =>
      names.map((name) => `${name} ${fmt.verdict(worstP50(name) <= 50)} (${fmt.ms(worstP50(name))})`).join(', ');
    return `${variant.name}: target p50 ≤ 50 ms (worst run): ${against50(['page', 'recent', 'dormant', 'busiest'])}; the org series held to the same 50 ms (no target of the issue): ${against50(['orgWeek', 'orgMonth'])}; load average (1 min) before→after each run: ${loads}.`;
  };
  return {
    heading: HEADINGS.endpoint,
    tables: variants.map((variant) => variantTable(plan, variant, table)),
    notes: [
      ...variants.map(verdicts),
      `The (org_id, hour) index of 20261208000280: ${(table.orgHourIndexBytes / 2 ** 20).toFixed(1)} MiB, the hourly table ${(table.heapBytes / 2 ** 20).toFixed(1)} MiB (${(table.orgHourIndexBytes / table.heapBytes).toFixed(2)} ×).`,
      `Seed: ${SEED_SHAPE}. Latency is end to end (client fetch → auth → queries → JSON); the plan columns come from EXPLAIN (ANALYZE, BUFFERS) of each query's main statement, on one org, after the runs.`,
      ...variants.flatMap((variant) =>
        (['busiest', 'dormant', 'orgWeek'] as const).map(
          (name) => `${variant.name}: EXPLAIN (ANALYZE, BUFFERS), ${defs[name].label}:\n\n\`\`\`\n${variant.plans[name].text}\n\`\`\``,
        ),
      ),
    ],
    raw: { plan, variants, table },
  };
}

interface PlanInfo {
  executionMs: number | null;
  indexes: string[];
  text: string;
}

// Captures the SQL each repository call sends and runs its main statement (the page query, not
// the count beside it) under EXPLAIN (ANALYZE, BUFFERS).
async function explainPlans(ctx: BenchContext, tenant: Tenant, plan: Plan): Promise<Record<QueryName, PlanInfo>> {
  const db = createDb(ctx.databaseUrl, { poolMax: 1, applicationName: 'keyusage-bench-explain' });
  const now = new Date();
  const base: UsageQuery = {
    orgId: tenant.orgId,
    now,
    status: null,
    dormantBefore: new Date(now.getTime() - 30 * DAY_MS),
    dormant: null,
    nameOrOwnerContains: null,
    keyId: null,
    eventsSince: new Date(now.getTime() - 7 * DAY_MS),
    sort: 'createdAt',
    order: 'desc',
    limit: 50,
    offset: 0,
  };
  const calls: Record<QueryName, () => Promise<unknown>> = {
    page: () => listKeyUsage(db, base),
    recent: () => listKeyUsage(db, { ...base, sort: 'lastUsedAt' }),
    busiest: () => listKeyUsage(db, { ...base, sort: 'requestCount' }),
    dormant: () => listKeyUsage(db, { ...base, dormant: true }),
    deep: () => listKeyUsage(db, { ...base, offset: plan.keysPerOrg - 50 }),
    series: () =>
      readUsageSeries(db, { orgId: tenant.orgId, keyId: tenant.hotKeyId, from: new Date(now.getTime() - 30 * DAY_MS), to: now, granularity: 'hour' }),
    orgWeek: () => readUsageSeries(db, { orgId: tenant.orgId, from: new Date(now.getTime() - 7 * DAY_MS), to: now, granularity: 'hour' }),
    orgMonth: () => readUsageSeries(db, { orgId: tenant.orgId, from: new Date(now.getTime() - 30 * DAY_MS), to: now, granularity: 'day' }),
  };
  const out = {} as Record<QueryName, PlanInfo>;
  try {
    for (const name of QUERY_NAMES) {
      out[name] = await explain(db, await captureMainStatement(db, calls[name]));
    }
  } finally {
    await db.destroy();
  }
  return out;
}

async function explain(db: Db, statement: CapturedStatement): Promise<PlanInfo> {
  const rows = await explainStatement(db, statement, 'analyze, buffers');
  const text = rows.map((row) => row['QUERY PLAN']).join('\n');
  const indexes = [...new Set([...text.matchAll(/Index(?: Only)? Scan(?: Backward)?(?: using| on) (\w+)/g)].map((m) => m[1]))];
  const execution = /Execution Time: ([\d.]+) ms/.exec(text);
  return { executionMs: execution ? Number(execution[1]) : null, indexes, text };
}
