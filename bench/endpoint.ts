import { performance } from 'node:perf_hooks';
import { listKeyUsage, type UsageQuery } from '../api/usage/usage.repository';
import { createDb, type Db } from '../shared/db';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createCallableKey, createOrg, insertKeys } from './lib/database';
import { startBenchServer } from './lib/benchServer';
import { stopChild } from '../harness/processes';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, summarize } from './lib/stats';

// Benchmark 5. One org with 10 k keys and 30 days of hourly buckets, served by the real app (a
// bench/server.ts process with tracking off) and read over HTTP one request at a time; then the
// query plans, captured from the repository's own SQL (knex's query event) and run under
// EXPLAIN (ANALYZE, BUFFERS).
//
// Density (stated in the doc): 70 % of keys active, each in one hour out of six over the last 30
// days (120 buckets a key, 840 k rows for 10 k keys); 10 % last used 45–75 days ago (usage row, no
// bucket in the window); 20 % never used. Active keys have 3 recent IPs. The other benchmarks'
// orgs share the tables.

interface Plan {
  keys: number;
  /** Rounds of one request per query, stopped early when the time budget is spent. */
  requests: number;
  budgetMs: number;
  warmup: number;
}

const FULL: Plan = { keys: 10_000, requests: 200, budgetMs: 90_000, warmup: 2 };
const QUICK: Plan = { keys: 500, requests: 10, budgetMs: 10_000, warmup: 1 };

const QUERIES = {
  page: { label: 'first page (limit 50, newest keys first)', query: 'limit=50' },
  busiest: { label: 'busiest first (sort=requestCount, limit 50)', query: 'limit=50&sort=requestCount' },
  dormant: { label: 'dormant filter (dormant=true, limit 50)', query: 'limit=50&dormant=true' },
} as const;
type QueryName = keyof typeof QUERIES;

