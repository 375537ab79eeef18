import { SIGNED_AHEAD_NOTICE_MS } from '../shared/datagramSignature';
import type { PoolState } from '../shared/db';
import type { MetricSample } from '../shared/metrics';
import type { Aggregator } from './aggregator';
import type { Flusher } from './flusher';
import type { KeyList } from './keyList';
import type { KeyListSync } from './keyListSync';
import type { IngestCounters, ReplayCacheState } from './packetHandler';
import type { Receiver } from './receiver';
import type { Relay } from './relay';
import type { Upkeep } from './upkeep';
import { BACKLOG_COUNT_CAP } from './webhookStore';

// What the collector's /metrics reports, read from the stages' own counters at scrape time.

export interface CollectorParts {
  ingest: IngestCounters;
  pool: PoolState;
  replayCache: ReplayCacheState;
  aggregator: Aggregator;
  flusher: Flusher;
  relay: Relay | undefined;
  upkeep: Upkeep;
  receiver: Pick<Receiver, 'recvBufferBytes' | 'kernelDrops'>;
  keyList?: { list: KeyList; sync: KeyListSync };
}

const counter = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_collector_${name}`, help, type: 'counter', value });
const gauge = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_collector_${name}`, help, type: 'gauge', value });

export function collectorSamples(parts: CollectorParts): MetricSample[] {
  const { ingest, replayCache, aggregator, flusher, relay, upkeep } = parts;
  const f = flusher.stats;
  const sweep = upkeep.sweep.stats;
  const webhooks = upkeep.webhooks.stats;
  return [
    counter('packets_total', 'UDP datagrams received', ingest.packets),
    counter(
      'rejected_packets_total',
      'Datagrams dropped for a missing, bad, stale or replayed signature, a full replay cache, or a size no signed datagram has',
      ingest.rejectedPackets,
    ),
    counter('replay_cache_overflow_total', 'Signed datagrams dropped because the replay cache was full (COLLECTOR_REPLAY_CACHE_SIZE)', replayCache.overflows),
    gauge('replay_cache_entries', 'Nonces held by the replay cache (expired ones leave on the next datagram)', replayCache.entries()),
    gauge('replay_cache_capacity', 'COLLECTOR_REPLAY_CACHE_SIZE', replayCache.capacity),
    counter(
      'signed_ahead_packets_total',
      `Signed datagrams accepted whose signature time was more than ${SIGNED_AHEAD_NOTICE_MS / 1000} s ahead of the collector's clock: an API's clock ahead (check NTP), for which lead a restart lets captured datagrams be replayed`,
      replayCache.signedAhead(),
    ),
    counter('lines_total', 'StatsD lines received', ingest.lines),
    counter('usage_lines_total', 'API key usage lines accepted', ingest.usageLines),
    counter('other_lines_total', 'Valid StatsD lines for other metrics (relayed if COLLECTOR_RELAY_TO is set, else dropped)', ingest.otherLines),
    counter('relay_sent_lines_total', 'Other lines sent to COLLECTOR_RELAY_TO', relay?.stats.sentLines ?? 0),
    counter(
      'relay_dropped_lines_total',
      'Other lines that failed to send to COLLECTOR_RELAY_TO, or met too many datagrams in flight',
      relay?.stats.droppedLines ?? 0,
    ),
    counter(
      'unchecked_signature_lines_total',
      'Signature lines (keyusage.sig) dropped unchecked, never relayed: the API signs datagrams and this collector has no USAGE_SIGNING_SECRET',
      ingest.uncheckedSignatureLines,
    ),
    // The lines the aggregator refused for ids that are not UUIDs are bad lines the parser missed,
    // not uses received.
    counter('bad_lines_total', 'Malformed lines dropped', ingest.badLines + aggregator.malformedSamples),
    counter('uses_received_total', 'API key uses received', ingest.usesReceived - aggregator.malformedUses),
    counter(
      'out_of_window_timestamps_total',
      'Usage lines whose |T timestamp lay outside COLLECTOR_TIMESTAMP_WINDOW_SECONDS; counted at receipt time',
      aggregator.outOfWindowSamples,
    ),
    counter('uses_persisted_total', 'API key uses written to PostgreSQL (to the usage log, with COLLECTOR_USAGE_LOG)', f.usesPersisted),
    counter('overflow_uses_total', 'Uses dropped because the pending-key cap was reached', aggregator.overflowUses),
    counter(
      'overflow_unlisted_uses_total',
      'Of overflow_uses_total, uses of keys the key list lacks, refused because such keys held half the cap (COLLECTOR_KEY_LIST_REFRESH_MS)',
      aggregator.unlistedOverflowUses,
    ),
    counter(
      'overflow_crowding_uses_total',
      "Of overflow_uses_total, uses of new keys refused in the cap's last twentieth, kept for orgs holding less than a twentieth of it",
      aggregator.crowdingOverflowUses,
    ),
    ...keyListSamples(parts.keyList),
    counter('unknown_keys_total', 'Keys dropped at flush because they do not exist in the named org', f.unknownKeys),
    counter('unknown_uses_total', 'Uses dropped with those keys', f.unknownUses),
    counter(
      'unknown_keys_at_fold_total',
      'Keys a fold of the usage log dropped because they were deleted after their append (COLLECTOR_USAGE_LOG)',
      f.unknownKeysAtFold,
    ),
    counter('unknown_uses_at_fold_total', 'Uses dropped with those keys (counted in uses_persisted_total at their append)', f.unknownUsesAtFold),
    counter(
      'quarantined_keys_total',
      'Keys whose rows PostgreSQL refused with a data error, or whose usage log row a fold could not decode; set aside in api_key_usage_set_aside (not a key deleted meanwhile)',
      f.quarantinedKeys,
    ),
    counter('quarantined_uses_total', 'Uses set aside with those keys', f.quarantinedUses),
    counter(
      'quarantined_uses_at_fold_total',
      'Of quarantined_uses_total, the uses folds of the usage log set aside (counted in uses_persisted_total at their append)',
      f.quarantinedUsesAtFold,
    ),
    counter(
      'usage_log_unreadable_rows_total',
      'Usage log rows folds could not decode (another collector version?), moved to api_key_usage_set_aside until a requeue',
      f.unreadableLogRows,
    ),
    counter('flushes_total', 'Successful flushes', f.flushes),
    counter(
      'appended_flushes_total',
      'Of those, flushes that appended to the usage log (COLLECTOR_USAGE_LOG) instead of writing the usage tables',
      f.appendedFlushes,
    ),
    counter('uses_folded_total', 'API key uses the folds of the usage log applied to the usage tables (COLLECTOR_USAGE_LOG)', f.usesFolded),
    counter('folds_total', 'Folds of the usage log that applied rows', f.folds),
    counter('failed_folds_total', 'Failed folds of the usage log (their rows stay in the log and are folded again)', f.failedFolds),
    gauge('last_fold_duration_seconds', 'Duration of the last fold of the usage log that applied rows', f.lastFoldDurationMs / 1000),
    gauge('last_fold_keys', 'Keys the last fold of the usage log applied', f.lastFoldKeys),
    gauge(
      'fold_running_seconds',
      'How long the fold of the usage log in progress has run (0: none); one that keeps growing has hung',
      flusher.foldRunningMs / 1000,
    ),
    gauge('db_pool_used_connections', "Connections of the collector's pool in use", parts.pool.used()),
    gauge('db_pool_pending_acquires', "Queries waiting for a connection of the collector's pool", parts.pool.pendingAcquires()),
    gauge(
      'usage_log_backlog_rows',
      'Rows the last fold found in the usage log and left for a later one; while above 0, appends wait (until 90 % of the pending-key cap, or 30 s)',
      f.logBacklogRows,
    ),
    counter(
      'appends_held_back_total',
      "Intervals whose flush waited for the usage log's folds (a backlog, or a fold running after an append: also in normal running); the uses wait in memory",
      f.appendsHeldBack,
    ),
    counter('failed_flushes_total', 'Failed flush attempts (retried)', f.failedFlushes),
    // A fold that finds the log empty counts in no counter, so "failed folds rose and folds_total
    // did not" paged for 10 minutes after one harmless failure: the folds' alert reads the streak.
    gauge('consecutive_failed_flushes', 'Flush attempts failed since the last successful one (0: the last succeeded)', f.consecutiveFailures),
    gauge(
      'consecutive_failed_folds',
      'Folds of the usage log failed since the last successful one, empty ones included (0: the last succeeded)',
      f.consecutiveFailedFolds,
    ),
    counter('duplicate_batches_skipped_total', 'Retried batches found already committed', f.duplicateBatchesSkipped),
    counter('events_recorded_total', 'Key events recorded, by flushes and sweeps', f.eventsRecorded + sweep.eventsRecorded),
    counter('event_sweeps_total', 'Sweeps for dormant and expiring keys', sweep.sweeps),
    counter('failed_event_sweeps_total', 'Failed sweeps (retried at the next interval)', sweep.failedSweeps),
    gauge('last_flush_duration_seconds', 'Duration of the last successful flush', f.lastFlushDurationMs / 1000),
    gauge('last_flush_keys', 'Keys written by the last successful flush', f.lastFlushKeys),
    gauge('last_flush_statements', 'Round trips to PostgreSQL in the last successful flush (a fixed number whatever the key count)', f.lastFlushStatements),
    gauge('pending_keys', 'Keys waiting to be flushed', aggregator.pendingKeys + flusher.pendingKeys),
    gauge('recv_buffer_bytes', 'UDP receive buffer granted by the kernel', parts.receiver.recvBufferBytes),
    ...kernelDropSamples(parts.receiver),
    counter('webhook_attempts_total', 'Webhook delivery attempts', webhooks.attempts),
    counter('webhook_failed_attempts_total', 'Webhook attempts that did not get a 2xx', webhooks.failedAttempts),
    counter('webhook_deliveries_succeeded_total', 'Webhook deliveries acknowledged with a 2xx', webhooks.delivered),
    counter(
      'webhook_deliveries_failed_total',
      'Webhook deliveries given up: after their last attempt, or unsent, their signing secret unopened for WEBHOOK_SECRET_WAIT_MAX_MS',
      webhooks.gaveUp,
    ),
    counter('webhook_poll_failures_total', 'Polls for due webhook deliveries that failed (the deliveries wait)', webhooks.failedPolls),
    counter(
      'webhook_secret_unopened_total',
      'Webhook deliveries put back unsent, no attempt used: their signing secret could not be opened (KEY_PEPPER)',
      webhooks.secretsUnopened,
    ),
    counter('webhook_lookups_busy_total', "Webhook deliveries put back unsent, no attempt used: other orgs' lookups held every slot", webhooks.lookupsBusy),
    gauge(
      'webhook_pending_deliveries',
      `Webhook deliveries pending in the outbox, every collector's, counted up to ${BACKLOG_COUNT_CAP} (read at most every 15 s)`,
      webhooks.pendingDeliveries,
    ),
    gauge(
      'webhook_oldest_due_age_seconds',
      'How long the webhook delivery due the longest has waited for a send slot (0: none due; read at most every 15 s)',
      webhooks.oldestDueSeconds,
    ),
    counter('hour_move_failures_total', 'Failed moves of closed hours into the hourly buckets (retried at the next run)', upkeep.stats.failedHourMoves),
    counter('retention_failures_total', 'Failed retention runs: usage rows, events, IP addresses (retried hourly)', upkeep.stats.failedRetentions),
  ];
}

