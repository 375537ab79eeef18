import { loadConfig, type Config } from '../shared/config';
import { createCheckedDb } from '../shared/db';
import { createLogger, redactKeyMaterial, type Logger } from '../shared/logger';
import { metricsServer, renderPrometheus, type MetricSample } from '../shared/metrics';
import { closeServer, listen, onShutdownSignal } from '../shared/process';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { datagramVerifier } from '../shared/datagramSignature';
import { expireIpData } from '../shared/ipRetention';
import { truncateIp } from '../shared/ipTruncation';
import { parsePacket, type UsageSample } from '../shared/usageWire';
import { Aggregator } from './aggregator';
import { EventSweep } from './eventSweep';
import { expireOldEvents } from './eventStore';
import { Flusher } from './flusher';
import { startReceiver } from './receiver';
import { Relay, udpSink } from './relay';
import { createPgUsageStore, type UsageStore } from './usageStore';
import { createWebhookWorker } from './webhookWorker';

// receiver (UDP) → parser (shared/usageWire) → aggregator (per key, in memory) → flusher
// (interval, one transaction per flush) → PostgreSQL. Other StatsD lines → relay (UDP upstream,
// if COLLECTOR_RELAY_TO is set). Self-metrics on a loopback HTTP port.
// Beside it, the webhook worker delivers the outbox that key events fill (docs/webhooks.md).

const HOUR_MS = 3_600_000;

export interface CollectorOverrides {
  store?: UsageStore;
  now?: () => number;
}

