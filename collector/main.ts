import { randomInt } from 'node:crypto';
import { hostname } from 'node:os';
import type { Knex } from 'knex';
import { loadConfig, type Config } from '../shared/config';
import { createCheckedDb, poolState, warnIfServerAllowsFewer, warnIfServerOlder } from '../shared/db';
import { createLogger, type Logger } from '../shared/logger';
import { metricsServer, renderPrometheus } from '../shared/metrics';
import { closeServer, listen, setupOrExit } from '../shared/process';
import { rateLimitedWarn, type RateLimitedWarn } from '../shared/rateLimitedLog';
import { steadyNow } from '../shared/steadyClock';
import { COLLECTOR_CLOSE_MS } from '../shared/stopBudget';
import { within } from '../shared/within';
import { Aggregator } from './aggregator';
import { collectorSamples } from './collectorMetrics';
import { Flusher, FLUSH_STOP_DEADLINE_MS } from './flusher';
import { startFoldThread } from './foldThread';
import { createPacketHandler } from './packetHandler';
import { startReceiver, untilQuiet } from './receiver';
import { runReceivers, serveSamplesToPrimary } from './receivers';
import { Relay, udpSink } from './relay';
import { KeyList } from './keyList';
import { createKeyListSync } from './keyListSync';
import { KnownKeys } from './knownKeys';
import { createUsageStore } from './usageLog';
import type { UsageStore } from './usageStore';
import { createUpkeep } from './upkeep';
import { createListeningSpan, spanStore } from './listeningSpan';

// receiver (collector/receiver.ts, UDP) → parser (collector/packetHandler.ts, shared/usageDatagram)
// → aggregator (per key, in memory) → flusher (interval, one transaction per flush) → PostgreSQL.
// Other StatsD lines → relay (UDP upstream, if COLLECTOR_RELAY_TO is set). Self-metrics on a
// loopback HTTP port. Beside it, upkeep (collector/upkeep.ts): the webhook worker, the event
// sweep and retention. With COLLECTOR_RECEIVERS > 1 (collector/receivers.ts) each of several
// processes runs this whole pipeline on one shared socket; the first also runs upkeep, and the
// primary serves the summed metrics.

export interface CollectorOverrides {
  store?: UsageStore;
  now?: () => number;
  /** Set in a cluster worker: the socket is shared, metrics go to the primary, upkeep only in worker 0. */
  receiverIndex?: number;
  /** The oldest server_version_num it runs on: tests stand a higher one in for an older server. */
  minServerVersionNum?: number;
  /** How often its listening span is moved forward (LISTENING_HEARTBEAT_MS unless a test shortens it). */
  listeningHeartbeatMs?: number;
}

