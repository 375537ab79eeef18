import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createCallableKey, createOrg } from './lib/database';
import { startCollectorProcess, type CollectorProcess } from '../harness/collectorProcess';
import { spawnTsx, stopChild, type Child } from '../harness/processes';
import { sleep, waitFor } from '../harness/wait';
import { startBenchServer, type BenchServer } from './lib/benchServer';
import { ipcRequest, waitForMessage } from './lib/procs';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median, medianRatio } from './lib/stats';

// Benchmarks 1 and 2. Five API servers, each its own process, built by bench/server.ts from the
// real app; a fifth process runs autocannon; two real collector processes receive the usage of
// `on` and `hotshots`. Load is applied to one server at a time in short blocks, the variants
// interleaved round by round, and each block reads the server's own CPU time before and after.

// `offB` is a second, identical `off` process: the A/A control. Two identical Node servers differ
// by a few per cent on these machines (JIT and memory layout), so a variant's ratio means
// something only against the spread of offB / off.
const VARIANTS = ['off', 'on', 'naive', 'hotshots', 'offB'] as const;
type Variant = (typeof VARIANTS)[number];

const LABELS: Record<Variant, string> = {
  off: 'off (no usage tracking)',
  on: 'on (coalescing recorder → collector)',
  naive: 'naive UPDATE per request',
  hotshots: 'hot-shots line per request',
  offB: 'off again, second process (A/A control)',
};

const SERVER_VARIANT: Record<Variant, string> = { off: 'off', on: 'on', naive: 'naive', hotshots: 'hotshots', offB: 'off' };

interface Plan {
  rounds: number;
  blockSec: number;
  warmupSec: number;
  connections: number;
  settleMs: number;
  timingRounds: number;
  loopIterations: number;
}

const FULL: Plan = { rounds: 20, blockSec: 2, warmupSec: 3, connections: 10, settleMs: 300, timingRounds: 4, loopIterations: 1_000_000 };
const QUICK: Plan = { rounds: 2, blockSec: 0.4, warmupSec: 0.4, connections: 10, settleMs: 50, timingRounds: 1, loopIterations: 20_000 };

interface ServerStats {
  cpuMicros: number;
  hookCalls: number;
  recorder?: { recordedUses: number; sentUses: number; failedUses: number; datagrams: number; earlyDrains: number };
}

interface LoadResult {
  requests: number;
  durationSec: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  p50Ms: number;
  p99Ms: number;
}

interface Block {
  variant: Variant;
  round: number;
  rps: number;
  cpuMicrosPerRequest: number;
  served: number;
  p50Ms: number;
  p99Ms: number;
  failures: number;
}

interface TimingSummary {
  calls: number;
  meanNs: number;
  p50Ns: number;
  p90Ns: number;
  p99Ns: number;
  p999Ns: number;
  maxNs: number;
  drainNanos: number;
  drains: number;
}