export async function runEndpoint(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const orgId = await createOrg(ctx.db, 'bench-endpoint');
  const admin = await createCallableKey(ctx.db, orgId, ctx.pepper, 'bench-endpoint-admin', ['keys:read', 'keys:write']);
  const seedStarted = performance.now();
  await insertKeys(ctx.db, orgId, plan.keys - 1, 'endpoint-');
  const rows = await seedUsage(ctx, orgId);
  ctx.log(`endpoint: ${fmt.int(plan.keys)} keys and ${fmt.int(rows.hourly)} hourly rows seeded in ${fmt.ms(performance.now() - seedStarted, 0)}`);

  const server = await startBenchServer('off', { DATABASE_URL: ctx.databaseUrl, KEY_PEPPER: ctx.pepper, KEY_CACHE_TTL_MS: '60000' });
  const latencies: Record<QueryName, number[]> = { page: [], busiest: [], dormant: [] };
  let counts: Record<QueryName, number> = { page: 0, busiest: 0, dormant: 0 };
  try {
    const get = async (name: QueryName) => {
      const started = performance.now();
      const response = await fetch(`${server.url}/api/orgs/${orgId}/api-keys/usage?${QUERIES[name].query}`, {
        headers: { authorization: `Bearer ${admin.plaintext}` },
      });
      const body = (await response.json()) as { data: unknown[]; page: { total: number } };
      const ms = performance.now() - started;
      if (response.status !== 200) throw new Error(`usage endpoint answered ${response.status}: ${JSON.stringify(body)}`);
      return { ms, body };
    };
    const names = Object.keys(QUERIES) as QueryName[];
    for (let i = 0; i < plan.warmup; i++) for (const name of names) await get(name);
    const deadline = performance.now() + plan.budgetMs;
    for (const order of interleavedSchedule(names, plan.requests)) {
      if (performance.now() > deadline) break;
      for (const name of order) {
        const { ms, body } = await get(name);
        latencies[name].push(ms);
        counts = { ...counts, [name]: body.page.total };
      }
    }
  } finally {
    await stopChild(server.child);
  }

  const plans = await explainPlans(ctx, orgId);
  const tableRows = (Object.keys(QUERIES) as QueryName[]).map((name) => {
    const s = summarize(latencies[name]);
    return [QUERIES[name].label, s.n, fmt.int(counts[name]), fmt.ms(s.p50, 1), fmt.ms(s.p95, 1), fmt.ms(s.p99, 1), fmt.ms(s.max, 1), plans[name].executionMs === null ? 'n/a' : fmt.ms(plans[name].executionMs, 1), plans[name].indexes.join(', ') || 'none'];
  });
  const pageP50 = summarize(latencies.page).p50;
  const dormantP50 = summarize(latencies.dormant).p50;
  return {
    heading: HEADINGS.endpoint,
    tables: [
      {
        title: `GET /api/orgs/:id/api-keys/usage over HTTP, one request at a time, queries interleaved (up to ${plan.requests} rounds or ${plan.budgetMs / 1000} s) after ${plan.warmup} warm-up rounds; org of ${fmt.int(plan.keys)} keys, ${fmt.int(rows.hourly)} hourly rows in the org (${fmt.int(rows.hourlyTotal)} in the table)`,
        columns: ['query', 'requests', 'keys matching', 'p50', 'p95', 'p99', 'max', 'EXPLAIN ANALYZE execution', 'indexes in the plan'],
        rows: tableRows,
      },
    ],
    notes: [
      `Target p50 ≤ 50 ms: page ${fmt.verdict(pageP50 <= 50)} (${fmt.ms(pageP50, 1)}), dormant filter ${fmt.verdict(dormantP50 <= 50)} (${fmt.ms(dormantP50, 1)}).`,
      'Density: 70 % of keys active in one hour out of six over the last 30 days (120 hourly buckets each), 10 % last used 45–75 days ago, 20 % never used; active keys have 3 recent IPs. Latency is end to end (client fetch → auth → both queries → JSON), the plan columns come from EXPLAIN (ANALYZE, BUFFERS) of the page query itself.',
      `EXPLAIN (ANALYZE, BUFFERS) of the first-page query:\n\n\`\`\`\n${plans.page.text}\n\`\`\``,
      `EXPLAIN (ANALYZE, BUFFERS) of the dormant-filter query:\n\n\`\`\`\n${plans.dormant.text}\n\`\`\``,
    ],
    raw: { plan, latencies, counts, rows, plans },
  };
}

// Bulk seeding in a few set-based statements (generate_series), then ANALYZE. Also the data of
// bench/dashboard.ts, so both measure the same org.
export async function seedUsage(ctx: BenchContext, orgId: string) {
  // The temporary table lives on one pooled connection only: run everything on that one.
  return ctx.db.transaction(async (trx) => {
    await trx.raw(
      `create temporary table bench_endpoint_keys on commit drop as
         select id, row_number() over (order by created_at, id) as n from api_keys where org_id = ? and name like 'endpoint-%'`,
      [orgId],
    );
    // 70 % active (n % 10 < 7), 10 % long dormant (n % 10 = 7), 20 % never used.
    await trx.raw(
      `insert into api_key_usage_hourly (org_id, key_id, hour, request_count)
       select ?, k.id, date_trunc('hour', now()) - make_interval(hours => h), 1 + ((k.n * 7 + h) % 50)
         from bench_endpoint_keys k
         cross join generate_series(0, 719) as h
        where k.n % 10 < 7 and (h + k.n) % 6 = 0`,
      [orgId],
    );
    await trx.raw(
      `insert into api_key_usage (key_id, org_id, request_count, ok_count, last_used_at, last_used_ip)
       select k.id, ?, coalesce(s.total, 10 + k.n % 90), coalesce(s.total, 10 + k.n % 90),
              case when k.n % 10 < 7 then coalesce(s.newest, now()) else now() - make_interval(days => 45 + cast(k.n % 30 as int)) end,
              '10.1.' || (k.n % 250) || '.' || (k.n % 200)
         from bench_endpoint_keys k
         left join lateral (select sum(request_count) as total, max(hour) as newest from api_key_usage_hourly where org_id = ? and key_id = k.id) s on true
        where k.n % 10 < 8`,
      [orgId, orgId],
    );
    await trx.raw(
      `insert into api_key_recent_ips (org_id, key_id, ip, first_seen, last_seen, request_count)
       select ?, k.id, '10.2.' || (k.n % 250) || '.' || i, now() - interval '20 days', now() - make_interval(hours => i), 5 * i
         from bench_endpoint_keys k cross join generate_series(1, 3) as i
        where k.n % 10 < 7`,
      [orgId],
    );
    await trx.raw('analyze api_keys');
    await trx.raw('analyze api_key_usage');
    await trx.raw('analyze api_key_usage_hourly');
    await trx.raw('analyze api_key_recent_ips');
    const inOrg = await trx.raw(`select count(*) as n from api_key_usage_hourly h join api_keys k on k.id = h.key_id where k.org_id = ?`, [orgId]);
    const total = await trx.raw(`select count(*) as n from api_key_usage_hourly`);
    return { hourly: Number(inOrg.rows[0].n), hourlyTotal: Number(total.rows[0].n) };
  });
}

