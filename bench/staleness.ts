import { performance } from 'node:perf_hooks';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createCallableKey, createOrg } from './lib/database';
import { startCollectorProcess } from '../harness/collectorProcess';
import { spawnTsx, stopChild } from '../harness/processes';
import { seededRandom } from '../harness/random';
import { httpStatus, sleep, waitFor } from '../harness/wait';
import { freeTcpPort } from '../scripts/lib/freePort';
import { fmt, type BenchResult } from './lib/report';
import { summarize } from './lib/stats';

// Benchmark 6. The API (api/main.ts) and the collector (collector/main.ts) as separate processes,
// the way the Procfile runs them, with default settings (API drain 250 ms, collector flush
// 1000 ms). Each sample: wait a random 0–1.25 s (so the request lands at a random phase of both
// timers), send one request with a probe key, then poll the usage endpoint every 20 ms until the
// probe's count moves. Staleness = first poll that sees it − start of the request.

interface Plan {
  samples: number;
  pollMs: number;
  timeoutMs: number;
}

const FULL: Plan = { samples: 20, pollMs: 20, timeoutMs: 10_000 };
const QUICK: Plan = { samples: 3, pollMs: 20, timeoutMs: 10_000 };

// Each variant is a whole system (a collector and an API on it) with an org and keys of its own in
// the same database; samples alternate between them, so both see the same machine.
const VARIANTS: Array<{ name: string; env: Record<string, string> }> = [
  // A use at a time: far below COLLECTOR_USAGE_LOG_MIN_KEYS, so the default writes it directly.
  { name: 'default (COLLECTOR_USAGE_LOG=auto): a few keys, usage tables written by the flush', env: {} },
  { name: 'usage log (COLLECTOR_USAGE_LOG=true): visible after the fold', env: { COLLECTOR_USAGE_LOG: 'true' } },
];

async function startSystem(ctx: BenchContext, env: Record<string, string>) {
  const collector = await startCollectorProcess(ctx.databaseUrl, { env });
  const port = await freeTcpPort();
  const api = spawnTsx('api', 'api/main.ts', {
    env: {
      ...process.env,
      DATABASE_URL: ctx.databaseUrl,
      HOST: '127.0.0.1',
      PORT: String(port),
      API_METRICS_PORT: '0',
      COLLECTOR_HOST: '127.0.0.1',
      COLLECTOR_PORT: String(collector.udpPort),
      KEY_PEPPER: ctx.pepper,
      LOG_LEVEL: 'warn',
    },
  });
  const base = `http://127.0.0.1:${port}`;
  const stop = async () => {
    await stopChild(api);
    await stopChild(collector.child);
  };
  await waitFor('the API health check', async () => ((await httpStatus(`${base}/healthz`)) === 200 ? true : undefined), 30_000, 100).catch(async (error) => {
    await stop();
    throw error;
  });
  return { base, stop };
}

type Sample = { variant: string; stalenessMs: number; responseMs: number; polls: number };

// One request with the probe key at a random phase, then the usage endpoint polled until the
// probe's count moves.
type System = { name: string; base: string; stop: () => Promise<void>; orgId: string; admin: string; probe: { keyId: string; plaintext: string } };

async function sampleOnce(plan: Plan, { base, orgId, admin, probe }: System) {
  const probeCount = async () => {
    const response = await fetch(`${base}/api/orgs/${orgId}/api-keys/usage?limit=50`, { headers: { authorization: `Bearer ${admin}` } });
    const body = (await response.json()) as { data: Array<{ id: string; requestCount: number }> };
    return body.data.find((k) => k.id === probe.keyId)?.requestCount ?? 0;
  };
  const before = await probeCount();
  const started = performance.now();
  const response = await fetch(`${base}/api/whoami`, { headers: { authorization: `Bearer ${probe.plaintext}` } });
  await response.arrayBuffer();
  const responseMs = performance.now() - started;
  if (response.status !== 200) throw new Error(`GET /api/whoami answered ${response.status}`);
  let polls = 0;
  for (;;) {
    polls++;
    if ((await probeCount()) > before) break;
    if (performance.now() - started > plan.timeoutMs) throw new Error(`use not visible after ${plan.timeoutMs} ms`);
    await sleep(plan.pollMs);
  }
  return { stalenessMs: performance.now() - started, responseMs, polls };
}

export async function runStaleness(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const systems: System[] = [];
  const samples: Sample[] = [];
  const random = seededRandom(6);
  try {
    for (const [i, variant] of VARIANTS.entries()) {
      const orgId = await createOrg(ctx.db, `bench-staleness-${i}`);
      const admin = await createCallableKey(ctx.db, orgId, ctx.pepper, 'staleness-admin', ['keys:read']);
      const probe = await createCallableKey(ctx.db, orgId, ctx.pepper, 'staleness-probe', ['keys:read']);
      systems.push({ name: variant.name, orgId, admin: admin.plaintext, probe, ...(await startSystem(ctx, variant.env)) });
    }
    for (let i = 0; i < plan.samples * systems.length; i++) {
      const system = systems[i % systems.length];
      await sleep(random() * 1250);
      samples.push({ variant: system.name, ...(await sampleOnce(plan, system)) });
    }
  } finally {
    for (const system of systems) await system.stop();
  }
  return report(plan, samples);
}

function report(plan: Plan, samples: Sample[]): BenchResult {
  const byVariant = VARIANTS.map(({ name }) => ({ name, s: summarize(samples.filter((x) => x.variant === name).map((x) => x.stalenessMs)) }));
  return {
    heading: HEADINGS.staleness,
    tables: [
      {
        title: `api/main.ts + collector/main.ts as separate processes, default settings (drain 250 ms, flush 1000 ms), one such pair per variant on the same database, samples alternated; ${plan.samples} samples each at random phases, polling every ${plan.pollMs} ms`,
        columns: ['variant', 'samples', 'min', 'p50', 'p95', 'max', 'mean'],
        rows: byVariant.map(({ name, s }) => [name, s.n, fmt.ms(s.min, 0), fmt.ms(s.p50, 0), fmt.ms(s.p95, 0), fmt.ms(s.max, 0), fmt.ms(s.mean, 0)]),
      },
    ],
    notes: [
      ...byVariant.map(({ name, s }) => `Target ≤ 2 s from request to visible, ${name}: ${fmt.verdict(s.max <= 2000)} (worst of ${s.n}: ${fmt.ms(s.max, 0)}).`),
      'Bound by construction: ≤ 250 ms waiting for the API drain + ≤ 1000 ms waiting for the next flush + the flush itself + ≤ one poll interval; with the usage log, + the fold that follows the flush.',
    ],
    raw: { plan, samples },
  };
}
