import dgram from 'node:dgram';
import fs from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { spawnTsx, stopChild, killAllChildren, type Child } from '../harness/processes';
import { startSystem } from '../harness/systemProcess';
import { sleep } from '../harness/wait';
import { BENCH_PEPPER } from './lib/context';
import { createOrg, insertKeys, openBenchDatabase, type BenchDatabase } from './lib/database';
import {
  backendsCpuDelta,
  collectorBackendsCpu,
  exitWhenDone,
  ipcRequest,
  mainThreadSchedMs,
  processTreeCpu,
  receivingPids,
  udpCounters,
  waitForMessage,
  type CpuSplit,
} from './lib/procs';
import { fmt, writeResults } from './lib/report';
import { interleavedSchedule, median, summarize } from './lib/stats';

// `npx tsx bench/ingestStalls.ts [--rate=400000[,300000…]] [--seconds=10] [--runs=3] [--probe=off]
//    [--variant='name:ENV=value --node-option [compiled]']...`
// Not part of `npm run bench`: the diagnosis behind the ingest ladder (docs/benchmarks.md §3).
// Each run starts the whole system (harness/systemProcess.ts) with bench/lib/loopProbe.ts in the
// collector, sends the packed stream at one rate from the sender process, samples the kernel's
// RcvbufErrors every 5 ms meanwhile, and lines the drops up with what the collector's loop did:
// stalls (late timers: off the CPU, GC, a flush or other work), GC pauses and flush transactions,
// with the loop's time on and waiting for a CPU and PostgreSQL's CPU for the collector. It also
// gives the collector's CPU (user and system, every thread) per line received during the send: the
// receive path's cost with datagrams from a real socket, which bench/parseAggregate.ts does not
// see. `--probe=off` leaves the probe out (its timer and pg hooks then cost nothing, and a
// `--cpu-prof` profile is the collector's alone); drops are then only counted. Variants
// (collector environment and node options) and rates run interleaved, rotated per round. Results:
// stderr as the runs go, a summary per variant and rate (median and worst) at the end, stdout as
// JSON lines, and bench/results/stalls-*.json.

interface Variant {
  name: string;
  nodeArgs: string[];
  env: Record<string, string>;
  /** The system from dist/ (brought up to date first), as production runs it, not from source under tsx. */
  compiled: boolean;
}

interface Probe {
  stalls: number[][];
  gc: Array<[number, number, number]>;
  busy: number[][];
  flushes: Array<[number, string]>;
}

const PROBE = './bench/lib/loopProbe.ts';
const SAMPLE_MS = 5;
// The shortest stall the probe records (its STALL_MS).
const STALL_MS = 10;
// A drop is blamed on what happened up to this long before it: the socket buffer (≈ 80 ms of the
// 400 k packed stream per 8 MiB of kernel truesize) fills during a stall and overflows near its end.
const BLAME_MS = 300;
// V8's GC kinds as perf_hooks reports them (NODE_PERFORMANCE_GC_*).
const GC_KINDS: Record<number, string> = { 1: 'scavenge', 2: 'mark-compact', 4: 'incremental', 8: 'weak callbacks' };

