import { spawnTsx, type Child } from '../../harness/processes';
import { waitForMessage } from './procs';

// The bench server (bench/server.ts): the API's app with the variant under measurement, in its own
// process. The collector process is harness/collectorProcess.ts.

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
