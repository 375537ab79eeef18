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

// Load only ever goes to loopback: a COLLECTOR_HOST exported in the shell that runs the bench
// sent the `on` and `hotshots` servers' datagrams to it (a datagram per request for hotshots).
export function benchServerEnv(variant: string, env: Record<string, string>, parent: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...parent, LOG_LEVEL: 'warn', ...env, COLLECTOR_HOST: '127.0.0.1', BENCH_VARIANT: variant };
}

export async function startBenchServer(variant: string, env: Record<string, string>): Promise<BenchServer> {
  const child = spawnTsx(`server:${variant}`, 'bench/server.ts', { ipc: true, env: benchServerEnv(variant, env) });
  const { port } = await waitForMessage<{ port: number }>(child, (m) => m?.ready === true, 30_000);
  return { child, variant, port, url: `http://127.0.0.1:${port}` };
}