export async function startCollector(config: Config, logger: Logger, databaseUrl: string, overrides: CollectorOverrides = {}) {
  const now = overrides.now ?? Date.now;
  // One connection for the flusher, one for upkeep, one for the webhook worker's short statements.
  const db = await createCheckedDb(databaseUrl, { poolMax: 3, connectTimeoutMs: config.database.connectTimeoutMs, applicationName: 'keyusage-collector' }, logger);
  const events = config.collector.events;
  const store = overrides.store ?? createPgUsageStore(db, { events: events.enabled ? events : undefined });
  const sweep = new EventSweep({ db, intervalMs: events.sweepIntervalMs, expiringDays: events.expiringDays, logger, now });
  const aggregator = new Aggregator({ maxKeys: config.collector.aggregatorMaxKeys, timestampWindowMs: config.collector.timestampWindowMs, now });
  const flusher = new Flusher({
    aggregator,
    store,
    intervalMs: config.collector.flushIntervalMs,
    maxRetryKeys: config.collector.retryMaxKeys,
    logger,
    now,
  });
  const ingest = { packets: 0, rejectedPackets: 0, lines: 0, usageLines: 0, otherLines: 0, badLines: 0, usesReceived: 0 };
  const SIGNATURE_WINDOW_MS = 30_000;
  const verify =
    config.collector.signingSecrets.length > 0
      ? datagramVerifier({ secrets: config.collector.signingSecrets, windowMs: SIGNATURE_WINDOW_MS, maxRemembered: config.collector.replayCacheSize, now })
      : undefined;
  // A full replay cache drops genuine datagrams: counted apart so it is not mistaken for forgery.
  const replayCache = { capacity: config.collector.replayCacheSize, overflows: 0, entries: () => verify?.size() ?? 0 };
  const warn = rateLimitedWarn(logger, 10_000, now);
  const relay = await startRelay(config, warn);
  const relayLine = relay && ((line: string) => relay.relay(line));
  // One clock read per datagram, not per line: the lines of a datagram arrived together.
  let packetTime = now();
  // IP_TRUNCATE: cut before aggregation, so a full address is never held, merged or written.
  const { truncateIps, ipRetentionDays } = config.privacy;
  const addSample = (sample: UsageSample) => {
    ingest.usesReceived += sample.count;
    aggregator.add(truncateIps ? { ...sample, ip: truncateIp(sample.ip) } : sample, packetTime);
  };
  let overflowLogged = 0;

  const onPacket = (received: string) => {
    ingest.packets += 1;
    let packet = received;
    if (verify) {
      const verdict = verify(received);
      if (!verdict.ok) {
        ingest.rejectedPackets += 1;
        const full = verdict.reason === 'replay_cache_full';
        if (full) replayCache.overflows += 1;
        const message = full ? 'replay cache full: a signed datagram was dropped; raise COLLECTOR_REPLAY_CACHE_SIZE' : 'dropped a datagram without a valid signature';
        warn(`rejected_${verdict.reason}`, { reason: verdict.reason, rejectedPackets: ingest.rejectedPackets }, message);
        return;
      }
      packet = verdict.body;
    }
    packetTime = now();
    const result = parsePacket(packet, addSample, relayLine);
    ingest.lines += result.lines;
    ingest.usageLines += result.usage;
    ingest.otherLines += result.other;
    ingest.badLines += result.invalid;
    if (result.invalid > 0) {
      warn('bad_line', { badLines: ingest.badLines, reason: redactKeyMaterial(result.firstError ?? '') }, 'dropped malformed StatsD lines');
    }
    if (aggregator.overflowUses > overflowLogged) {
      overflowLogged = aggregator.overflowUses;
      warn('overflow', { overflowUses: aggregator.overflowUses, maxPendingKeys: config.collector.aggregatorMaxKeys }, 'pending-key cap reached; uses of new keys dropped');
    }
  };

  const receiver = await startReceiver({
    host: config.collector.host,
    port: config.collector.port,
    recvBufferBytes: config.collector.recvBufferBytes,
    onPacket,
    logger,
  }).catch(async (error) => {
    await relay?.stop();
    throw error;
  });
  flusher.start();
  const webhooks = createWebhookWorker({ db, peppers: [config.api.keyPepper, ...config.api.previousKeyPeppers], config: config.webhooks, logger, now });
  webhooks.start();
  if (events.enabled) sweep.start();
  const retention = setInterval(() => {
    Promise.all([store.expireOldRows(config.collector.retentionDays), expireOldEvents(db, new Date(now()), events.retentionDays)]).catch((error) =>
      logger.warn({ err: { message: error.message } }, 'retention cleanup failed'),
    );
    expireIpData(db, ipRetentionDays).catch((error) => logger.warn({ err: { message: error.message } }, 'IP retention cleanup failed'));
  }, HOUR_MS).unref();

  const samples = (): MetricSample[] => {
    const f = flusher.stats;
    const counter = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_collector_${name}`, help, type: 'counter', value });
    const gauge = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_collector_${name}`, help, type: 'gauge', value });
    return [
      counter('packets_total', 'UDP datagrams received', ingest.packets),
      counter('rejected_packets_total', 'Datagrams dropped for a missing, bad, stale or replayed signature, or a full replay cache', ingest.rejectedPackets),
      counter('replay_cache_overflow_total', 'Signed datagrams dropped because the replay cache was full (COLLECTOR_REPLAY_CACHE_SIZE)', replayCache.overflows),
      gauge('replay_cache_entries', 'Nonces held by the replay cache (expired ones leave on the next datagram)', replayCache.entries()),
      gauge('replay_cache_capacity', 'COLLECTOR_REPLAY_CACHE_SIZE', replayCache.capacity),
      counter('lines_total', 'StatsD lines received', ingest.lines),
      counter('usage_lines_total', 'API key usage lines accepted', ingest.usageLines),
      counter('other_lines_total', 'Valid StatsD lines for other metrics (relayed if COLLECTOR_RELAY_TO is set, else dropped)', ingest.otherLines),
      counter('relay_sent_lines_total', 'Other lines sent to COLLECTOR_RELAY_TO', relay?.stats.sentLines ?? 0),
      counter('relay_dropped_lines_total', 'Other lines that failed to send to COLLECTOR_RELAY_TO, or met too many datagrams in flight', relay?.stats.droppedLines ?? 0),
      counter('bad_lines_total', 'Malformed lines dropped', ingest.badLines),
      counter('uses_received_total', 'API key uses received', ingest.usesReceived),
      counter('out_of_window_timestamps_total', 'Usage lines whose |T timestamp lay outside COLLECTOR_TIMESTAMP_WINDOW_SECONDS; counted at receipt time', aggregator.outOfWindowSamples),
      counter('uses_persisted_total', 'API key uses written to PostgreSQL', f.usesPersisted),
      counter('overflow_uses_total', 'Uses dropped because the pending-key cap was reached', aggregator.overflowUses),
      counter('unknown_keys_total', 'Keys dropped at flush because they do not exist in the named org', f.unknownKeys),
      counter('unknown_uses_total', 'Uses dropped with those keys', f.unknownUses),
      counter('quarantined_keys_total', 'Keys whose rows PostgreSQL refused with a data error; their uses were set aside', f.quarantinedKeys),
      counter('quarantined_uses_total', 'Uses set aside with those keys', f.quarantinedUses),
      counter('flushes_total', 'Successful flushes', f.flushes),
      counter('failed_flushes_total', 'Failed flush attempts (retried)', f.failedFlushes),
      counter('duplicate_batches_skipped_total', 'Retried batches found already committed', f.duplicateBatchesSkipped),
      counter('events_recorded_total', 'Key events recorded, by flushes and sweeps', f.eventsRecorded + sweep.stats.eventsRecorded),
      counter('event_sweeps_total', 'Sweeps for dormant and expiring keys', sweep.stats.sweeps),
      counter('failed_event_sweeps_total', 'Failed sweeps (retried at the next interval)', sweep.stats.failedSweeps),
      gauge('last_flush_duration_seconds', 'Duration of the last successful flush', f.lastFlushDurationMs / 1000),
      gauge('last_flush_keys', 'Keys written by the last successful flush', f.lastFlushKeys),
      gauge('last_flush_statements', 'SQL statements in the last successful flush', f.lastFlushStatements),
      gauge('pending_keys', 'Keys waiting to be flushed', aggregator.pendingKeys + flusher.pendingKeys),
      gauge('recv_buffer_bytes', 'UDP receive buffer granted by the kernel', receiver.recvBufferBytes),
      counter('webhook_attempts_total', 'Webhook delivery attempts', webhooks.stats.attempts),
      counter('webhook_failed_attempts_total', 'Webhook attempts that did not get a 2xx', webhooks.stats.failedAttempts),
      counter('webhook_deliveries_succeeded_total', 'Webhook deliveries acknowledged with a 2xx', webhooks.stats.delivered),
      counter('webhook_deliveries_failed_total', 'Webhook deliveries given up after their last attempt', webhooks.stats.gaveUp),
    ];
  };
  const metrics = metricsServer({
    exposition: () => renderPrometheus(samples()),
    health: () => ({
      healthy: flusher.stats.consecutiveFailures < 3,
      consecutiveFailedFlushes: flusher.stats.consecutiveFailures,
      pendingKeys: aggregator.pendingKeys + flusher.pendingKeys,
      // Visible, not unhealthy: a restart would empty the cache and reopen the replay window.
      replayCache: { entries: replayCache.entries(), capacity: replayCache.capacity, overflows: replayCache.overflows },
    }),
  });
  let metricsPort: number;
  try {
    metricsPort = await listen(metrics, config.collector.metricsHost, config.collector.metricsPort, 'COLLECTOR_METRICS_PORT');
  } catch (error) {
    await receiver.close();
    await sweep.stop();
    await webhooks.stop();
    await relay?.stop();
    await db.destroy();
    throw error;
  }
  logger.info(
    { udp: `${receiver.host}:${receiver.port}`, recvBufferBytes: receiver.recvBufferBytes, metrics: `${config.collector.metricsHost}:${metricsPort}`, flushIntervalMs: config.collector.flushIntervalMs },
    'collector listening',
  );

  // Mirror of start: stop receiving, write everything received, then release the pool.
  const stop = async (): Promise<boolean> => {
    await receiver.close();
    await relay?.stop();
    clearInterval(retention);
    await sweep.stop();
    const flushed = await flusher.stop();
    if (!flushed) {
      logger.error({ pendingUses: flusher.pendingUses, pendingKeys: flusher.pendingKeys + aggregator.pendingKeys }, 'final flush failed; these uses are lost');
    }
    // Sends in flight are recorded; anything not yet sent stays in the outbox for the next start.
    await webhooks.stop();
    await closeServer(metrics);
    await db.destroy();
    return flushed;
  };
  return { receiver, metricsPort, stop, samples, flusher, aggregator, ingest, db, webhooks, sweep, relay };
}

