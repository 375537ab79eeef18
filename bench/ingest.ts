import { loadavg } from 'node:os';
import { loadConfig } from '../shared/config';
import { TABLE } from '../shared/tables';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createOrg, insertKeys } from './lib/database';
import { spawnTsx, stopChild, type Child } from '../harness/processes';
import { startSystem } from '../harness/systemProcess';
import { sleep } from '../harness/wait';
import { grantedRecvBuffer } from '../collector/receiver';
import {
  backendsCpuDelta,
  collectorBackendsCpu,
  ipcRequest,
  mainThreadSchedMs,
  processTreeCpuSeconds,
  processTreeMemory,
  receivingPids,
  udpCounters,
  waitForMessage,
} from './lib/procs';
import { measureParseAggregate } from './lib/parseAggregate';
import { fmt, type BenchResult } from './lib/report';
import { startStatsd, statsdVersion } from './lib/statsd';
import { median } from './lib/stats';
import { firstLoss, losslessRate, SENDER_KEPT_UP } from './lib/ladder';
import type { IngestKey, IngestMode } from './lib/usageLines';

// What the collector under test asks the kernel for (its config, from this environment); the bare loop asks for the same.
const requestedRecvBuffer = () => loadConfig().collector.recvBufferBytes;

// Benchmark 3. A sender process offers a fixed number of usage lines over K keys at a paced rate
// to one receiver at a time: our collector as part of the whole system `npm start` runs
// (harness/systemProcess.ts: the launcher, the API process and the collector from the Procfile,
// real PostgreSQL behind them) with one receiving process and with two sharing the port
// (COLLECTOR_RECEIVERS=2), Etsy's statsd 0.9.0,
// and a bare Node receive loop (bench/udpReceiver.ts) that marks what one Node socket can take at
// all. The rates are a ladder climbed by all receivers in turn (rotated order): a receiver that
// loses a line at one rate is not tried at the higher ones, so each one's lossless rate (the
// highest with 0 lost) is found in a bounded number of steps. Each run gets a fresh receiver
// process (in --quick one per format), so CPU and peak RSS are its own. Then 3b: the collector's
// parse + aggregate code alone, in process.

const TARGETS = [
  'collector',
  'collector-2',
  'collector-flush-2s',
  'collector-fold-inline',
  'collector-ask-every-key',
  'collector-no-key-list',
  'statsd',
  'node-loop',
] as const;
// Arms that matter only with many keys (BENCH_INGEST_KEYS): 1,000 keys never append.
const MANY_KEYS_ARMS: readonly TargetName[] = ['collector-fold-inline', 'collector-ask-every-key', 'collector-no-key-list'];
type TargetName = (typeof TARGETS)[number];
const TARGET_LABELS: Record<TargetName, string> = {
  collector: 'our collector',
  'collector-2': 'our collector, 2 receivers',
  'collector-flush-2s': 'our collector, flush every 2 s',
  'collector-fold-inline': 'our collector, folds on the receive loop',
  'collector-ask-every-key': 'our collector, every append asks about every key',
  'collector-no-key-list': 'our collector without its key list',
  statsd: 'Etsy statsd 0.9.0',
  'node-loop': 'bare Node receive loop (bench)',
};
// The whole system's settings for each arm of our collector. Flushing every 2 s (default 1 s)
// halves the flushes' CPU, the collector's and PostgreSQL's, on the cores the receive loop needs.
const COLLECTOR_ENV: Partial<Record<TargetName, Record<string, string>>> = {
  collector: { COLLECTOR_RECEIVERS: '1' },
  'collector-2': { COLLECTOR_RECEIVERS: '2' },
  'collector-flush-2s': { COLLECTOR_RECEIVERS: '1', COLLECTOR_FLUSH_INTERVAL_MS: '2000' },
  // Before COLLECTOR_FOLD_THREAD: a fold's JavaScript ran on the thread that reads the socket.
  'collector-fold-inline': { COLLECTOR_RECEIVERS: '1', COLLECTOR_FOLD_THREAD: 'false' },
  // Before COLLECTOR_KNOWN_KEYS_TTL_MS: each append asked PostgreSQL whether each of its keys exists.
  'collector-ask-every-key': { COLLECTOR_RECEIVERS: '1', COLLECTOR_KNOWN_KEYS_TTL_MS: '0' },
  // Before COLLECTOR_KEY_LIST_REFRESH_MS: no lookup of new keys, no reads of api_keys.
  'collector-no-key-list': { COLLECTOR_RECEIVERS: '1', COLLECTOR_KEY_LIST_REFRESH_MS: '0' },
};
const COLLECTOR_TARGETS = TARGETS.filter((name) => COLLECTOR_ENV[name] !== undefined);