export async function runAuthPath(ctx: BenchContext, which: { auth: boolean; hook: boolean }): Promise<BenchResult[]> {
  const plan = ctx.quick ? QUICK : FULL;
  const orgId = await createOrg(ctx.db, 'bench-auth');
  const key = await createCallableKey(ctx.db, orgId, ctx.pepper, 'bench-auth', ['keys:read']);
  // The naive variant's counters. Bench-only: the product keeps usage out of api_keys on purpose.
  await ctx.db.raw(`create table if not exists bench_key_usage (key_id uuid primary key, last_used_at timestamptz, request_count bigint not null default 0)`);
  await ctx.db.raw('insert into bench_key_usage (key_id, request_count) values (?, 0) on conflict do nothing', [key.keyId]);

  const started: Array<{ child: Child }> = [];
  const collectors: Partial<Record<'on' | 'hotshots', CollectorProcess>> = {};
  const servers = {} as Record<Variant, BenchServer>;
  let loadgen: Child | undefined;
  try {
    ctx.log(`auth path: starting 2 collectors, ${VARIANTS.length} servers and the load generator`);
    const [onCollector, hotshotsCollector] = await Promise.all([startCollectorProcess(ctx.databaseUrl), startCollectorProcess(ctx.databaseUrl)]);
    collectors.on = onCollector;
    collectors.hotshots = hotshotsCollector;
    started.push(onCollector, hotshotsCollector);
    const common = { DATABASE_URL: ctx.databaseUrl, KEY_PEPPER: ctx.pepper, KEY_CACHE_TTL_MS: '60000' };
    const list = await Promise.all(
      VARIANTS.map((variant) =>
        startBenchServer(SERVER_VARIANT[variant], {
          ...common,
          COLLECTOR_PORT: String(variant === 'hotshots' ? hotshotsCollector.udpPort : onCollector.udpPort),
        }),
      ),
    );
    list.forEach((server, i) => {
      servers[VARIANTS[i]] = server;
      started.push(server);
    });
    loadgen = spawnTsx('loadgen', 'bench/loadgen.ts', { ipc: true });
    started.push({ child: loadgen });
    await waitForMessage(loadgen, (m) => m?.ready === true);
    const loader = loadgen;

    const headers = { authorization: `Bearer ${key.plaintext}` };
    for (const server of list) {
      const response = await fetch(`${server.url}/api/whoami`, { headers });
      if (response.status !== 200) throw new Error(`${server.variant}: GET /api/whoami answered ${response.status}: ${await response.text()}`);
    }

    const load = (server: BenchServer, durationSec: number) =>
      ipcRequest<LoadResult>(loader, { cmd: 'run', url: `${server.url}/api/whoami`, headers, connections: plan.connections, durationSec });
    const stats = (server: BenchServer) => ipcRequest<ServerStats>(server.child, { cmd: 'stats' });

    async function block(variant: Variant, round: number): Promise<Block> {
      const server = servers[variant];
      const before = await stats(server);
      const result = await load(server, plan.blockSec);
      // Let the recorder's last drain of this block (≤ 250 ms later) land inside the window.
      await sleep(plan.settleMs);
      const after = await stats(server);
      const served = after.hookCalls - before.hookCalls;
      return {
        variant,
        round,
        rps: result.requests / result.durationSec,
        cpuMicrosPerRequest: (after.cpuMicros - before.cpuMicros) / served,
        served,
        p50Ms: result.p50Ms,
        p99Ms: result.p99Ms,
        failures: result.non2xx + result.errors + result.timeouts,
      };
    }

    ctx.log(`auth path: warming up each server for ${plan.warmupSec} s`);
    for (const variant of VARIANTS) await load(servers[variant], plan.warmupSec);

    const results: BenchResult[] = [];
    if (which.auth) {
      const blocks: Block[] = [];
      const schedule = interleavedSchedule(VARIANTS, plan.rounds);
      for (const [round, order] of schedule.entries()) {
        for (const variant of order) blocks.push(await block(variant, round));
        if ((round + 1) % 5 === 0 || round === schedule.length - 1) ctx.log(`auth path: round ${round + 1}/${schedule.length}`);
      }
      const exactness = await checkExactness(ctx, servers, collectors as Record<'on' | 'hotshots', CollectorProcess>, key.keyId);
      results.push(authTable(blocks, plan, exactness));
    }
    if (which.hook) {
      results.push(await hookCost(ctx, plan, servers, (server) => load(server, plan.blockSec)));
    }
    return results;
  } finally {
    await Promise.all(started.map(({ child }) => stopChild(child)));
  }
}

function byRound(blocks: Block[], variant: Variant, field: 'rps' | 'cpuMicrosPerRequest'): number[] {
  return blocks
    .filter((b) => b.variant === variant)
    .sort((a, b) => a.round - b.round)
    .map((b) => b[field]);
}

