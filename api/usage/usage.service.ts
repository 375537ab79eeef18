import { exactCount, type Count, type Db } from '../../shared/db';
import { AppError } from '../errors';
import { keyStatus, type KeyStatus } from '../keys/apiKeys.service';
import { requireKeyInOrg } from '../keys/requireKeyInOrg';
import { keyTimeSeries, listKeyUsage, type Granularity, type KeyUsageRecord, type UsageSort } from './usage.repository';

const DAY_MS = 86_400_000;
const MAX_SERIES_POINTS = 24 * 93;

const isoOrNull = (date: Date | null) => (date ? date.toISOString() : null);

// Dormant: can still be used, yet unused for dormantAfterMs. A revoked or expired key is not
// dormant (nothing is left to clean up), the same rule as the repository's `dormant` filter.
function isDormant(key: KeyUsageRecord, now: number, dormantAfterMs: number): boolean {
  return keyStatus(key, now) === 'active' && (key.lastUsedAt === null || key.lastUsedAt.getTime() < now - dormantAfterMs);
}

function toUsageView(key: KeyUsageRecord, now: number, dormantAfterMs: number, eventSummaryDays: number) {
  return {
    id: key.keyId,
    name: key.name,
    displayPrefix: key.displayPrefix,
    scopes: key.scopes,
    status: keyStatus(key, now),
    createdAt: key.createdAt.toISOString(),
    expiresAt: isoOrNull(key.expiresAt),
    revokedAt: isoOrNull(key.revokedAt),
    lastUsedAt: isoOrNull(key.lastUsedAt),
    lastUsedIp: key.lastUsedIp,
    recentIps: key.recentIps.map(isoSeen),
    requestCount: key.requestCount,
    outcomes: key.outcomes,
    requests: { last24h: key.last24h, last7d: key.last7d, last30d: key.last30d },
    last7Days: key.last7Days,
    dormant: isDormant(key, now, dormantAfterMs),
    failedAttempts: key.failedAttempts,
    lastFailedAt: isoOrNull(key.lastFailedAt),
    lastFailedIp: key.lastFailedIp,
    recentFailedIps: key.recentFailedIps.map(isoSeen),
    lastRevokedUseAt: isoOrNull(key.lastRevokedUseAt),
    lastExpiredUseAt: isoOrNull(key.lastExpiredUseAt),
    events: { days: eventSummaryDays, counts: key.eventCounts, latestAt: isoOrNull(key.latestEventAt) },
  };
}

const isoSeen = <T extends { firstSeen: Date; lastSeen: Date }>(ip: T) => ({ ...ip, firstSeen: ip.firstSeen.toISOString(), lastSeen: ip.lastSeen.toISOString() });

// Exact whatever the size: bucket counts may be saturated bigints.
const sumCounts = (counts: Count[]) => exactCount(counts.reduce((sum: bigint, count) => sum + BigInt(count), 0n).toString());

export type UsageService = ReturnType<typeof createUsageService>;

/** The API's drain interval and the collector's flush interval: how far usage can lag. */
export interface UsageDelay {
  drainIntervalMs: number;
  flushIntervalMs: number;
}

export function createUsageService(deps: { db: Db; now: () => number; delay: UsageDelay; eventSummaryDays: number }) {
  return {
    async list(
      orgId: string,
      query: { dormant?: boolean; status?: KeyStatus; dormantDays: number; nameContains?: string; keyId?: string; sort: UsageSort; order: 'asc' | 'desc'; limit: number; offset: number },
    ) {
      const now = deps.now();
      const dormantAfterMs = query.dormantDays * DAY_MS;
      // A key of another org (or none) is not_found, not an empty page.
      if (query.keyId) await requireKeyInOrg(deps.db, orgId, query.keyId);
      const { keys, total } = await listKeyUsage(deps.db, {
        orgId,
        now: new Date(now),
        status: query.status ?? null,
        dormancy: query.dormant === undefined ? null : { dormant: query.dormant, before: new Date(now - dormantAfterMs) },
        nameContains: query.nameContains ?? null,
        keyId: query.keyId ?? null,
        eventsSince: new Date(now - deps.eventSummaryDays * DAY_MS),
        sort: query.sort,
        order: query.order,
        limit: query.limit,
        offset: query.offset,
      });
      return {
        data: keys.map((key) => toUsageView(key, now, dormantAfterMs, deps.eventSummaryDays)),
        page: { limit: query.limit, offset: query.offset, total },
        generatedAt: new Date(now).toISOString(),
        delay: deps.delay,
      };
    },

    async timeSeries(orgId: string, keyId: string, query: { from?: Date; to?: Date; granularity: Granularity; byOutcome: boolean }) {
      const to = query.to ?? new Date(deps.now());
      const from = query.from ?? new Date(to.getTime() - 7 * DAY_MS);
      if (from.getTime() > to.getTime()) throw new AppError('invalid_request', 'Invalid query: from: must not be after to');
      const points = (to.getTime() - from.getTime()) / (query.granularity === 'hour' ? 3_600_000 : DAY_MS);
      if (points > MAX_SERIES_POINTS) {
        throw new AppError('invalid_request', `Invalid query: the range holds ${Math.ceil(points)} ${query.granularity}s; at most ${MAX_SERIES_POINTS} per request`);
      }
      await requireKeyInOrg(deps.db, orgId, keyId);
      const buckets = await keyTimeSeries(deps.db, { orgId, keyId, from, to, granularity: query.granularity });
      return {
        keyId,
        granularity: query.granularity,
        from: from.toISOString(),
        to: to.toISOString(),
        total: sumCounts(buckets.map((bucket) => bucket.requestCount)),
        buckets: buckets.map(({ start, requestCount, outcomes }) => ({
          start: start.toISOString(),
          requestCount,
          ...(query.byOutcome ? { outcomes } : {}),
        })),
      };
    },
  };
}