interface Plan {
  /** The headings of its two tables: the ladder and 3b. */
  headings: { ingest: string; parse: string };
  targets: readonly TargetName[];
  keys: number;
  durationSec: number;
  rates: Record<IngestMode, number[]>;
  freshProcessPerRun: boolean;
  parseLines: number;
  parseReps: number;
  /** The formats 3b measures. */
  parseModes: readonly IngestMode[];
}

const FULL: Plan = {
  headings: { ingest: HEADINGS.ingest, parse: HEADINGS.parse },
  targets: TARGETS.filter((name) => !MANY_KEYS_ARMS.includes(name)),
  keys: 1000,
  durationSec: 10,
  rates: { packed: [25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 800_000], single: [25_000, 50_000, 100_000, 200_000] },
  freshProcessPerRun: true,
  parseLines: 1_000_000,
  parseReps: 5,
  parseModes: ['packed', 'single'],
};
// The variant arm runs the same code as `collector`: the quick smoke run leaves it out.
const QUICK: Plan = {
  headings: FULL.headings,
  targets: TARGETS.filter((name) => name !== 'collector-flush-2s' && !MANY_KEYS_ARMS.includes(name)),
  keys: 1000,
  durationSec: 0.3,
  rates: { packed: [50_000], single: [20_000] },
  freshProcessPerRun: false,
  parseLines: 100_000,
  parseReps: 2,
  parseModes: ['packed', 'single'],
};

// Issue 13's hard shape, which the 1,000-key stream never shows: every key a row of every flush,
// so each flush appends to the usage log and folds run beside the receive loop, and nearly every
// line in 3b brings a key not pending yet. Our default collector and statsd only (the ladder is
// the slow part: the whole system starts for each step and writes 100,000 keys at its stop).
const MANY_KEYS: Plan = {
  headings: { ingest: HEADINGS.ingestManyKeys, parse: HEADINGS.parseManyKeys },
  targets: ['collector', 'statsd'],
  keys: 100_000,
  durationSec: 10,
  rates: { packed: [25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000], single: [] },
  freshProcessPerRun: true,
  parseLines: 500_000,
  parseReps: 5,
  parseModes: ['packed'],
};
const QUICK_MANY_KEYS: Plan = {
  ...MANY_KEYS,
  keys: 5_000,
  durationSec: 0.3,
  rates: { packed: [50_000], single: [] },
  freshProcessPerRun: false,
  parseLines: 50_000,
  parseReps: 2,
};

// A/B work on one shape needs neither every receiver nor both ladders: BENCH_INGEST_KEYS sets the
// keys of the stream (issue 13's many-keys shape: 100000, every key a row of every flush, and a
// flush of them appends to the usage log and is folded), BENCH_INGEST_TARGETS keeps the named
// receivers, BENCH_INGEST_RATES sets the packed ladder (lines/s) and leaves the single-line one out.
function selectedPlan(plan: Plan, env: NodeJS.ProcessEnv): Plan {
  const list = (name: string) => (env[name] ?? '').split(',').filter(Boolean);
  const targets = list('BENCH_INGEST_TARGETS');
  const unknown = targets.filter((name) => !(TARGETS as readonly string[]).includes(name));
  if (unknown.length > 0) throw new Error(`BENCH_INGEST_TARGETS: unknown ${unknown.join(', ')}; known: ${TARGETS.join(', ')}`);
  const rates = list('BENCH_INGEST_RATES').map(Number);
  if (rates.some((rate) => !Number.isInteger(rate) || rate < 1)) throw new Error(`BENCH_INGEST_RATES must be positive integers; got ${env.BENCH_INGEST_RATES}`);
  const keys = env.BENCH_INGEST_KEYS ? Number(env.BENCH_INGEST_KEYS) : plan.keys;
  if (!Number.isInteger(keys) || keys < 1) throw new Error(`BENCH_INGEST_KEYS must be a positive integer; got ${env.BENCH_INGEST_KEYS}`);
  return {
    ...plan,
    keys,
    targets: targets.length > 0 ? (targets as TargetName[]) : plan.targets,
    rates: rates.length > 0 ? { packed: rates, single: [] } : plan.rates,
  };
}