// Read from /proc at scrape time, not counted per datagram: the kernel drops them before the
// collector sees them. None where the kernel does not say (not Linux), rather than a 0 that would
// read as "nothing lost".
function kernelDropSamples({ kernelDrops }: CollectorParts['receiver']): MetricSample[] {
  if (kernelDrops === undefined) return [];
  return [
    counter(
      'kernel_dropped_datagrams_total',
      "Datagrams the kernel dropped for the collector's UDP socket before it read them (its receive buffer full: a burst, a stalled receive loop, or a flood)",
      kernelDrops(),
    ),
  ];
}

// Without a list (COLLECTOR_KEY_LIST_REFRESH_MS=0) its gauges read 0.
function keyListSamples(keyList: CollectorParts['keyList']): MetricSample[] {
  return [
    gauge('key_list_keys', 'Keys in the key list (keys it lacks take half the pending-key cap at most)', keyList?.list.size ?? 0),
    gauge(
      'key_list_age_seconds',
      'Since the key list was last read from PostgreSQL (since start while it never was: until then every key is admitted)',
      (keyList?.sync.ageMs() ?? 0) / 1000,
    ),
    counter('key_list_read_failures_total', 'Reads of the key list that failed (tried again at the next refresh)', keyList?.sync.stats.failures ?? 0),
  ];
}
