import { Histogram, renderPrometheus, type MetricSample } from '../shared/metrics';
import type { LookupStats, ThrottleStats } from './auth/failureThrottle';
import type { KeyCacheStats } from './auth/keyVerifier';
import type { OrgConcurrency } from './auth/orgConcurrency';
import type { OrgWriteBudget } from './auth/orgWriteBudget';
import type { UsageRecorder } from './usage/usageRecorder';

// The API's Prometheus metrics: the counters that already live in the recorder, the key cache and
// the auth throttle, read at scrape time, and one histogram filled by the request logger. Served by
// api/main.ts on API_METRICS_HOST:API_METRICS_PORT, never on the public port.

export interface RequestObservation {
  method: string;
  /** The route pattern (`/api/orgs/:id/api-keys`), or `unmatched`: never the raw path. */
  route: string;
  status: number;
  seconds: number;
}

// From a cached key (well under a millisecond) to a stuck database (the pool waits 10 s).
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface ApiMetricSources {
  recorder: UsageRecorder | undefined;
  keyCache: Readonly<KeyCacheStats>;
  throttle: Readonly<ThrottleStats>;
  lookups?: Readonly<LookupStats>;
  orgTurns?: Pick<OrgConcurrency, 'stats' | 'waiting'>;
  orgWrites?: Pick<OrgWriteBudget, 'stats'>;
}

function statSamples({ recorder, keyCache, throttle, lookups, orgTurns, orgWrites }: ApiMetricSources): MetricSample[] {
  const counter = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_api_${name}`, help, type: 'counter', value });
  const gauge = (name: string, help: string, value: number): MetricSample => ({ name: `keyusage_api_${name}`, help, type: 'gauge', value });
  const usage = recorder?.stats;
  return [
    gauge('usage_tracking_enabled', 'USAGE_TRACKING: 1 when the API records uses', recorder ? 1 : 0),
    counter('uses_recorded_total', 'Uses, and wrong secrets on known keys, recorded on the auth path', usage?.recordedUses ?? 0),
    counter('uses_sent_total', 'Of those, sent in datagrams the socket accepted', usage?.sentUses ?? 0),
    counter('uses_send_failed_total', 'Of those, lost in datagrams whose send failed', usage?.failedUses ?? 0),
    counter('datagrams_total', 'Usage datagrams made: handed to the socket, or failed at once with too many still in flight', usage?.datagrams ?? 0),
    counter('send_errors_total', 'Usage datagrams whose send failed, or had not ended at stop', usage?.failedDatagrams ?? 0),
    counter(
      'early_drains_total',
      'Drains before the interval because the coalescing map was full (USAGE_MAX_ENTRIES) or a count reached its line maximum',
      usage?.earlyDrains ?? 0,
    ),
    gauge('usage_pending_entries', '(key, ip, outcome) entries waiting for the next drain', recorder?.pendingEntries ?? 0),
    gauge(
      'usage_datagrams_in_flight',
      'Usage datagrams handed to the socket whose send has not completed (at most 1000 plus one drain)',
      recorder?.datagramsInFlight ?? 0,
    ),
    counter('key_cache_hits_total', 'Key verifications answered from the in-process cache', keyCache.hits),
    counter('key_cache_misses_total', 'Key verifications that read the key from PostgreSQL', keyCache.misses),
    counter('key_cache_reloads_total', 'Wrong secrets on a cached key, read again in case of a rotation elsewhere', keyCache.reloads),
    counter('auth_failures_total', 'Failed authentications (malformed key, unknown id, wrong secret)', throttle.failures),
    counter('auth_refused_by_ip_total', 'Requests refused with 429 because their address failed too often', throttle.refusedByIp),
    counter('auth_refused_by_key_total', 'Failed authentications answered 429 because their key id failed too often', throttle.refusedByKey),
    counter('auth_lockouts_total', 'Times an address or a key id reached its failure limit', throttle.lockouts),
    counter('auth_throttle_evictions_total', 'Failure windows forgotten early because AUTH_THROTTLE_MAX_ENTRIES was reached', throttle.evicted),
    gauge('auth_key_lookups_running', 'Reads of keys the cache cannot answer, in flight now (at most AUTH_THROTTLE_MAX_LOOKUPS)', lookups?.running ?? 0),
    gauge('auth_key_lookups_peak', 'The most reads of keys that were in flight at once since the process started', lookups?.peak ?? 0),
    counter(
      'auth_key_lookups_refused_total',
      'Requests answered 429 because AUTH_THROTTLE_MAX_LOOKUPS reads of keys ran and 32 times as many waited',
      lookups?.refused ?? 0,
    ),
    counter('org_requests_waited_total', "Requests that waited for their org's turn (API_MAX_CONCURRENT_PER_ORG)", orgTurns?.stats.waited ?? 0),
    counter('org_requests_refused_total', "Requests answered 429 because too many of their org's waited", orgTurns?.stats.refused ?? 0),
    gauge('org_requests_waiting', "Requests waiting for their org's turn now", orgTurns?.waiting() ?? 0),
    counter('org_writes_refused_total', 'Key and webhook changes answered 429: their org had made API_WRITES_PER_ORG_MINUTE', orgWrites?.stats.refused ?? 0),
  ];
}

export function createApiMetrics() {
  const durations = new Histogram('keyusage_api_request_duration_seconds', 'HTTP request duration by method, route pattern and status', DURATION_BUCKETS);
  return {
    // An arrow: passed on unbound as createApp's onRequest.
    observeRequest: (request: RequestObservation): void => {
      durations.observe({ method: request.method, route: request.route, status: String(request.status) }, request.seconds);
    },
    exposition: (sources: ApiMetricSources): string => renderPrometheus(statSamples(sources)) + durations.render(),
  };
}

export type ApiMetrics = ReturnType<typeof createApiMetrics>;