interface Exactness {
  onRecorded: number;
  onSent: number;
  onReceived: number;
  onPersisted: number;
  hotshotsCalls: number;
  hotshotsReceived: number;
  hotshotsPersisted: number;
  databaseCount: number;
}

// Side check that the `on` numbers were bought honestly: every use the recorder counted was sent,
// received and written, and PostgreSQL holds the sum of what both collectors wrote.
async function checkExactness(
  ctx: BenchContext,
  servers: Record<Variant, BenchServer>,
  collectors: Record<'on' | 'hotshots', CollectorProcess>,
  keyId: string,
): Promise<Exactness> {
  await ipcRequest(servers.on.child, { cmd: 'flushUsage' });
  const onStats = await waitFor('the on server to send its last datagram', async () => {
    const s = await ipcRequest<ServerStats>(servers.on.child, { cmd: 'stats' });
    return s.recorder && s.recorder.sentUses + s.recorder.failedUses === s.recorder.recordedUses ? s : undefined;
  });
  const hotshots = await ipcRequest<ServerStats>(servers.hotshots.child, { cmd: 'stats' });
  const settled = async (collector: CollectorProcess, expected: number) => {
    let last: Record<string, number> = {};
    try {
      await waitFor(
        'the collector to persist what it received',
        async () => {
          last = await collector.metrics();
          return last.uses_received_total >= expected && last.uses_persisted_total === last.uses_received_total ? true : undefined;
        },
        10_000,
        100,
      );
    } catch {
      // Reported below as a shortfall rather than thrown: hot-shots may legitimately lose datagrams.
    }
    return last;
  };
  const onMetrics = await settled(collectors.on, onStats.recorder!.sentUses);
  const hotMetrics = await settled(collectors.hotshots, hotshots.hookCalls);
  const row = await ctx.db('api_key_usage').where({ key_id: keyId }).first();
  return {
    onRecorded: onStats.recorder!.recordedUses,
    onSent: onStats.recorder!.sentUses,
    onReceived: onMetrics.uses_received_total,
    onPersisted: onMetrics.uses_persisted_total,
    hotshotsCalls: hotshots.hookCalls,
    hotshotsReceived: hotMetrics.uses_received_total,
    hotshotsPersisted: hotMetrics.uses_persisted_total,
    databaseCount: Number(row?.request_count ?? 0),
  };
}