interface PlanInfo {
  executionMs: number | null;
  indexes: string[];
  text: string;
}

// Captures the SQL listKeyUsage sends (the page query; the count query runs beside it) and runs it
// under EXPLAIN (ANALYZE, BUFFERS).
async function explainPlans(ctx: BenchContext, orgId: string): Promise<Record<QueryName, PlanInfo>> {
  const db = createDb(ctx.databaseUrl, { poolMax: 1, applicationName: 'keyusage-bench-explain' });
  const captured: Array<{ sql: string; bindings: unknown[] }> = [];
  db.on('query', (query: { sql: string; bindings: unknown[] }) => captured.push({ sql: query.sql, bindings: query.bindings }));
  const now = new Date();
  const base: UsageQuery = { orgId, now, status: null, dormantBefore: new Date(now.getTime() - 30 * 86_400_000), dormant: null, nameContains: null, keyId: null, eventsSince: new Date(now.getTime() - 7 * 86_400_000), sort: 'createdAt', order: 'desc', limit: 50, offset: 0 };
  const queries: Record<QueryName, UsageQuery> = {
    page: base,
    busiest: { ...base, sort: 'requestCount' },
    dormant: { ...base, dormant: true },
  };
  const out = {} as Record<QueryName, PlanInfo>;
  try {
    for (const name of Object.keys(queries) as QueryName[]) {
      captured.length = 0;
      await listKeyUsage(db, queries[name]);
      // The count query starts with its count; the page query has its own count(*)s inside (events).
      const page = captured.find((q) => /limit/i.test(q.sql) && !/^\s*select count\(\*\) as total/i.test(q.sql));
      if (!page) throw new Error('could not capture the usage page query');
      captured.length = 0;
      // The event carries the driver's SQL ($1, $2, …): back to knex placeholders, in order.
      const bindings: unknown[] = [];
      const sql = page.sql.replace(/\$(\d+)/g, (_, n: string) => {
        bindings.push(page.bindings[Number(n) - 1]);
        return '?';
      });
      out[name] = await explain(db, sql, bindings);
    }
  } finally {
    await db.destroy();
  }
  return out;
}

async function explain(db: Db, sql: string, bindings: Record<string, unknown> | unknown[]): Promise<PlanInfo> {
  const result = await db.raw(`explain (analyze, buffers) ${sql}`, bindings as never);
  const text = (result.rows as Array<Record<string, string>>).map((row) => row['QUERY PLAN']).join('\n');
  const indexes = [...new Set([...text.matchAll(/Index(?: Only)? Scan(?: Backward)?(?: using| on) (\w+)/g)].map((m) => m[1]))];
  const execution = /Execution Time: ([\d.]+) ms/.exec(text);
  return { executionMs: execution ? Number(execution[1]) : null, indexes, text };
}