export async function startCollector(config: Config, logger: Logger, databaseUrl: string, overrides: CollectorOverrides = {}) {
  const now = overrides.now ?? Date.now;
  const inCluster = overrides.receiverIndex !== undefined;
  // What concerns every receiver of a cluster (upkeep, start-up warnings) is done by the first.
  const speaksForAll = !inCluster || overrides.receiverIndex === 0;
  const { receivers, flushParallelism } = config.collector;
  // One connection for each of the flush's parts (one for a flush that is not split), one for the
  // trim that runs beside the next flush, one for upkeep, one for the webhook worker's short
  // statements: a part that waited past the acquire timeout would fail the whole flush.
  const poolMax = flushParallelism + 3;
  const { connectTimeoutMs, replyTimeoutMs, idleInTransactionTimeoutMs } = config.database;
  const db = await createCheckedDb(
    databaseUrl,
    { poolMax, connectTimeoutMs, replyTimeoutMs, idleInTransactionTimeoutMs, applicationName: 'keyusage-collector' },
    logger,
  );
  // COLLECTOR_FOLD_THREAD: the fold thread's pool, one connection per part of a fold.
  const foldPool = config.collector.foldThread && overrides.store === undefined ? flushParallelism : 0;
  if (speaksForAll) {
    const threadPart = foldPool > 0 ? ' + COLLECTOR_FLUSH_PARALLELISM for the fold thread' : '';
    const from = `COLLECTOR_RECEIVERS (${receivers}) × (COLLECTOR_FLUSH_PARALLELISM (${flushParallelism}) + 3${threadPart})`;
    await warnIfServerAllowsFewer(db, { connections: receivers * (poolMax + foldPool), from }, logger);
    await warnIfServerOlder(db, logger, overrides.minServerVersionNum);
  }
  const events = config.collector.events;
  const storeOptions = {
    events: events.enabled ? events : undefined,
    parallelism: flushParallelism,
    logMinKeys: config.collector.usageLogMinKeys,
    lockTimeoutMs: config.collector.lockTimeoutMs,
  };
  // Both on their own steady clock: `now` is the wall clock, which may step back.
  const warn = rateLimitedWarn(logger, 10_000);
  const relay = await startRelay(config, warn).catch(async (error) => {
    // As every later failure of the start: the pool's idle connection (the start's check) would
    // hold a caller's process up to the pool's idle timeout.
    await db.destroy();
    throw error;
  });
  const foldThread =
    foldPool > 0
      ? await startFoldThread({ databaseUrl, connectTimeoutMs, replyTimeoutMs, idleInTransactionTimeoutMs, store: storeOptions }).catch(async (error) => {
          await relay?.stop();
          await db.destroy();
          throw error;
        })
      : undefined;
  const keyList = createKeyList(config, db, warn, now);
  const { knownKeysTtlMs } = config.collector;
  const known = knownKeysTtlMs > 0 ? new KnownKeys(knownKeysTtlMs, now, () => keyList?.sync.vouching()) : undefined;
  const usageStore = createUsageStore(db, storeOptions, known);
  const store = overrides.store ?? (foldThread ? { ...usageStore, fold: () => foldThread.fold() } : usageStore);
  const aggregator = new Aggregator({
    maxKeys: config.collector.aggregatorMaxKeys,
    timestampWindowMs: config.collector.timestampWindowMs,
    listedKeys: keyList?.list,
    now,
  });
  const flusher = new Flusher({ aggregator, store, intervalMs: config.collector.flushIntervalMs, maxRetryKeys: config.collector.retryMaxKeys, logger });
  const { onPacket, ingest, replayCache } = createPacketHandler({ config, aggregator, relay, warn, now });
  const { host, port, recvBufferBytes } = config.collector;
  const receiver = await startReceiver({ host, port, recvBufferBytes, shared: inCluster, reportCappedBuffer: speaksForAll, onPacket, logger }).catch(
    async (error) => {
      await Promise.all([relay?.stop(), foldThread?.stop(COLLECTOR_CLOSE_MS)]);
      // Its idle connection (the start's check) would hold a caller's process up to the pool's idle timeout.
      await db.destroy();
      throw error;
    },
  );
  const upkeep = createUpkeep({ db, store, config, logger, now });
  if (speaksForAll) upkeep.start();
  const pool = poolState(db);
  const samples = () => collectorSamples({ ingest, pool, replayCache, aggregator, flusher, relay, upkeep, receiver, keyList });
  const health = () => ({
    // With the usage log, flushes (appends) go on succeeding while every fold fails: the usage
    // tables, and the events raised from them, fall behind with /healthz green.
    healthy: flusher.stats.consecutiveFailures < 3 && flusher.stats.consecutiveFailedFolds < 3,
    consecutiveFailedFlushes: flusher.stats.consecutiveFailures,
    consecutiveFailedFolds: flusher.stats.consecutiveFailedFolds,
    pendingKeys: aggregator.pendingKeys + flusher.pendingKeys,
    // Visible, not unhealthy: a restart would empty the cache and reopen the replay window.
    replayCache: { entries: replayCache.entries(), capacity: replayCache.capacity, overflows: replayCache.overflows },
  });
  let metrics: ReturnType<typeof metricsServer> | undefined;
  let metricsPort: number | undefined;
  if (inCluster) {
    serveSamplesToPrimary(samples, health);
  } else {
    metrics = metricsServer({ exposition: () => renderPrometheus(samples()), health });
    metricsPort = await listen(metrics, config.collector.metricsHost, config.collector.metricsPort, 'COLLECTOR_METRICS_PORT').catch(async (error) => {
      await Promise.all([receiver.close(), upkeep.stop(), relay?.stop(), foldThread?.stop(COLLECTOR_CLOSE_MS)]);
      await db.destroy();
      throw error;
    });
  }
  const listening = createListeningSpan({
    store: spanStore(db),
    collector: `${hostname()}:${receiver.port}${inCluster ? `/${overrides.receiverIndex}` : ''}`,
    now,
    writtenSoFar: () => flusher.writtenSoFar(),
    // A key the key list lacks is, as far as this collector knows, no key: its uses lose nothing.
    // A signed datagram refused for want of room in the replay cache was genuine (docs/security.md).
    losses: () => aggregator.overflowUses - aggregator.unlistedOverflowUses + replayCache.overflows,
    warn,
    heartbeatMs: overrides.listeningHeartbeatMs,
  });
  // Last, once nothing can fail: the flusher's interval and the fold it begins at start would
  // otherwise outlive a failed start (a received use waits in the aggregator until then).
  keyList?.sync.start();
  flusher.start();
  // Not awaited: a database slow to take the row does not hold the start (the next beat retries).
  void listening.start();
  logger.info(
    {
      udp: `${receiver.host}:${receiver.port}`,
      recvBufferBytes: receiver.recvBufferBytes,
      metrics: metricsPort && `${config.collector.metricsHost}:${metricsPort}`,
      flushIntervalMs: config.collector.flushIntervalMs,
      usageLogMinKeys: config.collector.usageLogMinKeys,
    },
    // In a cluster the primary says 'collector listening' once every receiver is.
    inCluster ? 'receiver listening' : 'collector listening',
  );

  // Mirror of start: stop receiving once the socket is quiet (COLLECTOR_STOP_QUIET_MS), write
  // everything received (within `deadlineMs`, the flusher's default unless given), then release
  // the pools within COLLECTOR_CLOSE_MS: by default the whole stop keeps to its budget, under the
  // launcher's SIGKILL (shared/stopBudget.ts). A cluster's receivers each run this stop.
  const stop = async (deadlineMs = FLUSH_STOP_DEADLINE_MS): Promise<boolean> => {
    keyList?.sync.stop();
    // The quiet wait is within the flush's deadline, not added to it.
    const flushBy = steadyNow() + deadlineMs;
    const closeBy = flushBy + COLLECTOR_CLOSE_MS;
    const left = (until: number) => Math.max(0, until - steadyNow());
    // Upkeep stops beside the flush and within the same deadline: a webhook send in flight may
    // last WEBHOOK_TIMEOUT_MS (up to 30 s), a retention pass longer, and awaited after the flush
    // they ran past the supervisor's SIGKILL. What is cut short is done again: a claimed delivery
    // when its lease ends, retention within the hour.
    const upkeepStopped = upkeep.stop().then(() => true);
    await untilQuiet(() => ingest.packets, config.collector.stopQuietMs);
    const closedAt = now();
    await receiver.close();
    await relay?.stop();
    const flushed = await flusher.stop(left(flushBy));
    // Before the pool closes; within the flush's deadline, as what it vouches for.
    await within(listening.stop(closedAt, flushed), left(flushBy));
    const upkeepDone = (await within(upkeepStopped, left(flushBy))) ?? false;
    if (metrics) await closeServer(metrics, left(closeBy));
    // destroy() waits for every connection in use: a write or fold past the flusher's deadline,
    // waiting on a lock, holds one up to COLLECTOR_LOCK_TIMEOUT_MS, and the fold thread's fold
    // its thread. The process need not: the thread is terminated, and at the exit the
    // transactions roll back (a fold's rows stay in the log for the next fold).
    const [closed, threadClosed] = await Promise.all([
      within(
        db.destroy().then(() => true),
        left(closeBy),
      ),
      foldThread?.stop(left(closeBy)) ?? true,
    ]);
    if (closed === undefined || !threadClosed || !upkeepDone) {
      const running = { foldRunningMs: flusher.foldRunningMs, keyListReading: keyList?.sync.reading ?? false, upkeepRunning: !upkeepDone };
      logger.warn(running, 'a write, fold, key-list read or upkeep task (a webhook send, retention) is still running at stop; the process exits without it');
    }
    // Counted after that wait: a write the flusher stopped waiting for may have committed since.
    const pendingKeys = flusher.pendingKeys + aggregator.pendingKeys;
    if (flushed || pendingKeys === 0) return true;
    logger.error({ pendingUses: flusher.pendingUses, pendingKeys }, 'final flush failed; these uses are lost');
    return false;
  };
  return { receiver, metricsPort, stop, samples, flusher, aggregator, ingest, db, webhooks: upkeep.webhooks, sweep: upkeep.sweep, relay };
}

