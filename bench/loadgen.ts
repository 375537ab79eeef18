import autocannon from 'autocannon';
import { serveIpc } from './lib/procs';
import { percentileOfSorted } from './lib/stats';

// The HTTP load generator, in its own process so that its CPU never counts against the server.
// One IPC `run` = one block: autocannon for `durationSec` against `url`. Latencies are collected
// from autocannon's per-response event (float milliseconds) because its own histogram keeps whole
// milliseconds only. autocannon checks for the end of a run on its sampling tick, so the tick is
// 100 ms (default 1 s) to keep short blocks short.

interface RunRequest {
  url: string;
  headers: Record<string, string>;
  connections: number;
  durationSec: number;
}

function run(request: RunRequest) {
  const url = new URL(request.url);
  if (url.hostname !== '127.0.0.1') throw new Error(`load is only generated against 127.0.0.1, not ${url.hostname}`);
  return new Promise((resolve, reject) => {
    const latencies: number[] = [];
    const instance = autocannon(
      { url: request.url, headers: request.headers, connections: request.connections, duration: request.durationSec, pipelining: 1, sampleInt: 100 },
      (error, result) => {
        if (error) return reject(error);
        const sorted = Float64Array.from(latencies).sort();
        resolve({
          requests: result.requests.total,
          durationSec: result.duration,
          non2xx: result.non2xx,
          errors: result.errors,
          timeouts: result.timeouts,
          p50Ms: percentileOfSorted(sorted, 50),
          p99Ms: percentileOfSorted(sorted, 99),
        });
      },
    );
    instance.on('response', (_client: unknown, _status: number, _bytes: number, responseTimeMs: number) => latencies.push(responseTimeMs));
  });
}

serveIpc((message) => {
  if (message.cmd !== 'run') throw new Error(`unknown command ${message.cmd}`);
  return run(message as unknown as RunRequest);
});
process.send?.({ ready: true });
