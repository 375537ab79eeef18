import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:http';
import type { Config } from '../shared/config';
import type { Logger } from '../shared/logger';
import { metricsServer, renderPrometheus, type Health, type MetricSample } from '../shared/metrics';
import { closeServer, listen, onShutdownSignal, stopWhenSupervisorGone } from '../shared/process';

// COLLECTOR_RECEIVERS > 1: Node's cluster module forks that many collector processes, which
// share one UDP socket (the primary opens it, `exclusive: false`); the kernel hands each datagram
// to whichever process reads first, so a flush or a GC pause in one leaves the others reading.
// Each aggregates and flushes on its own (the concurrent-collector guarantees hold, see
// docs/reliability.md). The primary holds no data: it serves /metrics and /healthz summed over
// the workers, asked over IPC, and on SIGTERM/SIGINT stops them all and waits for their final
// flushes. Its exit code is 0 only if every worker flushed.

interface Collector {
  receiver: { host: string; port: number };
  stop(): Promise<boolean>;
}

const RECEIVER_INDEX = 'KEYUSAGE_RECEIVER_INDEX';
const ASK_TIMEOUT_MS = 5000;
// Samples that say the same in every worker, or a worst case: the largest, not the sum.
const LARGEST = new Set(
  [
    'recv_buffer_bytes',
    'replay_cache_capacity',
    'last_flush_duration_seconds',
    'last_flush_statements',
    'key_list_keys',
    'key_list_age_seconds',
    // Every receiver folds the one shared log: its backlog is the log's, not a part of it.
    'usage_log_backlog_rows',
    'fold_running_seconds',
    'consecutive_failed_flushes',
    'consecutive_failed_folds',
    'last_fold_duration_seconds',
    'last_fold_keys',
    // The receivers read one socket's kernel count: a sum would count each drop once per receiver.
    'kernel_dropped_datagrams_total',
  ].map((n) => `keyusage_collector_${n}`),
);

export function runReceivers(config: Config, logger: Logger, start: (receiverIndex: number | undefined) => Promise<Collector>): void {
  if (config.collector.receivers === 1) {
    start(undefined).then(
      (collector) =>
        stopWhenSupervisorGone(
          config.supervised,
          onShutdownSignal(logger, () => stopOrThrow(collector)),
        ),
      failedToStart(logger),
    );
  } else if (cluster.isPrimary) {
    runPrimary(config, logger).catch(failedToStart(logger));
  } else {
    const started = workerStop(logger);
    start(Number(process.env[RECEIVER_INDEX])).then(started, failedToStart(logger));
  }
}

async function stopOrThrow(collector: Collector): Promise<void> {
  if (!(await collector.stop())) throw new Error('final flush failed');
}

const failedToStart = (logger: Logger) => (error: Error) => {
  logger.fatal(`collector failed to start: ${error.message}`);
  process.exit(1);
};