interface Target {
  name: TargetName;
  pid: number;
  port: number;
  recvBufferBytes: number | null;
  received(): Promise<number>;
  /** Collector only: the uses it refused at its pending-key cap (overflow_uses_total), counted, not persisted. */
  refused?(): Promise<number>;
  /** Collector only: resolves once everything it received has been written (or 30 s passed). */
  waitPersisted?(): Promise<void>;
  stop(): Promise<number | null>;
}

interface Run {
  target: TargetName;
  mode: IngestMode;
  offeredRate: number;
  sentLines: number;
  failedLines: number;
  achievedRate: number;
  sendElapsedMs: number;
  senderCpuSec: number;
  received: number;
  persisted: number | null;
  /** Of the received, the uses our collector refused at its pending-key cap. */
  refused: number | null;
  rcvbufErrors: number;
  inErrors: number;
  cpuSec: number;
  /** Time the receiving main thread(s) were runnable but waited for a CPU, during the send. */
  loopWaitMs: number;
  /** Our collector: CPU of the PostgreSQL backends serving it, during the send (its flushes). */
  postgresCpuSec: number | null;
  rssBefore: number;
  peakRss: number;
  exitCode: number | null;
  recvBufferBytes: number | null;
}

export async function runIngest(ctx: BenchContext, shape: 'stream' | 'manyKeys'): Promise<BenchResult[]> {
  const plans = { stream: ctx.quick ? QUICK : FULL, manyKeys: ctx.quick ? QUICK_MANY_KEYS : MANY_KEYS };
  const plan = selectedPlan(plans[shape], process.env);
  const orgId = await createOrg(ctx.db, `bench-ingest-${shape}`);
  const keys: IngestKey[] = (await insertKeys(ctx.db, orgId, plan.keys, 'ingest-')).map((keyId) => ({ keyId, orgId }));
  // Durable uses: in the usage tables, or in the usage log awaiting a fold (a delta's first field is
  // its total, collector/usageLog.ts), as the collector counts them persisted at the append.
  const persistedInDb = async () =>
    Number(
      (
        await ctx.db.raw(
          `select (select coalesce(sum(request_count), 0) from ${TABLE.usage} where org_id = :orgId)
                + (select coalesce(sum(cast(cast(delta as json)->>0 as bigint)), 0) from ${TABLE.usageLog} where org_id = :orgId) as n`,
          { orgId },
        )
      ).rows[0].n,
    );

  const startTarget = async (name: TargetName): Promise<Target> => {
    const settings = COLLECTOR_ENV[name];
    if (settings !== undefined) {
      const system = await startSystem(ctx.databaseUrl, { env: { ...settings, KEY_PEPPER: ctx.pepper }, compiled: true });
      const metrics = await system.metrics();
      return {
        name,
        pid: system.collectorPid,
        port: system.udpPort,
        recvBufferBytes: metrics.recv_buffer_bytes,
        received: async () => (await system.metrics()).lines_total,
        refused: async () => (await system.metrics()).overflow_uses_total,
        waitPersisted: async () => {
          const deadline = Date.now() + 30_000;
          for (;;) {
            const m = await system.metrics();
            if (m.uses_persisted_total + m.unknown_uses_total + m.overflow_uses_total >= m.uses_received_total || Date.now() > deadline) return;
            await sleep(100);
          }
        },
        stop: () => system.stop(),
      };
    }
    if (name === 'statsd') {
      const statsd = await startStatsd(requestedRecvBuffer());
      return {
        name,
        pid: statsd.child.proc.pid!,
        port: statsd.udpPort,
        recvBufferBytes: statsd.recvBufferBytes,
        received: async () => (await statsd.received()).lines,
        stop: async () => {
          const code = await stopChild(statsd.child, 5000);
          statsd.cleanup();
          return code;
        },
      };
    }
    const child = spawnTsx('node-loop', 'bench/udpReceiver.ts', { ipc: true, env: { ...process.env, RECV_BUFFER_BYTES: String(requestedRecvBuffer()) } });
    const ready = await waitForMessage<{ port: number; recvBufferBytes: number }>(child, (m) => m?.ready === true);
    return {
      name,
      pid: child.proc.pid!,
      port: ready.port,
      recvBufferBytes: grantedRecvBuffer(ready.recvBufferBytes),
      received: async () => (await ipcRequest<{ lines: number }>(child, { cmd: 'stats' })).lines,
      stop: () => stopChild(child, 5000),
    };
  };

  const sender = spawnTsx('udp-sender', 'bench/udpSender.ts', { ipc: true });
  const runs: Run[] = [];
  const live = new Set<Target>();
  try {
    await waitForMessage(sender, (m) => m?.ready === true);
    for (const mode of (['packed', 'single'] as const).filter((m) => plan.rates[m].length > 0)) {
      const prepared = await ipcRequest<{ datagrams: number; lines: number; bytes: number }>(sender, { cmd: 'prepare', keys, mode });
      ctx.log(
        `ingest: ${mode}: ${prepared.lines} distinct lines in ${prepared.datagrams} datagrams (${(prepared.lines / prepared.datagrams).toFixed(1)} lines each)`,
      );
      // One unmeasured send first: the sender's first run (its send path not yet compiled) went
      // out in late catch-up bursts, and the receiver that happened to be first lost lines for it.
      const warmUp = await startTarget('node-loop');
      await oneRun(ctx, sender, warmUp, mode, plan.rates[mode][0], Math.min(1, plan.durationSec));
      await warmUp.stop();
      const reused = new Map<TargetName, Target>();
      const lossy = new Set<TargetName>();
      for (const [i, rate] of plan.rates[mode].entries()) {
        // Rotate the order so no receiver always runs right after the same one.
        const order = plan.targets.map((_, j) => plan.targets[(i + j) % plan.targets.length]).filter((name) => !lossy.has(name));
        for (const name of order) {
          let target = reused.get(name);
          if (!target) {
            target = await startTarget(name);
            live.add(target);
            if (!plan.freshProcessPerRun) reused.set(name, target);
          }
          const dbBefore = await persistedInDb();
          const run = await oneRun(ctx, sender, target, mode, rate, plan.durationSec);
          runs.push(run);
          if (run.received < run.sentLines) lossy.add(name);
          if (plan.freshProcessPerRun) {
            // SIGTERM: the launcher stops the API, then the collector, which stops receiving,
            // flushes what it holds and exits; the launcher exits 0 only if both stopped cleanly.
            run.exitCode = await target.stop();
            live.delete(target);
          } else {
            await target.waitPersisted?.();
          }
          if (COLLECTOR_ENV[target.name] !== undefined) run.persisted = (await persistedInDb()) - dbBefore;
        }
      }
      for (const target of reused.values()) {
        const code = await target.stop();
        live.delete(target);
        const last = [...runs].reverse().find((r) => r.target === target.name && r.mode === mode);
        if (last) last.exitCode = code;
      }
    }
  } finally {
    await Promise.all([...live].map((t) => t.stop()));
    await stopChild(sender, 5000);
  }
  return [ingestTable(runs, plan), parseAggregate(keys, plan)];
}