function parseArgs(argv: string[]) {
  const options = { rates: [400_000], seconds: 10, runs: 3, probe: true, variants: [] as Variant[] };
  for (const arg of argv) {
    const [name, value = ''] = arg.replace(/^--/, '').split(/=(.*)/s);
    if (name === 'seconds' || name === 'runs') options[name] = Number(value);
    else if (name === 'rate') options.rates = value.split(',').map(Number);
    else if (name === 'probe') options.probe = value !== 'off';
    else if (name === 'variant') {
      // `name:NAME=value --node-option … [compiled]`: environment settings, collector node options,
      // and `compiled` for the system from dist/.
      const [label, args = ''] = value.split(/:(.*)/s);
      const words = args.split(' ').filter(Boolean);
      const isEnv = (w: string) => /^[A-Z_]+=/.test(w);
      const env = Object.fromEntries(words.filter(isEnv).map((w) => w.split(/=(.*)/s).slice(0, 2)));
      const nodeArgs = words.filter((w) => !isEnv(w) && w !== 'compiled');
      options.variants.push({ name: label, nodeArgs, env, compiled: words.includes('compiled') });
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (options.variants.length === 0) options.variants.push({ name: 'default', nodeArgs: [], env: {}, compiled: false });
  // The probe is TypeScript: a compiled collector has no tsx to load it with.
  if (options.probe && options.variants.some((v) => v.compiled)) throw new Error('a compiled variant needs --probe=off');
  return options;
}

/** RcvbufErrors, sampled every SAMPLE_MS until `stop`: [epoch ms, cumulative count]. */
function sampleDrops(): { stop(): number[][] } {
  const samples: number[][] = [];
  const timer = setInterval(() => samples.push([Date.now(), udpCounters().RcvbufErrors]), SAMPLE_MS);
  return { stop: () => (clearInterval(timer), samples) };
}

async function oneRun(sender: Child, database: BenchDatabase, variant: Variant, rate: number, seconds: number, withProbe: boolean) {
  const databaseUrl = database.url;
  const probeFile = path.join(tmpdir(), `keyusage-probe-${process.pid}-${Date.now()}.json`);
  const system = await startSystem(databaseUrl, {
    env: { KEY_PEPPER: BENCH_PEPPER, ...(withProbe ? { LOOP_PROBE_FILE: probeFile } : {}), ...variant.env },
    collectorNodeArgs: [...(withProbe ? ['--import', PROBE] : []), ...variant.nodeArgs],
    compiled: variant.compiled,
  });
  try {
    const before = (await system.metrics()).lines_total;
    const loops = receivingPids(system.collectorPid);
    const schedBefore = mainThreadSchedMs(loops);
    const pgBefore = await collectorBackendsCpu(database.db);
    const cpuBefore = processTreeCpu(system.collectorPid);
    const drops = sampleDrops();
    const sendStart = Date.now();
    const sent = await ipcRequest<{ sentLines: number; elapsedMs: number; senderCpuSec: number }>(
      sender,
      { cmd: 'send', port: system.udpPort, rate, durationSec: seconds },
      120_000,
    );
    // CPU per line over the send alone: what the collector spent while lines arrived, over the
    // lines it had counted by then (the few still in its socket buffer are not in either).
    const cpu = cpuDelta(cpuBefore, processTreeCpu(system.collectorPid));
    const receivedBySendEnd = (await system.metrics()).lines_total - before;
    const schedAfter = mainThreadSchedMs(loops);
    const pgAfter = await collectorBackendsCpu(database.db);
    await sleep(1000);
    const timeline = drops.stop();
    const received = (await system.metrics()).lines_total - before;
    const exitCode = await system.stop();
    return {
      variant: variant.name,
      rate,
      sent: sent.sentLines,
      received,
      collectorCpuMs: { user: cpu.user * 1000, system: cpu.system * 1000 },
      cpuUsPerLine: ((cpu.user + cpu.system) / receivedBySendEnd) * 1e6,
      senderCpuMs: sent.senderCpuSec * 1000,
      exitCode,
      load: loadavg()[0],
      loopRunMs: schedAfter.runMs - schedBefore.runMs,
      loopWaitMs: schedAfter.waitMs - schedBefore.waitMs,
      postgresCpuMs: backendsCpuDelta(pgBefore, pgAfter) * 1000,
      rcvbufErrors: timeline.length > 0 ? timeline[timeline.length - 1][1] - timeline[0][1] : 0,
      ...(withProbe ? analyse(readProbes(probeFile), timeline, sendStart, sendStart + sent.elapsedMs) : {}),
    };
  } finally {
    await system.stop();
    for (const file of probeFiles(probeFile)) fs.rmSync(file, { force: true });
  }
}

const cpuDelta = (before: CpuSplit, after: CpuSplit): CpuSplit => ({ user: after.user - before.user, system: after.system - before.system });

const probeFiles = (prefix: string) =>
  fs
    .readdirSync(path.dirname(prefix))
    .filter((name) => name.startsWith(`${path.basename(prefix)}.`))
    .map((name) => path.join(path.dirname(prefix), name));

/** Every process's record, merged (with several receivers, their loops side by side). */
function readProbes(prefix: string): Probe {
  const merged: Probe = { stalls: [], gc: [], busy: [], flushes: [] };
  for (const file of probeFiles(prefix)) {
    const probe = JSON.parse(fs.readFileSync(file, 'utf8')) as Probe;
    for (const key of Object.keys(merged) as Array<keyof Probe>) (merged[key] as unknown[]).push(...probe[key]);
  }
  return merged;
}

type Cause = 'gc' | 'flush' | 'off cpu' | 'other';

// A stall is off the CPU when the loop's thread waited for one for half of it or more; else GC when
// GC pauses fill half of it; else the flush when a flush statement was sent during it; else other
// work on the loop.
function stallCause([start, ms, waitedMs]: number[], gc: number[][], flushMarks: number[]): Cause {
  const end = start + ms;
  if (waitedMs >= ms / 2) return 'off cpu';
  if (gc.filter(([s]) => s >= start - 1 && s <= end).reduce((sum, [, d]) => sum + d, 0) >= ms / 2) return 'gc';
  return flushMarks.some((t) => t >= start - STALL_MS && t <= end) ? 'flush' : 'other';
}

// What the loop did during the send, and in the BLAME_MS before each sample where the kernel dropped.
function analyse(probe: Probe, drops: number[][], from: number, to: number) {
  const during = <T extends [number, ...unknown[]] | number[]>(rows: T[]) => rows.filter((row) => row[0] >= from && row[0] <= to);
  const gc = during(probe.gc);
  const flushMarks = during(probe.flushes).map(([t]) => t);
  const stalls = during(probe.stalls).map((stall) => ({ start: stall[0], ms: stall[1], cause: stallCause(stall, gc, flushMarks) }));
  const causes = (['gc', 'flush', 'off cpu', 'other'] as const).map((cause) => {
    const of = stalls.filter((s) => s.cause === cause);
    return [cause, { n: of.length, totalMs: of.reduce((sum, s) => sum + s.ms, 0), maxMs: Math.max(0, ...of.map((s) => s.ms)) }] as const;
  });
  // Drops by the cause of the longest stall just before them ('none': the loop ran, but too slowly).
  const dropsBy: Record<string, number> = {};
  for (const [t, count] of dropBursts(drops)) {
    const worst = stalls.filter((s) => s.start <= t && s.start >= t - BLAME_MS).sort((a, b) => b.ms - a.ms)[0];
    const cause = worst && worst.ms >= 2 * STALL_MS ? worst.cause : 'none';
    dropsBy[cause] = (dropsBy[cause] ?? 0) + count;
  }
  const gcBy = (kind: number) => gc.filter(([, , k]) => k === kind).map(([, ms]) => ms);
  return {
    stalls: Object.fromEntries(causes),
    dropsBy,
    gc: Object.fromEntries(Object.entries(GC_KINDS).map(([kind, name]) => [name, summary(gcBy(Number(kind)))])),
    flushMs: summary(flushWindows(during(probe.flushes)).map(([b, c]) => c - b)),
    busy: median(during(probe.busy).map(([, u]) => u)),
  };
}

const summary = (values: number[]) => ({ n: values.length, totalMs: values.reduce((a, b) => a + b, 0), maxMs: Math.max(0, ...values) });

/** BEGIN → COMMIT pairs as [start, end]. */
function flushWindows(marks: Array<[number, string]>): number[][] {
  const windows: number[][] = [];
  let begin: number | undefined;
  for (const [t, what] of marks) {
    if (what === 'begin') begin = t;
    else if (begin !== undefined) {
      windows.push([begin, t]);
      begin = undefined;
    }
  }
  return windows;
}

/** Samples where the drop counter moved: [epoch ms, drops since the sample before]. */
function dropBursts(samples: number[][]): number[][] {
  return samples.slice(1).flatMap(([t, n], i) => (n > samples[i][1] ? [[t, n - samples[i][1]]] : []));
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  process.env.NODE_ENV ||= 'development';
  const log = (line: string) => process.stderr.write(`[stalls] ${line}\n`);
  const database = await openBenchDatabase(log);
  const sender = spawnTsx('udp-sender', 'bench/udpSender.ts', { ipc: true });
  const runs = [];
  try {
    const orgId = await createOrg(database.db, 'bench-stalls');
    const keys = (await insertKeys(database.db, orgId, 1000, 'stalls-')).map((keyId) => ({ keyId, orgId }));
    await waitForMessage(sender, (m) => m?.ready === true);
    await ipcRequest(sender, { cmd: 'prepare', keys, mode: 'packed' });
    await warmUpSender(sender, Math.max(...options.rates));
    const arms = options.rates.flatMap((rate) => options.variants.map((variant) => ({ rate, variant })));
    for (const round of interleavedSchedule(arms, options.runs)) {
      for (const { rate, variant } of round) {
        const run = await oneRun(sender, database, variant, rate, options.seconds, options.probe);
        runs.push(run);
        log(describe(run));
      }
    }
    for (const line of summaryLines(runs)) log(line);
  } finally {
    await stopChild(sender, 5000);
    killAllChildren();
    await database.close();
  }
  for (const run of runs) console.log(JSON.stringify(run));
  writeResults(path.join(__dirname, 'results', `stalls-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), { options, runs });
}

// The sender's first second goes out in late bursts until its send path is compiled: spend it on a
// socket in this process that nobody measures.
async function warmUpSender(sender: Child, rate: number) {
  const sink = dgram.createSocket('udp4').on('message', () => undefined);
  await new Promise<void>((resolve) => sink.bind(0, '127.0.0.1', resolve));
  await ipcRequest(sender, { cmd: 'send', port: sink.address().port, rate, durationSec: 1 }, 60_000);
  sink.close();
}

type Run = Awaited<ReturnType<typeof oneRun>>;

function describe(run: Run): string {
  const lost = run.sent - run.received;
  const list = (entries: Record<string, { n: number; totalMs: number; maxMs: number }>) =>
    Object.entries(entries)
      .map(([k, s]) => `${k} ${s.n}× ${fmt.ms(s.totalMs, 0)} (max ${fmt.ms(s.maxMs, 0)})`)
      .join(', ');
  const probe =
    run.stalls && run.gc && run.flushMs && run.busy !== undefined
      ? ` (by the stall before them: ${JSON.stringify(run.dropsBy)}); stalls ≥ ${STALL_MS} ms: ${list(run.stalls)}; GC: ${list(run.gc)}; ` +
        `flushes: ${list({ flush: run.flushMs })}; loop busy ${fmt.pct(run.busy, 0)}`
      : '';
  return (
    `${run.variant} at ${fmt.int(run.rate)}/s: lost ${fmt.int(lost)} of ${fmt.int(run.sent)} (${fmt.pct(lost / run.sent)}), RcvbufErrors +${fmt.int(run.rcvbufErrors)}${probe}; ` +
    `collector CPU ${fmt.ms(run.collectorCpuMs.user, 0)} user + ${fmt.ms(run.collectorCpuMs.system, 0)} system (${run.cpuUsPerLine.toFixed(2)} µs/line); ` +
    `loop threads on CPU ${fmt.ms(run.loopRunMs, 0)}, waiting for a CPU ${fmt.ms(run.loopWaitMs, 0)}; sender CPU ${fmt.ms(run.senderCpuMs, 0)}; ` +
    `PostgreSQL CPU for the collector ${fmt.ms(run.postgresCpuMs, 0)}; load ${run.load.toFixed(2)}; exit ${run.exitCode}`
  );
}

/** Per variant and rate: median and worst (highest) of CPU per line and of the share lost. */
function summaryLines(runs: Run[]): string[] {
  const groups = new Map<string, Run[]>();
  for (const run of runs) {
    const arm = `${run.variant} at ${fmt.int(run.rate)}/s`;
    groups.set(arm, [...(groups.get(arm) ?? []), run]);
  }
  return [...groups].map(([arm, of]) => {
    const cpu = summarize(of.map((run) => run.cpuUsPerLine));
    const lost = summarize(of.map((run) => (run.sent - run.received) / run.sent));
    const loads = of.map((run) => run.load);
    return (
      `summary ${arm}, ${of.length} runs: CPU ${cpu.p50.toFixed(2)} µs/line median, ${cpu.max.toFixed(2)} worst; ` +
      `lost ${fmt.pct(lost.p50)} median, ${fmt.pct(lost.max)} worst; load ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)}`
    );
  });
}

exitWhenDone(main());
