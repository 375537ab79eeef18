import { freeTcpPort, freeUdpPort, spawnTsx, waitForMessage, waitUntil, type Child } from './procs';

// The project's own processes, started from their sources as the Procfile starts their compiled
// copies, plus the bench server.

export interface CollectorProcess {
  child: Child;
  udpPort: number;
  metricsPort: number;
  metrics(): Promise<Record<string, number>>;
}

export async function fetchMetrics(metricsPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const values: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const match = /^keyusage_collector_(\w+) (\S+)$/.exec(line);
    if (match) values[match[1]] = Number(match[2]);
  }
  return values;
}

/** collector/main.ts in its own process (real receiver, aggregator, flusher, PostgreSQL). */
export async function startCollectorProcess(databaseUrl: string, env: Record<string, string> = {}): Promise<CollectorProcess> {
  const udpPort = await freeUdpPort();
  const metricsPort = await freeTcpPort();
  const child = spawnTsx('collector', 'collector/main.ts', {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      COLLECTOR_HOST: '127.0.0.1',
      COLLECTOR_PORT: String(udpPort),
      COLLECTOR_METRICS_HOST: '127.0.0.1',
      COLLECTOR_METRICS_PORT: String(metricsPort),
      LOG_LEVEL: 'warn',
      ...env,
    },
  });
  const exited = new Promise<never>((_, reject) =>
    child.proc.once('exit', (code) => reject(new Error(`collector exited (${code}) during start\n${child.output()}`))),
  );
  exited.catch(() => undefined);
  await Promise.race([
    // 60 s: on a loaded machine a collector with several receivers compiles its sources in each.
    waitUntil('the collector health check', async () => ((await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).ok ? true : undefined), 60_000, 50),
    exited,
  ]);
  return { child, udpPort, metricsPort, metrics: () => fetchMetrics(metricsPort) };
}

export interface BenchServer {
  child: Child;
  variant: string;
  port: number;
  url: string;
}

export async function startBenchServer(variant: string, env: Record<string, string>): Promise<BenchServer> {
  const child = spawnTsx(`server:${variant}`, 'bench/server.ts', { ipc: true, env: { ...process.env, LOG_LEVEL: 'warn', ...env, BENCH_VARIANT: variant } });
  const { port } = await waitForMessage<{ port: number }>(child, (m) => m?.ready === true, 30_000);
  return { child, variant, port, url: `http://127.0.0.1:${port}` };
}
