import dgram from 'node:dgram';
import type { Test } from 'tap';
import { startCollector, type CollectorOverrides } from '../../collector/main';
import { loadConfig } from '../../shared/config';
import { within } from '../../shared/within';
import { sleep } from '../../harness/wait';
import { capturingLogger } from './logLines';
import { HOUR_MS } from '../../shared/timeUnits';

const FIRST_FOLD_WAIT_MS = 5_000;

// An in-process collector on 127.0.0.1 with an OS-chosen UDP and metrics port, its log lines
// captured for assertions.
export async function startTestCollector(t: Test, databaseUrl: string, env: Record<string, string> = {}, overrides: CollectorOverrides = {}) {
  const logLines: string[] = [];
  // No quiet wait at stop unless a test asks (test/lifecycle.test.ts does): the suite stops
  // hundreds of collectors, most of them with nothing left to arrive.
  const config = loadConfig({
    NODE_ENV: 'test',
    COLLECTOR_PORT: '0',
    COLLECTOR_METRICS_PORT: '0',
    COLLECTOR_FLUSH_INTERVAL_MS: '100',
    COLLECTOR_STOP_QUIET_MS: '0',
    ...env,
  });
  const logger = capturingLogger(logLines, 'collector-test');
  const collector = await startCollector(config, logger, databaseUrl, overrides);
  // A collector appends, however few its keys, until its first fold (begun at start) empties the
  // log: tests that flush and read the tables at once wait for it. On Citus the tests share one
  // database, and a second collector started while the first one's fold holds an org skips it,
  // and would append. Bounded: a test may hold the log locked with no lock timeout.
  await within(collector.flusher.fold(), FIRST_FOLD_WAIT_MS);
  // Only a cluster worker (receiverIndex set) serves no metrics port of its own.
  const metricsPort = collector.metricsPort ?? NaN;
  let stopped = false;
  const stop = async (deadlineMs?: number) => {
    if (stopped) return true;
    stopped = true;
    return collector.stop(deadlineMs);
  };
  t.teardown(() => stop());
  return { ...collector, metricsPort, stop, logLines, config };
}

export async function sendDatagrams(port: number, datagrams: readonly string[]): Promise<void> {
  const socket = dgram.createSocket('udp4');
  for (const datagram of datagrams) {
    await new Promise<void>((resolve, reject) => socket.send(datagram, port, '127.0.0.1', (error) => (error ? reject(error) : resolve())));
  }
  await new Promise<void>((resolve) => socket.close(() => resolve()));
}

/**
 * A Unix second in the clock hour before this one, for a line's |T: in the past and within the
 * collector's window (an hour), so not taken in the hour's last minute (waits it out).
 */
export async function secondInThePreviousHour(): Promise<number> {
  if (Date.now() % HOUR_MS > HOUR_MS - 60_000) await sleep(HOUR_MS - (Date.now() % HOUR_MS) + 1000);
  const now = Date.now();
  return Math.floor((now - (now % HOUR_MS)) / 1000) - 10;
}