// A worker stops once, on a signal of its own (Ctrl-C reaches the whole group) or on the
// primary's word, whichever comes first; the other is then not a reason to exit early. Both are
// heard from the start: the primary's word while the worker was starting was dropped (a worker
// without a 'message' listener drops messages), and the worker then ran on for good. Returns what
// to call once the collector has started: it stops at once if asked meanwhile.
function workerStop(logger: Logger): (collector: Collector) => void {
  let started: Collector | undefined;
  let asked = false;
  let stopping = false;
  const stop = () => {
    asked = true;
    if (started === undefined || stopping) return;
    stopping = true;
    stopOrThrow(started).then(
      () => process.exit(0),
      (error) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop).on('SIGINT', stop);
  process.on('message', (message: { cmd?: string }) => {
    if (message?.cmd === 'stop') stop();
  });
  return (collector) => {
    started = collector;
    process.send?.({ cmd: 'ready', udp: `${collector.receiver.host}:${collector.receiver.port}` });
    if (asked) stop();
  };
}

/** In a worker: answers the primary's requests for this process's metrics and health. */
export function serveSamplesToPrimary(samples: () => MetricSample[], health: () => Health): void {
  process.on('message', (message: { cmd?: string; id?: number }) => {
    if (message?.cmd === 'samples') process.send?.({ cmd: 'samples', id: message.id, samples: samples(), health: health() });
  });
}

async function runPrimary(config: Config, logger: Logger): Promise<void> {
  const workers = Array.from({ length: config.collector.receivers }, (_, i) => cluster.fork({ [RECEIVER_INDEX]: String(i) }));
  let stopping = false;
  // Filled once every receiver is ready; a worker may die before that.
  const served: { metrics?: Server } = {};
  const exits = workers.map((worker) => new Promise<number>((resolve) => worker.once('exit', (code) => resolve(code ?? 1))));
  // A worker that dies on its own takes its pending uses with it; stop the rest and exit non-zero
  // so a supervisor restarts the whole collector.
  for (const worker of workers) {
    // A stop asked before a worker listens for it (it is still loading) is dropped: asked again
    // once the worker says it is ready.
    worker.on('message', (message: { cmd?: string }) => {
      if (message?.cmd === 'ready' && stopping) worker.send({ cmd: 'stop' });
    });
    // A worker's 'error' (a message to it after its channel closed), unheard, is thrown in this
    // process: its end would take, through their channels, the receivers still writing their
    // final flushes. (Reported by a review; the test's scrapes after a death did not show it.)
    worker.on('error', (error) => logger.warn({ receiver: worker.id, err: { message: error.message } }, 'a message to a receiver failed'));
    worker.once('exit', (code) => {
      if (stopping) return;
      logger.error({ receiver: worker.id, code }, 'a receiver exited on its own; stopping the others');
      shutDown(false);
    });
  }
  // From the start: a signal while the receivers start still stops them, as does the launcher's
  // end (the workers are stopped by this process, not by the stdin they share with it).
  const onStopAsked = (why: { signal: NodeJS.Signals } | { reason: string }) => {
    if (stopping) return;
    logger.info({ ...why, receivers: workers.length }, 'shutting down');
    shutDown(true);
  };
  // A second signal exits at once, as one collector process does (shared/process.ts). Only a
  // second: the first, during a stop a receiver's death began, must not cut the others' final flushes.
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (!signalled) {
      signalled = true;
      return onStopAsked({ signal });
    }
    for (const worker of workers) worker.process.kill('SIGKILL');
    process.exit(1);
  };
  process.on('SIGTERM', onSignal).on('SIGINT', onSignal);
  stopWhenSupervisorGone(config.supervised, (reason) => onStopAsked({ reason }));
  const ready = await Promise.all(
    workers.map(
      (worker) => new Promise<{ udp: string }>((resolve) => worker.on('message', (m: { cmd?: string; udp: string }) => m?.cmd === 'ready' && resolve(m))),
    ),
  );
  const ask = askWorkers(workers);
  const metrics = metricsServer({
    exposition: async () => renderPrometheus(sumSamples((await ask()).map((answer) => answer.samples))),
    // A receiver that cannot answer (one has exited, or is stuck) makes the collector unhealthy: 503.
    health: () =>
      ask().then(
        (answers) => ({ healthy: answers.every((answer) => answer.health.healthy), receivers: answers.map((answer) => answer.health) }),
        (error: Error) => ({ healthy: false, error: error.message }),
      ),
    // The primary holds no data: alive while every receiver answers, whatever its health (a
    // receiver whose flushes fail while PostgreSQL is down holds batches a restart would lose).
    alive: () =>
      ask().then(
        () => true,
        () => false,
      ),
  });
  served.metrics = metrics;
  const metricsPort = await listen(metrics, config.collector.metricsHost, config.collector.metricsPort, 'COLLECTOR_METRICS_PORT');
  logger.info({ udp: ready[0].udp, receivers: workers.length, metrics: `${config.collector.metricsHost}:${metricsPort}` }, 'collector listening');

  // `asked`: by a signal, so a clean stop of every worker is a clean exit.
  function shutDown(asked: boolean): void {
    if (stopping) return;
    stopping = true;
    for (const worker of workers) if (worker.isConnected()) worker.send({ cmd: 'stop' });
    void Promise.all(exits)
      .then(async (codes) => {
        // At once: with every receiver gone, a scrape in flight waits for answers that cannot come
        // (ASK_TIMEOUT_MS), and the server's grace added to the receivers' stop budget ran past the
        // launcher's SIGKILL (shared/stopBudget.ts).
        if (served.metrics) await closeServer(served.metrics, 0);
        process.exit(asked && codes.every((code) => code === 0) ? 0 : 1);
      })
      .catch(() => process.exit(1));
  }
}

interface Answer {
  samples: MetricSample[];
  health: Health;
}

function askWorkers(workers: Worker[]): () => Promise<Answer[]> {
  let nextId = 0;
  const askOne = (worker: Worker) =>
    new Promise<Answer>((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        worker.off('message', onMessage);
        reject(new Error(`receiver ${worker.id} did not answer within ${ASK_TIMEOUT_MS} ms`));
      }, ASK_TIMEOUT_MS);
      const onMessage = (message: { cmd?: string; id?: number } & Answer) => {
        if (message?.cmd !== 'samples' || message.id !== id) return;
        clearTimeout(timer);
        worker.off('message', onMessage);
        resolve(message);
      };
      // A receiver that has exited (one died, or stopped before the others) cannot answer: a send
      // to it failed after the fact, as an 'error' event of the worker.
      if (!worker.isConnected()) {
        clearTimeout(timer);
        reject(new Error(`receiver ${worker.id} has exited`));
        return;
      }
      worker.on('message', onMessage);
      worker.send({ cmd: 'samples', id }, (error) => {
        if (error === null) return;
        clearTimeout(timer);
        worker.off('message', onMessage);
        reject(error);
      });
    });
  return () => Promise.all(workers.map(askOne));
}

// Counters and most gauges add up over the workers; LARGEST ones take the largest.
export function sumSamples(perWorker: MetricSample[][]): MetricSample[] {
  const [first, ...rest] = perWorker;
  return first.map((sample, i) => {
    const values = [sample.value, ...rest.map((samples) => samples[i].value)];
    const value = LARGEST.has(sample.name) ? Math.max(...values) : values.reduce((a, b) => a + b, 0);
    return { ...sample, value };
  });
}