async function oneRun(ctx: BenchContext, sender: Child, target: Target, mode: IngestMode, rate: number, durationSec: number): Promise<Run> {
  const receivedBefore = await target.received();
  const refusedBefore = await target.refused?.();
  const snmpBefore = udpCounters();
  const cpuBefore = processTreeCpuSeconds(target.pid);
  const rssBefore = processTreeMemory(target.pid).rss;
  const loops = receivingPids(target.pid);
  const schedBefore = mainThreadSchedMs(loops);
  const ours = COLLECTOR_ENV[target.name] !== undefined;
  const pgBefore = ours ? await collectorBackendsCpu(ctx.db) : undefined;
  const sent = await ipcRequest<{ sentLines: number; failedLines: number; achievedLinesPerSec: number; elapsedMs: number; senderCpuSec: number }>(
    sender,
    { cmd: 'send', port: target.port, rate, durationSec },
    durationSec * 1000 * 10 + 60_000,
  );
  const loopWaitMs = mainThreadSchedMs(loops).waitMs - schedBefore.waitMs;
  const postgresCpuSec = pgBefore ? backendsCpuDelta(pgBefore, await collectorBackendsCpu(ctx.db)) : null;
  // The receiver may still be working through its socket buffer: wait until its count stops moving.
  let received = (await target.received()) - receivedBefore;
  for (let stable = 0, polls = 0; stable < 3 && received < sent.sentLines && polls < 200; polls++) {
    await sleep(100);
    const now = (await target.received()) - receivedBefore;
    stable = now === received ? stable + 1 : 0;
    received = now;
  }
  const cpuSec = processTreeCpuSeconds(target.pid) - cpuBefore;
  const refused = refusedBefore === undefined ? null : (await target.refused!()) - refusedBefore;
  const { peakRss } = processTreeMemory(target.pid);
  const snmpAfter = udpCounters();
  ctx.log(
    `ingest: ${TARGET_LABELS[target.name]}, ${mode}, ${fmt.int(rate)} lines/s offered: sent ${fmt.int(sent.sentLines)} at ${fmt.int(sent.achievedLinesPerSec)}/s, received ${fmt.int(received)}, ` +
      `lost ${fmt.int(sent.sentLines - received)}, kernel RcvbufErrors +${fmt.int(snmpAfter.RcvbufErrors - snmpBefore.RcvbufErrors)}, load ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  return {
    target: target.name,
    mode,
    offeredRate: rate,
    sentLines: sent.sentLines,
    failedLines: sent.failedLines,
    achievedRate: sent.achievedLinesPerSec,
    sendElapsedMs: sent.elapsedMs,
    senderCpuSec: sent.senderCpuSec,
    received,
    persisted: null,
    refused,
    rcvbufErrors: snmpAfter.RcvbufErrors - snmpBefore.RcvbufErrors,
    inErrors: snmpAfter.InErrors - snmpBefore.InErrors,
    cpuSec,
    loopWaitMs,
    postgresCpuSec,
    rssBefore,
    peakRss,
    exitCode: null,
    recvBufferBytes: target.recvBufferBytes,
  };
}

function ingestTable(runs: Run[], plan: Plan): BenchResult {
  const rows = runs.map((r) => [
    TARGET_LABELS[r.target],
    r.mode === 'packed' ? 'packed ≤ 1432 B' : 'one line per datagram',
    fmt.int(r.offeredRate),
    fmt.int(r.achievedRate),
    `${fmt.fixed(r.senderCpuSec, 2)} s`,
    fmt.int(r.sentLines),
    fmt.int(r.received),
    `${fmt.int(r.sentLines - r.received)} (${fmt.pct((r.sentLines - r.received) / r.sentLines)})`,
    r.persisted === null ? '–' : `${fmt.int(r.persisted)}${r.refused ? ` (${fmt.int(r.refused)} refused at the cap)` : ''}`,
    fmt.int(r.rcvbufErrors),
    fmt.int(r.received / (r.sendElapsedMs / 1000)),
    `${fmt.fixed(r.cpuSec, 2)} s (${fmt.fixed((r.cpuSec / r.received) * 1e6, 2)} µs/line)`,
    `${fmt.int(r.loopWaitMs)} ms (${fmt.pct(r.loopWaitMs / r.sendElapsedMs, 0)})`,
    r.postgresCpuSec === null ? '–' : `${fmt.fixed(r.postgresCpuSec, 2)} s`,
    `${fmt.mib(r.rssBefore)} → ${fmt.mib(r.peakRss)}`,
  ]);

  const packed = (target: TargetName) => runs.filter((r) => r.target === target && r.mode === 'packed');
  // The highest offered rate a receiver took without losing a line, and the first it lost at.
  const lossless = (target: TargetName) => losslessRate(packed(target));
  const lostAt = (target: TargetName) => firstLoss(packed(target));
  const search = plan.targets.map((target) => {
    const lost = lostAt(target);
    return [
      TARGET_LABELS[target],
      lossless(target) > 0 ? fmt.int(lossless(target)) : 'none: lost at the lowest step',
      lost
        ? `${fmt.int(lost.offeredRate)}: ${fmt.int(lost.sentLines - lost.received)} lost (${fmt.pct((lost.sentLines - lost.received) / lost.sentLines)}), RcvbufErrors +${fmt.int(lost.rcvbufErrors)}`
        : 'none up to the top rate',
      lossless('statsd') > 0 && target !== 'statsd' ? `${fmt.fixed(lossless(target) / lossless('statsd'), 1)} ×` : '–',
    ];
  });

  const notes: string[] = [];
  const ourTargets = COLLECTOR_TARGETS.filter((name) => plan.targets.includes(name));
  for (const target of ourTargets) {
    const at400 = packed(target).find((r) => r.offeredRate === 400_000);
    if (!at400) {
      const why = plan.rates.packed.includes(400_000) ? 'not tried (it lost lines at a lower rate)' : "not in this run's ladder";
      notes.push(`Target 0 lines lost at 400,000 lines/s for ${plan.durationSec} s, ${TARGET_LABELS[target]}: ${fmt.verdict(false)} — ${why}.`);
      continue;
    }
    const lost = at400.sentLines - at400.received;
    notes.push(
      `Target 0 lines lost at 400,000 lines/s for ${plan.durationSec} s, ${TARGET_LABELS[target]}: ${fmt.verdict(lost === 0 && at400.achievedRate >= SENDER_KEPT_UP * 400_000)} — ${fmt.int(lost)} lost of ${fmt.int(at400.sentLines)} sent at ${fmt.int(at400.achievedRate)} lines/s; ${fmt.int(at400.persisted ?? NaN)} persisted.`,
    );
  }
  // The default collector against statsd: the variant arms (two receivers, a 2 s flush) are not
  // what a user runs, and the best of several arms is not a result.
  const ours = lossless(ourTargets.includes('collector') ? 'collector' : ourTargets[0]);
  const theirs = lossless('statsd');
  const ladder = `ours ${ourTargets.map((target) => `${fmt.int(lossless(target))} (${TARGET_LABELS[target]})`).join(', ')}, statsd ${fmt.int(theirs)} lines/s`;
  notes.push(
    theirs > 0
      ? `Target lossless rate ≥ 4 × Etsy statsd's on the same stream: ${fmt.verdict(ours / theirs >= 4)} — ${ladder} (${fmt.fixed(ours / theirs, 1)} ×). The steps bound the answer: each true lossless rate lies between its last clean step and its first lossy one.`
      : `Target lossless rate ≥ 4 × Etsy statsd's on the same stream: not determined — statsd lost lines at the lowest rate tried (${fmt.int(plan.rates.packed[0])} lines/s); ${ladder}.`,
  );
  const refusing = runs.filter((r) => (r.refused ?? 0) > 0);
  if (refusing.length > 0) {
    notes.push(
      `Refused at the cap: in ${refusing.length} run(s) our collector refused uses of new keys at its pending-key cap (COLLECTOR_MAX_PENDING_KEYS, of which the last twentieth is kept for orgs holding less than a twentieth: one org's keys take 95 % of it at most), counted in its overflow metrics and logged; they were received, not lost in transit, and are missing from "persisted". Appends held while a fold runs let the pending keys grow towards the cap.`,
    );
  }
  const exits = runs.filter((r) => COLLECTOR_ENV[r.target] !== undefined && r.exitCode !== null);
  if (exits.length > 0) {
    notes.push(
      `npm start SIGTERM exits (API stop, collector final flush): ${exits.every((r) => r.exitCode === 0) ? 'all 0' : exits.map((r) => r.exitCode).join(', ')}.`,
    );
  }
  const recv = runs.find((r) => r.target === 'collector')?.recvBufferBytes;
  notes.push(
    `Receive buffers: our collector asks for ${fmt.mib(requestedRecvBuffer())} and the kernel granted ${fmt.mib(recv ?? NaN)} (SO_RCVBUF is capped at net.core.rmem_max, given with the machine; Linux reports twice the grant, halved here); the bare loop asks for the same, and so does statsd ${statsdVersion()} (it sets none of its own: a preload asks for it, bench/lib/statsdRecvBuffer.cjs), granted ${fmt.mib(runs.find((r) => r.target === 'statsd')?.recvBufferBytes ?? NaN)}. The ≥ 4 × target compares the default collector (one receiver, 1 s flush) with statsd. Kernel drops are the system-wide /proc/net/snmp Udp RcvbufErrors delta over the run.`,
    "Our collector runs inside the whole system as `npm start` runs it (launcher, API process idle, collector, PostgreSQL), compiled: from dist/, brought up to date first with `npm run build`'s incremental compile. Sender and receiver share this machine's cores (and the collector's PostgreSQL flushes too); the sender process is paced and reports the rate it achieved. \"accepted lines/s\" = received lines / send duration. CPU is the receiver process's user + system time (with its cluster workers) from /proc over the send and drain; \"waiting for a CPU\" is the time its receiving main thread(s) were runnable but not running during the send (/proc/<pid>/schedstat, summed over receivers, as a share of the send time): time in which the receiver could not read because the cores were taken; PostgreSQL CPU is that of the backends serving our collector's connections over the send (the database runs on this machine); RSS is VmRSS before the run and VmHWM (peak) after, each summed over the receiver and its cluster workers.",
  );
  return {
    heading: plan.headings.ingest,
    tables: [
      {
        title: `${fmt.int(plan.durationSec * 1000)} ms per run, ${plan.keys} keys × 3 client IPs, one use per line; a fresh receiver process per run${plan.freshProcessPerRun ? '' : ' (quick mode: one per format)'}; load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')} at the end`,
        columns: [
          'receiver',
          'format',
          'offered lines/s',
          'sent lines/s',
          'sender CPU',
          'sent',
          'received',
          'lost',
          'persisted',
          'kernel RcvbufErrors (datagrams)',
          'accepted lines/s',
          'receiver CPU',
          'receive loop waiting for a CPU',
          "PostgreSQL CPU (the collector's flushes)",
          'RSS before → peak',
        ],
        rows,
      },
      {
        title: `Lossless rate search on the packed stream (${plan.rates.packed.map((r) => fmt.int(r)).join(', ')} lines/s; a receiver stops at its first loss)`,
        columns: ['receiver', 'lossless lines/s (0 lost)', 'first loss', 'lossless / statsd'],
        rows: search,
      },
    ],
    notes,
    raw: { plan, runs },
  };
}

