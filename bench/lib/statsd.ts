import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freeTcpPort, freeUdpPort } from '../../scripts/lib/freePort';
import { spawnProcess, type Child } from '../../harness/processes';
import { waitFor } from '../../harness/wait';
import { grantedRecvBuffer } from '../../collector/receiver';

// Etsy's statsd daemon (npm `statsd`, pinned by the lockfile), run as shipped: `node stats.js
// <config>`. Bound to 127.0.0.1 with no backends and a one-hour flush interval, so its
// `statsd.metrics_received` counter (read over the management port) counts every line it parsed
// during a run.

export interface StatsdProcess {
  child: Child;
  udpPort: number;
  mgmtPort: number;
  /** What the kernel granted (SO_RCVBUF as reported, halved on Linux as the collector's). */
  recvBufferBytes: number;
  received(): Promise<{ lines: number; datagrams: number; badLines: number }>;
  cleanup(): void;
}

export function statsdScript(): string {
  return path.join(path.dirname(require.resolve('statsd/package.json')), 'stats.js');
}

export function statsdVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(path.dirname(statsdScript()), 'package.json'), 'utf8')) as { version: string }).version;
}

const COUNTERS_TIMEOUT_MS = 120_000;

export function mgmtCommand(port: number, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`statsd management port: no answer to "${command}" within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${command}\n`));
    socket.on('data', (chunk: string) => {
      text += chunk;
      // endsWith, not a regex anchored at the end: a regex scans the whole text at every chunk,
      // and the counters of a 100 k-key stream come to megabytes in hundreds of chunks.
      if (text.endsWith('END\n\n') || /^health: \w+\n$/.test(text)) {
        clearTimeout(timer);
        socket.end();
        resolve(text);
      }
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Statsd as shipped, its UDP socket asking for `recvBufferBytes` (bench/lib/statsdRecvBuffer.cjs). */
export async function startStatsd(recvBufferBytes: number): Promise<StatsdProcess> {
  const udpPort = await freeUdpPort();
  const mgmtPort = await freeTcpPort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-bench-statsd-'));
  const configFile = path.join(dir, 'config.js');
  fs.writeFileSync(
    configFile,
    `{ address: "127.0.0.1", port: ${udpPort}, mgmt_address: "127.0.0.1", mgmt_port: ${mgmtPort}, backends: [], flushInterval: 3600000 }\n`,
  );
  const child = spawnProcess('statsd', ['--require', path.join(__dirname, 'statsdRecvBuffer.cjs'), statsdScript(), configFile], {
    env: { ...process.env, STATSD_RECV_BUFFER_BYTES: String(recvBufferBytes) },
    keepOutput: true,
  });
  await waitFor(
    'statsd to answer on its management port',
    () =>
      mgmtCommand(mgmtPort, 'health', 1000).then(
        (text) => (text.includes('up') ? true : undefined),
        () => undefined,
      ),
    20_000,
    50,
  );
  const granted = await waitFor(
    'statsd to report its receive buffer',
    () => child.lines.map((line) => /recv buffer granted (\d+)/.exec(line)?.[1]).find(Boolean),
    5_000,
    20,
  );
  return {
    child,
    udpPort,
    mgmtPort,
    recvBufferBytes: grantedRecvBuffer(Number(granted)),
    async received() {
      // statsd lists every counter it holds: one per key and address of the stream, in seconds at 100 k keys.
      const text = await mgmtCommand(mgmtPort, 'counters', COUNTERS_TIMEOUT_MS);
      const read = (name: string) => Number(new RegExp(`'statsd\\.${name}': (\\d+)`).exec(text)?.[1] ?? NaN);
      return { lines: read('metrics_received'), datagrams: read('packets_received'), badLines: read('bad_lines_seen') };
    },
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
