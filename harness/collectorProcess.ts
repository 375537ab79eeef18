import { freeTcpPort, freeUdpPort } from '../scripts/lib/freePort';
import { isRunning, spawnTsx, stopChild, type Child } from './processes';
import { httpStatus, waitFor } from './wait';

// collector/main.ts in its own process (real receiver, aggregator, flusher, PostgreSQL), on
// 127.0.0.1, for the benchmarks and the fault tests.

export interface CollectorMetrics {
  [name: string]: number;
}

/** The collector's Prometheus exposition as `{ name without keyusage_collector_: value }`. */
export function parseCollectorMetrics(text: string): CollectorMetrics {
  const values: CollectorMetrics = {};
  for (const line of text.split('\n')) {
    const match = /^keyusage_collector_(\w+) (\S+)$/.exec(line);
    if (match) values[match[1]] = Number(match[2]);
  }
  return values;
}

export async function fetchCollectorMetrics(metricsPort: number): Promise<CollectorMetrics> {
  return parseCollectorMetrics(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
}

export interface CollectorProcess {
  child: Child;
  udpPort: number;
  metricsPort: number;
  metrics(): Promise<CollectorMetrics>;
  /** The status /healthz answers with. */
  health(): Promise<number>;
}

export interface CollectorProcessOptions {
  /** A given UDP port, e.g. the one a killed collector held; else a free one. */
  udpPort?: number;
  /** Added to (and overriding) the parent's environment; LOG_LEVEL is warn unless given. */
  env?: Record<string, string>;
  /** TypeScript modules loaded before the collector, such as a probe. */
  preload?: string[];
  /** Keep every output line (see spawnProcess). */
  keepOutput?: boolean;
}

export async function startCollectorProcess(databaseUrl: string, options: CollectorProcessOptions = {}): Promise<CollectorProcess> {
  const udpPort = options.udpPort ?? (await freeUdpPort());
  const metricsPort = await freeTcpPort();
  const child = spawnTsx('collector', 'collector/main.ts', {
    preload: options.preload,
    keepOutput: options.keepOutput,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      COLLECTOR_HOST: '127.0.0.1',
      COLLECTOR_PORT: String(udpPort),
      COLLECTOR_METRICS_HOST: '127.0.0.1',
      COLLECTOR_METRICS_PORT: String(metricsPort),
      LOG_LEVEL: 'warn',
      ...options.env,
    },
  });
  await untilListening(child, metricsPort);
  const base = `http://127.0.0.1:${metricsPort}`;
  return {
    child,
    udpPort,
    metricsPort,
    metrics: () => fetchCollectorMetrics(metricsPort),
    health: async () => (await fetch(`${base}/healthz`)).status,
  };
}

// The metrics server listens after the UDP socket is bound, so its first answer (whatever the
// status: /healthz is 503 while PostgreSQL is unreachable) means the collector receives.
async function untilListening(child: Child, metricsPort: number): Promise<void> {
  try {
    await waitFor(
      'the collector process to listen',
      () => {
        if (!isRunning(child)) throw new Error(`collector exited (${child.proc.exitCode}) before listening:\n${child.output()}`);
        return httpStatus(`http://127.0.0.1:${metricsPort}/healthz`);
      },
      // On a loaded machine a collector with several receivers compiles its sources in each.
      60_000,
      20,
    );
  } catch (error) {
    await stopChild(child, 0);
    throw error;
  }
}
