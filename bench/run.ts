import path from 'node:path';
import { runAuthPath } from './authPath';
import { runDashboard } from './dashboard';
import { BENCH_NAMES, type BenchName } from './headings';
import { runEndpoint } from './endpoint';
import { runFlush } from './flush';
import { runRowCost } from './rowCost';
import { runHourMove } from './hourMove';
import { runWebhookClaim } from './webhookClaim';
import { runIngest } from './ingest';
import { runKeyCheck } from './keyCheck';
import { BENCH_PEPPER, type BenchContext } from './lib/context';
import { openBenchDatabase, type BenchDatabase } from './lib/database';
import { killAllChildren } from '../harness/processes';
import { runStaleness } from './staleness';
import { exitWhenDone } from './lib/procs';
import { machineInfo, renderResult, writeResults, type BenchResult } from './lib/report';

// `npm run bench [-- --quick] [-- --only=auth,ingest]`
//   auth       1. auth-path req/s and server CPU per request: off / on / naive UPDATE / hot-shots
//   hook       2. usage hook time inside the running server under load, and in a tight loop
//   keycheck   2b. what the key checksum and the failure throttle add per request
//   ingest     3. collector ingest vs Etsy statsd, plus parse + aggregate in process
//   ingestkeys 3c. the same at 100,000 distinct keys (the usage log and its folds at work)
//   flush      4. flush time and SQL statements for 1 k and 100 k pending keys
//   rowcost    4b. what one statement over 100 k keys costs on this PostgreSQL: the flush's floor
//   hourmove   4c. what the upkeep's hour move costs for 100 k and 1 M keys used in the closed hour
//   webhookclaim 4e. what the webhook worker's claim costs beside one org's backlog of 1 M due deliveries
//   endpoint   5. usage endpoint latency (100 orgs × 10 k keys, 30 days of buckets) and its query plans
//   staleness  6. time from a request to its use showing in the usage endpoint
//   dashboard  7. time to the dashboard's first table (10 k keys) and its page weight, in Chromium
// Tables go to stdout as markdown, progress to stderr, everything measured to bench/results/.
// Load only ever targets 127.0.0.1; every phase is bounded in count and time.

function parseArgs(argv: string[]) {
  let quick = false;
  let only: BenchName[] = [...BENCH_NAMES];
  for (const arg of argv) {
    if (arg === '--quick') quick = true;
    else if (arg.startsWith('--only=')) {
      const names = arg.slice('--only='.length).split(',').filter(Boolean);
      const unknown = names.filter((name) => !BENCH_NAMES.includes(name as BenchName));
      if (unknown.length > 0 || names.length === 0) throw new Error(`--only takes a comma-separated list of ${BENCH_NAMES.join(', ')}; got "${arg}"`);
      only = names as BenchName[];
    } else if (arg === '--help' || arg === '-h') {
      console.log('usage: npm run bench -- [--quick] [--only=' + BENCH_NAMES.join(',') + ']');
      process.exit(0);
    } else {
      throw new Error(`unknown argument "${arg}" (try --help)`);
    }
  }
  return { quick, only };
}

async function main() {
  const { quick, only } = parseArgs(process.argv.slice(2));
  // Every process it starts serves 127.0.0.1 on a benchmark database: a development setting.
  process.env.NODE_ENV ||= 'development';
  const startedAt = Date.now();
  const log = (line: string) => process.stderr.write(`[bench +${((Date.now() - startedAt) / 1000).toFixed(1)}s] ${line}\n`);
  const machine = machineInfo();
  log(`${quick ? 'quick' : 'full'} run: ${only.join(', ')}`);

  let database: BenchDatabase | undefined;
  const results: BenchResult[] = [];
  const stopOnSignal = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping child processes`);
    killAllChildren();
    // A benchmark database made from DATABASE_URL is left behind (its name says what it is); a
    // throwaway cluster is stopped and removed.
    database?.abandon();
    process.exit(130);
  };
  process.once('SIGINT', stopOnSignal).once('SIGTERM', stopOnSignal);

  try {
    database = await openBenchDatabase(log);
    const version = (await database.db.raw('show server_version')).rows[0].server_version as string;
    machine.postgres = `PostgreSQL ${version}${database.local ? ' (throwaway local cluster, fsync on)' : ' (DATABASE_URL)'}`;
    const ctx: BenchContext = { quick, db: database.db, databaseUrl: database.url, pepper: BENCH_PEPPER, log };
    const emit = (result: BenchResult) => {
      results.push(result);
      process.stdout.write(renderResult(result, machine) + '\n');
    };

    if (only.includes('auth') || only.includes('hook')) {
      for (const result of await runAuthPath(ctx, { auth: only.includes('auth'), hook: only.includes('hook') })) emit(result);
    }
    if (only.includes('keycheck')) emit(runKeyCheck(ctx));
    if (only.includes('ingest')) for (const result of await runIngest(ctx, 'stream')) emit(result);
    if (only.includes('ingestkeys')) for (const result of await runIngest(ctx, 'manyKeys')) emit(result);
    if (only.includes('flush')) emit(await runFlush(ctx));
    if (only.includes('rowcost')) emit(await runRowCost(ctx));
    if (only.includes('hourmove')) emit(await runHourMove(ctx));
    if (only.includes('webhookclaim')) emit(await runWebhookClaim(ctx));
    if (only.includes('endpoint')) emit(await runEndpoint(ctx));
    if (only.includes('staleness')) emit(await runStaleness(ctx));
    if (only.includes('dashboard')) emit(await runDashboard(ctx));
  } finally {
    killAllChildren();
    await database?.close();
  }

  const file = path.join(__dirname, 'results', `bench-${new Date(startedAt).toISOString().replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
  writeResults(file, { startedAt: new Date(startedAt).toISOString(), durationSec: (Date.now() - startedAt) / 1000, quick, only, machine, results });
  log(`done in ${((Date.now() - startedAt) / 1000).toFixed(1)} s; results in ${path.relative(process.cwd(), file)}`);
}

exitWhenDone(main());