// 3b: the collector's per-datagram work alone (bench/lib/parseAggregate.ts).
function parseAggregate(keys: IngestKey[], plan: Plan): BenchResult {
  const results: Record<string, number[]> = {};
  const rows: Array<Array<string | number>> = [];
  for (const mode of plan.parseModes) {
    for (const stage of ['parse + aggregate', 'parse only'] as const) {
      const { wall, cpu } = measureParseAggregate(keys, { mode }, stage, plan.parseLines, plan.parseReps);
      results[`${mode}/${stage}`] = cpu;
      results[`${mode}/${stage}/wall`] = wall;
      rows.push([
        mode === 'packed' ? 'packed ≤ 1432 B' : 'one line per datagram',
        stage,
        fmt.int(median(cpu)),
        `${fmt.int(Math.min(...cpu))} – ${fmt.int(Math.max(...cpu))}`,
        fmt.int(median(wall)),
        fmt.fixed(1e9 / median(cpu), 0) + ' ns',
      ]);
    }
  }
  const headline = median(results['packed/parse + aggregate']);
  return {
    heading: plan.headings.parse,
    tables: [
      {
        title: `${fmt.int(plan.parseLines)} lines per pass over ${fmt.int(plan.keys)} keys × 3 client IPs, ${plan.parseReps} passes after a warm-up pass, in the benchmark process`,
        columns: ['format', 'stage', 'lines per CPU second (median)', 'range', 'lines/s wall (median)', 'CPU per line'],
        rows,
      },
    ],
    notes: [
      `Target ≥ 1,000,000 lines/s on one core for parse + aggregate: ${fmt.verdict(headline >= 1_000_000)} (${fmt.int(headline)} lines per CPU second on the packed stream).`,
      "Lines per CPU second divide by the process's user + system time (V8's GC helper threads included, so it errs low): on a machine shared with other work it is what one core does; the wall rate also counts time the process waited for a core.",
    ],
    raw: { plan: { parseLines: plan.parseLines, parseReps: plan.parseReps }, results },
  };
}
