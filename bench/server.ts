import http from 'node:http';
import { StatsD } from 'hot-shots';
import { createApp } from '../api/app';
import type { RecordUse } from '../api/auth/authorize';
import { createUsageRecorder } from '../api/usage/createUsageRecorder';
import type { UsageRecorder } from '../api/usage/usageRecorder';
import { loadConfig } from '../shared/config';
import { createDb } from '../shared/db';
import { createLogger } from '../shared/logger';
import { listen } from '../shared/process';
import { serveIpc } from './lib/procs';
import { percentileOfSorted } from './lib/stats';

// A bench-only API server: the real app (createApp) built the way api/main.ts builds it, with the
// usage hook chosen by BENCH_VARIANT:
//   off       no usage tracking (the hook is a no-op);
//   on        the real UsageRecorder → hot-shots transport → a live collector (what we ship);
//   hotshots  one hot-shots `increment` with tags per request, no coalescing;
//   naive     what a user might write instead: a synchronous
//             `UPDATE ... SET last_used_at = now(), request_count = request_count + 1` per
//             authenticated request, awaited before the response goes out (bench_key_usage table).
// Driven over IPC by bench/authPath.ts: `stats` (process CPU, requests, recorder counters),
// `timing` (per-call hrtime of the hook, on/off), `loop` (the same hook in a tight loop).

type Variant = 'off' | 'on' | 'hotshots' | 'naive';
const variant = (process.env.BENCH_VARIANT ?? 'off') as Variant;
if (!['off', 'on', 'hotshots', 'naive'].includes(variant)) throw new Error(`unknown BENCH_VARIANT ${variant}`);

const config = loadConfig();
const logger = createLogger({ level: config.logLevel, name: `bench-${variant}` });
const db = createDb(config.database.url!, { poolMax: config.database.poolMax, applicationName: `keyusage-bench-${variant}` });

let recorder: UsageRecorder | undefined;
let statsd: StatsD | undefined;
let hook: RecordUse = () => {};
if (variant === 'on') {
  // Exactly as api/main.ts builds it (unsigned unless USAGE_SIGNING_SECRET is set).
  const created = createUsageRecorder(config.usage, logger);
  recorder = created;
  created.start();
  hook = created.record.bind(created);
} else if (variant === 'hotshots') {
  statsd = new StatsD({
    host: config.usage.collectorHost,
    port: config.usage.collectorPort,
    protocol: 'udp',
    errorHandler: (error) => logger.warn({ err: { message: error.message } }, 'usage socket error'),
  });
  const client = statsd;
  hook = (keyId, orgId, ip, outcome) => client.increment('apikey.used', 1, { key: keyId, org: orgId, ip, outcome });
}

// Hook timing. Every variant goes through the same wrapper and the same `timing` test, so the
// variants differ only by their hook. Samples are kept in a preallocated array (no allocation on
// the request path) and summarised on request.
const MAX_SAMPLES = 1 << 21;
const samples = new Float64Array(MAX_SAMPLES);
let sampleCount = 0;
let timing = false;
let hookCalls = 0;
const recordUse: RecordUse = (keyId, orgId, ip, outcome) => {
  hookCalls++;
  if (!timing) return hook(keyId, orgId, ip, outcome);
  const started = process.hrtime.bigint();
  hook(keyId, orgId, ip, outcome);
  const elapsed = process.hrtime.bigint() - started;
  if (sampleCount < MAX_SAMPLES) samples[sampleCount++] = Number(elapsed);
};

// The recorder's drains run on its interval, off the request path; their total time is spread
// over the uses they carried.
let drainNanos = 0;
let drains = 0;
if (recorder) {
  const drain = recorder.drain.bind(recorder);
  recorder.drain = () => {
    if (!timing) return drain();
    const started = process.hrtime.bigint();
    drain();
    drainNanos += Number(process.hrtime.bigint() - started);
    drains++;
  };
}

const { app } = createApp({ db, logger, config: config.api, webhooks: config.webhooks, recordUse });

// The naive variant holds each authenticated response until its UPDATE has committed.
const NAIVE_UPDATE = 'update bench_key_usage set last_used_at = now(), request_count = request_count + 1 where key_id = ?';
const handler: http.RequestListener =
  variant === 'naive'
    ? (req, res) => {
        const end = res.end.bind(res);
        res.end = function naiveEnd(this: http.ServerResponse, ...args: unknown[]) {
          const auth = (res as unknown as { locals?: { auth?: { key: { id: string } } } }).locals?.auth;
          if (!auth) return end(...(args as Parameters<typeof end>));
          db.raw(NAIVE_UPDATE, [auth.key.id]).then(
            () => end(...(args as Parameters<typeof end>)),
            (error: Error) => {
              logger.error({ err: { message: error.message } }, 'naive usage update failed');
              end(...(args as Parameters<typeof end>));
            },
          );
          return this;
        } as typeof res.end;
        app(req, res);
      }
    : app;

const server = http.createServer(handler);

function loop(iterations: number) {
  const started = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) hook('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002', '127.0.0.1', 'ok');
  return Number(process.hrtime.bigint() - started) / iterations;
}

serveIpc((message) => {
  switch (message.cmd) {
    case 'stats': {
      const cpu = process.cpuUsage();
      return {
        cpuMicros: cpu.user + cpu.system,
        hookCalls,
        recorder: recorder ? { ...recorder.stats } : undefined,
        memory: process.memoryUsage().rss,
      };
    }
    case 'timing': {
      if (message.on) {
        sampleCount = 0;
        drainNanos = 0;
        drains = 0;
        timing = true;
        return { ok: true };
      }
      timing = false;
      const s = samples.slice(0, sampleCount).sort();
      let total = 0;
      for (const v of s) total += v;
      return {
        calls: s.length,
        meanNs: total / s.length,
        p50Ns: percentileOfSorted(s, 50),
        p90Ns: percentileOfSorted(s, 90),
        p99Ns: percentileOfSorted(s, 99),
        p999Ns: percentileOfSorted(s, 99.9),
        maxNs: s[s.length - 1],
        drainNanos,
        drains,
      };
    }
    case 'loop': {
      const iterations = Number(message.iterations);
      loop(Math.min(iterations, 10_000)); // warm the hook up first
      return { nsPerCall: loop(iterations), iterations };
    }
    case 'flushUsage': {
      recorder?.drain();
      return { recorder: recorder ? { ...recorder.stats } : undefined };
    }
    default:
      throw new Error(`unknown command ${message.cmd}`);
  }
});

listen(server, '127.0.0.1', 0, 'PORT').then(
  (port) => process.send?.({ ready: true, port }),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