// Undefined with COLLECTOR_KEY_LIST_REFRESH_MS=0. Its sync reads nothing before start().
function createKeyList(config: Config, db: Knex, warn: RateLimitedWarn, now: () => number) {
  const refreshMs = config.collector.keyListRefreshMs;
  if (refreshMs === 0) return undefined;
  const list = new KeyList(randomInt(2 ** 31));
  return { list, sync: createKeyListSync({ db, list, refreshMs, warn, now }) };
}

// Undefined without COLLECTOR_RELAY_TO: other lines are then only counted.
async function startRelay(config: Config, warn: RateLimitedWarn): Promise<Relay | undefined> {
  const target = config.collector.relayTo;
  if (target === undefined) return undefined;
  const sink = await udpSink(target.host, target.port).catch((error: Error) => {
    throw new Error(`COLLECTOR_RELAY_TO: cannot reach ${target.host}:${target.port}: ${error.message}`);
  });
  const relay = new Relay({
    sink,
    onError: (error, stats) =>
      warn('relay_error', { err: { message: error.message }, droppedLines: stats.droppedLines }, 'could not relay StatsD lines to COLLECTOR_RELAY_TO'),
  });
  relay.start();
  return relay;
}

if (require.main === module) {
  const config = setupOrExit(() => loadConfig());
  const logger = createLogger({ level: config.logLevel, name: 'collector' });
  if (!config.database.url) {
    logger.fatal('DATABASE_URL is not set: run `npm start` for the embedded database, or set DATABASE_URL');
    process.exit(1);
  }
  const databaseUrl = config.database.url;
  runReceivers(config, logger, (receiverIndex) => startCollector(config, logger, databaseUrl, { receiverIndex }));
}