// Undefined without COLLECTOR_RELAY_TO: other lines are then only counted.
async function startRelay(config: Config, warn: ReturnType<typeof rateLimitedWarn>): Promise<Relay | undefined> {
  const target = config.collector.relayTo;
  if (target === undefined) return undefined;
  const sink = await udpSink(target.host, target.port).catch((error: Error) => {
    throw new Error(`COLLECTOR_RELAY_TO: cannot reach ${target.host}:${target.port}: ${error.message}`);
  });
  const relay = new Relay({
    sink,
    onError: (error, stats) => warn('relay_error', { err: { message: error.message }, droppedLines: stats.droppedLines }, 'could not relay StatsD lines to COLLECTOR_RELAY_TO'),
  });
  relay.start();
  return relay;
}

if (require.main === module) {
  const config = loadConfig();
  const logger = createLogger({ level: config.logLevel, name: 'collector' });
  if (!config.database.url) {
    logger.fatal('DATABASE_URL is not set: run `npm start` for the embedded database, or set DATABASE_URL');
    process.exit(1);
  }
  startCollector(config, logger, config.database.url).then(
    (collector) =>
      onShutdownSignal(logger, async () => {
        if (!(await collector.stop())) throw new Error('final flush failed');
      }),
    (error) => {
      logger.fatal(`collector failed to start: ${error.message}`);
      process.exit(1);
    },
  );
}