function authTable(blocks: Block[], plan: Plan, exactness: Exactness): BenchResult {
  const offRps = byRound(blocks, 'off', 'rps');
  const offCpu = byRound(blocks, 'off', 'cpuMicrosPerRequest');
  const estimates = Object.fromEntries(
    VARIANTS.map((variant, i) => [
      variant,
      {
        rps: medianRatio(byRound(blocks, variant, 'rps'), offRps, { seed: 11 + i }),
        cpu: medianRatio(byRound(blocks, variant, 'cpuMicrosPerRequest'), offCpu, { seed: 101 + i }),
      },
    ]),
  ) as Record<Variant, { rps: ReturnType<typeof medianRatio>; cpu: ReturnType<typeof medianRatio> }>;
  const rows = VARIANTS.map((variant) => {
    const mine = blocks.filter((b) => b.variant === variant);
    const e = estimates[variant];
    return [
      LABELS[variant],
      mine.length,
      fmt.int(median(mine.map((b) => b.rps))),
      variant === 'off' ? '1 (baseline)' : `${fmt.ratio(e.rps.median)} ${fmt.interval(e.rps.low, e.rps.high)}`,
      fmt.us(median(mine.map((b) => b.cpuMicrosPerRequest))),
      variant === 'off' ? '1 (baseline)' : `${fmt.ratio(e.cpu.median)} ${fmt.interval(e.cpu.low, e.cpu.high)}`,
      fmt.ms(median(mine.map((b) => b.p50Ms)), 2),
      fmt.ms(median(mine.map((b) => b.p99Ms)), 2),
      mine.reduce((sum, b) => sum + b.failures, 0),
    ];
  });
  const on = estimates.on;
  const aa = estimates.offB;
  const cpuMet = on.cpu.median <= 1.02;
  const rpsMet = on.rps.median >= 0.98;
  const e = exactness;
  const counts = {
    title: 'Counts behind the `on` and `hot-shots` rows (whole run, warm-up included)',
    columns: ['variant', 'uses recorded by the server', 'sent', 'received by its collector', 'persisted', 'lost'],
    rows: [
      ['on', fmt.int(e.onRecorded), fmt.int(e.onSent), fmt.int(e.onReceived), fmt.int(e.onPersisted), fmt.int(e.onRecorded - e.onPersisted)],
      [
        'hot-shots per request',
        fmt.int(e.hotshotsCalls),
        '(one datagram each)',
        fmt.int(e.hotshotsReceived),
        fmt.int(e.hotshotsPersisted),
        fmt.int(e.hotshotsCalls - e.hotshotsPersisted),
      ],
    ],
  };
  return {
    heading: HEADINGS.auth,
    tables: [
      {
        title: `GET /api/whoami with a valid key, autocannon ${plan.connections} connections; ${plan.rounds} interleaved rounds × ${plan.blockSec} s blocks per variant`,
        columns: [
          'variant',
          'blocks',
          'req/s (median)',
          'req/s ratio vs off [95 % CI]',
          'server CPU / req (median)',
          'CPU / req ratio vs off [95 % CI]',
          'p50 latency',
          'p99 latency',
          'failed requests',
        ],
        rows,
      },
      counts,
    ],
    notes: [
      `Target on/off server CPU per request ≤ 1.02: ${fmt.verdict(cpuMet)} (${fmt.ratio(on.cpu.median)}, 95 % CI ${fmt.interval(on.cpu.low, on.cpu.high)}).`,
      `Target on/off req/s ≥ 0.98: ${fmt.verdict(rpsMet)} (${fmt.ratio(on.rps.median)}, 95 % CI ${fmt.interval(on.rps.low, on.rps.high)}).`,
      `A/A control, two identical \`off\` processes: req/s ratio ${fmt.ratio(aa.rps.median)} ${fmt.interval(aa.rps.low, aa.rps.high)}, CPU / req ratio ${fmt.ratio(aa.cpu.median)} ${fmt.interval(aa.cpu.low, aa.cpu.high)}. A variant's deviation from 1 smaller than this one's is indistinguishable from moving the same code to another process.`,
      `PostgreSQL holds ${fmt.int(e.databaseCount)} uses for the key: the sum of both collectors' writes (${fmt.int(e.onPersisted + e.hotshotsPersisted)}).`,
      "Ratios are medians of per-round ratios (each round runs every variant back to back); intervals are percentile bootstraps over rounds (10,000 resamples). Server CPU is the server process's own user + system time (process.cpuUsage) over the block, divided by the requests it served; the load generator runs in another process.",
    ],
    raw: { plan, blocks, estimates, exactness },
  };
}

