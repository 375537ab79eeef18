import { performance } from 'node:perf_hooks';
import { listKeyUsage, readUsageSeries } from '../../api/usage/usage.repository';
import { createOrg, insertKeys } from '../../bench/lib/database';
import { median } from '../../bench/lib/stats';
import { Aggregator } from '../../collector/aggregator';
import { Flusher } from '../../collector/flusher';
import { createPgUsageStore } from '../../collector/usageStore';
import { createDb, migrateLatest, type Db } from '../../shared/db';
import { freeTcpPort } from '../lib/freePort';
import { startThrowawayPostgres } from '../lib/localPostgres';
import { createLogger } from '../../shared/logger';
import { stopOnSignal } from '../lib/stopOnSignal';
import { buildCitus, startCitusCluster } from './cluster';
import { distributeTables } from './distribute';

// The figures of docs/scaling.md: one flush of 100 k keys spread over 100 orgs (so over both
// workers), through the collector's real Flusher and store, on Citus and on one PostgreSQL;
// then the usage queries of one org.
// `npx tsx scripts/citus/bench.ts [--orgs=100] [--keys=1000] [--runs=5] [--shards=32] [--citus-only]`

const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback);
const ORGS = arg('orgs', 100);
const KEYS_PER_ORG = arg('keys', 1000);
const RUNS = arg('runs', 5);
// Citus's default; fewer shards mean fewer tasks per statement on a small cluster.
const SHARDS = arg('shards', 32);
const QUERIES = 50;
// Errors only: a failed flush says why.
const silent = createLogger({ level: 'error', name: 'citus-bench' });

async function flushOnce(db: Db, orgs: Array<{ orgId: string; keyIds: string[] }>) {
  const clock = Date.now();
  const aggregator = new Aggregator({ maxKeys: 200_000, now: () => clock });
  orgs.forEach(({ orgId, keyIds }, o) =>
    keyIds.forEach((keyId, k) => aggregator.add({ keyId, orgId, ip: `10.${o & 255}.${(k >> 8) & 255}.${k & 255}`, outcome: 'ok', count: 1 })),
  );
  // The flusher trims the recent IPs of the keys that gained an address (here: every key, in the
  // cold flush only) without waiting for it. On Citus that trim's read (100 k keys against every
  // shard) outlasted the next flush's wait for a pooled connection ("Timeout acquiring a
  // connection"), so it is awaited here, outside the flush's time, and timed.
  const store = createPgUsageStore(db);
  let prune: Promise<number> | undefined;
  const timedStore = {
    ...store,
    prune(keys: Parameters<typeof store.prune>[0]) {
      const started = performance.now();
      prune = store.prune(keys).then(() => performance.now() - started);
      return prune.then(() => undefined);
    },
  };
  const flusher = new Flusher({ aggregator, store: timedStore, intervalMs: 1000, maxRetryKeys: 200_000, logger: silent });
  const started = performance.now();
  if (!(await flusher.flush())) throw new Error('flush failed');
  const flushMs = performance.now() - started;
  return { flushMs, pruneMs: prune === undefined ? undefined : await prune };
}

async function timeQueries(db: Db, orgId: string, keyId: string) {
  const page = [];
  const series = [];
  for (let i = 0; i < QUERIES; i += 1) {
    let started = performance.now();
    await listKeyUsage(db, {
      orgId,
      now: new Date(),
      status: null,
      dormantBefore: new Date(Date.now() - 30 * 86_400_000),
      dormant: null,
      nameOrOwnerContains: null,
      keyId: null,
      eventsSince: new Date(Date.now() - 7 * 86_400_000),
      sort: 'requestCount',
      order: 'desc',
      limit: 50,
      offset: 0,
    });
    page.push(performance.now() - started);
    started = performance.now();
    await readUsageSeries(db, { orgId, keyId, from: new Date(Date.now() - 7 * 86_400_000), to: new Date(), granularity: 'day' });
    series.push(performance.now() - started);
  }
  return { pageP50: median(page), seriesP50: median(series) };
}

async function measure(label: string, url: string) {
  const admin = createDb(url, { poolMax: 4 });
  const orgs = [];
  for (let o = 0; o < ORGS; o += 1) {
    const orgId = await createOrg(admin, `bench-${o}`);
    orgs.push({ orgId, keyIds: await insertKeys(admin, orgId, KEYS_PER_ORG, `bench-${o}-`) });
  }
  const db = createDb(url, { poolMax: 2 });
  try {
    const { flushMs: cold, pruneMs: coldPrune } = await flushOnce(db, orgs);
    if (coldPrune === undefined) throw new Error(`${label}: the cold flush started no IP trim`);
    const warm = [];
    for (let r = 0; r < RUNS; r += 1) warm.push((await flushOnce(db, orgs)).flushMs);
    const total = await admin('api_key_usage').sum({ n: 'request_count' }).first();
    if (Number(total?.n) !== (RUNS + 1) * ORGS * KEYS_PER_ORG) throw new Error(`${label}: ${total?.n} uses persisted`);
    const queries = await timeQueries(db, orgs[0].orgId, orgs[0].keyIds[0]);
    const ms = (n: number) => `${n.toFixed(0)} ms`;
    console.log(
      `${label}: ${ORGS * KEYS_PER_ORG} keys in ${ORGS} orgs; cold flush ${ms(cold)}; warm median ${ms(median(warm))}, worst ${ms(Math.max(...warm))} ` +
        `(${warm.map(ms).join(', ')}); IP trim after the cold flush ${ms(coldPrune)}; usage page p50 ${queries.pageP50.toFixed(1)} ms, time series p50 ${queries.seriesP50.toFixed(1)} ms`,
    );
  } finally {
    await db.destroy();
    await admin.destroy();
  }
}

async function main() {
  buildCitus();
  const cluster = await startCitusCluster();
  try {
    const url = await cluster.createDatabase('keyusage_citus_bench');
    const db = createDb(url, { poolMax: 1 });
    await migrateLatest(db);
    // One pooled connection, so the setting holds for the distribution that follows.
    await db.raw(`set citus.shard_count = ${SHARDS}`);
    await distributeTables(db);
    await db.destroy();
    await measure(`Citus, coordinator + 2 workers, ${SHARDS} shards`, url);
  } finally {
    cluster.stop();
  }
  if (process.argv.includes('--citus-only')) return;
  const local = startThrowawayPostgres('keyusage-citus-bench-', await freeTcpPort());
  const stopLocal = stopOnSignal(() => local.stop());
  try {
    const db = createDb(local.url, { poolMax: 1 });
    await migrateLatest(db);
    await db.destroy();
    await measure('one PostgreSQL (embedded, same machine)', local.url);
  } finally {
    stopLocal();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