async function hookCost(
  ctx: BenchContext,
  plan: Plan,
  servers: Record<Variant, BenchServer>,
  load: (server: BenchServer) => Promise<LoadResult>,
): Promise<BenchResult> {
  const variants = ['off', 'on', 'hotshots'] as const;
  const perVariant: Record<string, TimingSummary[]> = { off: [], on: [], hotshots: [] };
  for (const order of interleavedSchedule(variants, plan.timingRounds)) {
    for (const variant of order) {
      const server = servers[variant];
      await ipcRequest(server.child, { cmd: 'timing', on: true });
      await load(server);
      await sleep(plan.settleMs);
      perVariant[variant].push(await ipcRequest<TimingSummary>(server.child, { cmd: 'timing', on: false }));
    }
  }
  ctx.log('hook cost: tight loops');
  const loops: Record<string, number> = {};
  for (const variant of variants) {
    // hot-shots sends a datagram per call: keep its loop short.
    const iterations = variant === 'hotshots' ? Math.min(plan.loopIterations, 20_000) : plan.loopIterations;
    loops[variant] = (await ipcRequest<{ nsPerCall: number }>(servers[variant].child, { cmd: 'loop', iterations })).nsPerCall;
  }
  const floor = median(perVariant.off.map((s) => s.p50Ns));
  const summary = Object.fromEntries(
    variants.map((variant) => {
      const runs = perVariant[variant];
      const calls = runs.reduce((sum, r) => sum + r.calls, 0);
      const drainNanos = runs.reduce((sum, r) => sum + r.drainNanos, 0);
      const meanNs = runs.reduce((sum, r) => sum + r.meanNs * r.calls, 0) / calls;
      return [
        variant,
        {
          calls,
          p50Ns: median(runs.map((r) => r.p50Ns)),
          p99Ns: median(runs.map((r) => r.p99Ns)),
          p999Ns: median(runs.map((r) => r.p999Ns)),
          meanNs,
          drainNsPerUse: drainNanos / calls,
          drains: runs.reduce((sum, r) => sum + r.drains, 0),
          totalNsPerUse: meanNs + drainNanos / calls,
          loopNs: loops[variant],
        },
      ];
    }),
  ) as Record<
    (typeof variants)[number],
    {
      calls: number;
      p50Ns: number;
      p99Ns: number;
      p999Ns: number;
      meanNs: number;
      drainNsPerUse: number;
      drains: number;
      totalNsPerUse: number;
      loopNs: number;
    }
  >;
  const labels = { off: 'off: no-op hook (timer floor)', on: 'on: UsageRecorder.record', hotshots: 'hot-shots increment per request' };
  const rows = variants.map((variant) => {
    const s = summary[variant];
    return [
      labels[variant],
      fmt.int(s.calls),
      fmt.ns(s.p50Ns),
      fmt.ns(s.p99Ns),
      fmt.ns(s.p999Ns),
      fmt.ns(s.meanNs),
      variant === 'on' ? `${fmt.ns(s.drainNsPerUse)} (${s.drains} drains)` : '–',
      fmt.ns(s.totalNsPerUse),
      fmt.ns(s.totalNsPerUse - summary.off.meanNs),
      fmt.fixed(s.loopNs, 1) + ' ns',
    ];
  });
  const on = summary.on;
  const met = on.totalNsPerUse <= 3000;
  return {
    heading: HEADINGS.hook,
    tables: [
      {
        title: `process.hrtime.bigint() around each recordUse call while autocannon loads the server (${plan.timingRounds} interleaved ${plan.blockSec} s blocks per variant)`,
        columns: [
          'hook',
          'calls timed',
          'p50',
          'p99',
          'p99.9',
          'mean',
          'drain per use (off the request path)',
          'total per use (mean + drain)',
          'total minus timer floor',
          'tight loop (same process, idle)',
        ],
        rows,
      },
    ],
    notes: [
      `Target ≤ 3 µs per request for the usage hook under load: ${fmt.verdict(met)} (${fmt.ns(on.totalNsPerUse)} per use including the amortised drain; p50 ${fmt.ns(on.p50Ns)}, p99 ${fmt.ns(on.p99Ns)}).`,
      `The timer itself (two hrtime.bigint() calls around a no-op) costs ${fmt.ns(floor)} at p50; the "minus timer floor" column subtracts the no-op's mean.`,
      'The tight loop calls the same hook back to back with the same arguments in the idle server process: warm caches and inlining make it several times cheaper than the same call between real requests.',
    ],
    raw: { plan: { timingRounds: plan.timingRounds, blockSec: plan.blockSec, loopIterations: plan.loopIterations }, perVariant, summary },
  };
}
