import { z } from 'zod';
import { exactCount, type Count, type Db } from '../../shared/db';
import { EVENT_TYPES } from '../../shared/keyEvents';
import { OUTCOMES } from '../../shared/usageWire';
import { InvalidInputError } from '../errors';
import { apiKeyView, KEY_STATUSES, keyStatus, previousSecretShown, restorableUntilShown, type KeyStatus } from '../keys/apiKeys.service';
import { SCOPES } from '../keys/scopes';
import { count, idString, isoTime, offsetPage } from '../responses';
import { findApiKeyInOrg } from '../keys/apiKeys.repository';
import { requireKeyInOrg } from '../keys/requireKeyInOrg';
import { listKeyUsage, readUsageSeries, type Granularity, type KeyUsageRecord, type SeriesBucket, type UsageSort } from './usage.repository';
import { DAY_MS, HOUR_MS } from '../../shared/timeUnits';

export const MAX_SERIES_POINTS = 24 * 93;

const isoOrNull = (date: Date | null) => (date ? date.toISOString() : null);

const outcomeCounts = z.record(z.enum(OUTCOMES), count).meta({ id: 'OutcomeCounts', description: 'Uses by outcome' });
const seenIp = z.object({ ip: z.string(), firstSeen: isoTime, lastSeen: isoTime });

const keyUsage = z
  .object({
    id: idString,
    name: z.string(),
    owner: z.string().nullable().meta({ description: 'Who answers for the key (PATCH …/api-keys/:keyId); null: nobody named' }),
    displayPrefix: z.string(),
    scopes: z.array(z.enum(SCOPES)),
    status: z.enum(KEY_STATUSES),
    createdAt: isoTime,
    expiresAt: isoTime.nullable(),
    revokedAt: isoTime.nullable(),
    lastUsedAt: isoTime.nullable(),
    lastUsedIp: z.string().nullable(),
    recentIps: z.array(seenIp.extend({ requestCount: count })),
    requestCount: count,
    outcomes: outcomeCounts,
    requests: z.object({ last24h: count, last7d: count, last30d: count }),
    last7Days: z.array(count).meta({ description: 'Uses per UTC day over the last 7 days, oldest first; the last is today so far' }),
    dormant: z.boolean(),
    failedAttempts: count,
    lastFailedAt: isoTime.nullable(),
    lastFailedIp: z.string().nullable(),
    recentFailedIps: z.array(seenIp.extend({ attemptCount: count })),
    lastRevokedUseAt: isoTime.nullable(),
    lastExpiredUseAt: isoTime.nullable(),
    events: z.object({ days: z.number().int(), counts: z.partialRecord(z.enum(EVENT_TYPES), z.number().int()), latestAt: isoTime.nullable() }),
    // As the key view says them, so a page of keys needs no view of each.
    ...apiKeyView.pick({
      previousSecretExpiresAt: true,
      previousSecretLastUsedAt: true,
      previousSecretLastUsedIp: true,
      createdByKeyId: true,
      restorableUntil: true,
      restoredAt: true,
    }).shape,
  })
  .meta({ id: 'KeyUsage' });

export const usageList = z
  .object({
    data: z.array(keyUsage),
    page: offsetPage.extend({
      nextAfter: idString.nullable().meta({
        description:
          "With sort=createdAt, a full page's last key: pass it as `after` for the next page; null on a page that is not full, and with the other sorts",
      }),
    }),
    generatedAt: isoTime,
    delay: z.object({ drainIntervalMs: z.number(), flushIntervalMs: z.number() }).meta({ description: 'How far usage can lag behind requests' }),
  })
  .meta({ id: 'UsageList' });

const seriesFields = {
  granularity: z.enum(['hour', 'day']),
  from: isoTime,
  to: isoTime,
  total: count,
};
const seriesBucket = z.object({ start: isoTime, requestCount: count, outcomes: outcomeCounts.optional().meta({ description: 'With byOutcome=true' }) });

export const usageSeries = z.object({ keyId: idString, ...seriesFields, buckets: z.array(seriesBucket) }).meta({ id: 'UsageSeries' });

export const orgUsageSeries = z
  .object({
    orgId: idString,
    ...seriesFields,
    keysUsed: z.number().int().meta({ description: 'Keys with a proven use in the range (a key used in several buckets counts once)' }),
    buckets: z.array(seriesBucket.extend({ keysUsed: z.number().int().meta({ description: 'Keys with a proven use in the bucket' }) })),
  })
  .meta({ id: 'OrgUsageSeries' });

export type KeyUsageView = z.output<typeof keyUsage>;

function toUsageView(key: KeyUsageRecord, now: number, eventSummaryDays: number): KeyUsageView {
  return {
    id: key.keyId,
    name: key.name,
    owner: key.owner,
    displayPrefix: key.displayPrefix,
    scopes: key.scopes,
    status: keyStatus(key, now),
    createdAt: key.createdAt.toISOString(),
    expiresAt: isoOrNull(key.expiresAt),
    revokedAt: isoOrNull(key.revokedAt),
    restorableUntil: restorableUntilShown(key, now),
    restoredAt: isoOrNull(key.restoredAt),
    createdByKeyId: key.createdByKeyId,
    lastUsedAt: isoOrNull(key.lastUsedAt),
    lastUsedIp: key.lastUsedIp,
    recentIps: key.recentIps.map(isoSeen),
    requestCount: key.requestCount,
    outcomes: key.outcomes,
    requests: { last24h: key.last24h, last7d: key.last7d, last30d: key.last30d },
    last7Days: key.last7Days,
    dormant: key.dormant,
    failedAttempts: key.failedAttempts,
    lastFailedAt: isoOrNull(key.lastFailedAt),
    lastFailedIp: key.lastFailedIp,
    recentFailedIps: key.recentFailedIps.map(isoSeen),
    lastRevokedUseAt: isoOrNull(key.lastRevokedUseAt),
    lastExpiredUseAt: isoOrNull(key.lastExpiredUseAt),
    events: { days: eventSummaryDays, counts: key.eventCounts, latestAt: isoOrNull(key.latestEventAt) },
    ...previousSecretShown(key, now, key.previousSecretUse),
  };
}

const isoSeen = <T extends { firstSeen: Date; lastSeen: Date }>(ip: T) => ({
  ...ip,
  firstSeen: ip.firstSeen.toISOString(),
  lastSeen: ip.lastSeen.toISOString(),
});

// Exact whatever the size: bucket counts may be saturated bigints.
const sumCounts = (counts: Count[]) => exactCount(counts.reduce((sum: bigint, count) => sum + BigInt(count), 0n).toString());

type SeriesRequest = { from?: Date; to?: Date; granularity: Granularity; byOutcome: boolean };
type SeriesRange = { from: Date; to: Date; granularity: Granularity };

/** The range a series request names, its defaults filled in; refused past MAX_SERIES_POINTS buckets. */
function seriesRange(query: SeriesRequest, now: number): SeriesRange {
  const to = query.to ?? new Date(now);
  // Not before 1970, the earliest time a request may send (a bucket start at either
  // granularity): a `to` early in 1970 answered a window from 1969, refused when sent back.
  const from = query.from ?? new Date(Math.max(0, to.getTime() - 7 * DAY_MS));
  if (from.getTime() > to.getTime()) throw new InvalidInputError('from: must not be after to');
  // The buckets that start before `to`, from the one holding `from`: none when `to` is that
  // one's start (from = to on a boundary), not a bucket of 0 uses for an hour that had some.
  const step = query.granularity === 'hour' ? HOUR_MS : DAY_MS;
  const first = Math.floor(from.getTime() / step) * step;
  const points = Math.ceil((to.getTime() - first) / step);
  if (points > MAX_SERIES_POINTS) {
    throw new InvalidInputError(`the range holds ${points} ${query.granularity}s; at most ${MAX_SERIES_POINTS} per request`);
  }
  return { from, to, granularity: query.granularity };
}

function seriesAnswer(range: SeriesRange, buckets: SeriesBucket[], byOutcome: boolean) {
  return {
    granularity: range.granularity,
    from: range.from.toISOString(),
    to: range.to.toISOString(),
    total: sumCounts(buckets.map((bucket) => bucket.requestCount)),
    buckets: buckets.map(({ start, requestCount, outcomes }) => ({
      start: start.toISOString(),
      requestCount,
      ...(byOutcome ? { outcomes } : {}),
    })),
  };
}

type ListQuery = {
  dormant?: boolean;
  status?: KeyStatus;
  dormantDays: number;
  nameOrOwnerContains?: string;
  owner?: string;
  keyId?: string;
  createdByKeyId?: string;
  sort: UsageSort;
  order: 'asc' | 'desc';
  after?: string;
  limit: number;
  offset: number;
};

// `after` continues the createdAt order from a key of the org. Unknown and another org's key get
// the same refusal, which says nothing of other orgs; an empty page would tell a script walking the
// keys that it had seen them all.
async function afterKey(db: Db, orgId: string, query: ListQuery): Promise<string | undefined> {
  if (query.after === undefined) return undefined;
  if (query.sort !== 'createdAt') throw new InvalidInputError(`after: only with sort=createdAt (keys move in the ${query.sort} order as they are used)`);
  if (query.offset > 0) throw new InvalidInputError('after: not with offset (after already says where the page starts; leave offset out)');
  if (!(await findApiKeyInOrg(db, orgId, query.after)))
    throw new InvalidInputError('after: no key of this organization has this id (one deleted since its page was read: start again without after)');
  return query.after;
}

/** A report whose keyset lost its place midway: what it gave is not every key. */
export class ReportCutShortError extends Error {}

/** The list's filters, for the CSV report of every key they select. */
export type ReportQuery = Pick<ListQuery, 'dormant' | 'status' | 'dormantDays' | 'nameOrOwnerContains' | 'owner' | 'createdByKeyId'>;

// The report reads the keys a page at a time along the createdAt keyset, so its cost follows the
// keys written, not the org's size squared (offset pages), and a key created meanwhile moves none.
const REPORT_PAGE = 500;

// A full page may have keys after it; only the createdAt order can be continued with `after`.
const nextAfter = (keys: KeyUsageRecord[], query: ListQuery) =>
  query.sort === 'createdAt' && keys.length === query.limit ? keys[keys.length - 1].keyId : null;

export type UsageService = ReturnType<typeof createUsageService>;

/** The API's drain interval and the collector's flush interval: how far usage can lag. */
export interface UsageDelay {
  drainIntervalMs: number;
  flushIntervalMs: number;
}

export function createUsageService(deps: { db: Db; now: () => number; delay: UsageDelay; eventSummaryDays: number }) {
  // The list's filters as the repository takes them, at `now`.
  const filtersAt = (orgId: string, now: number, query: ReportQuery) => ({
    orgId,
    now: new Date(now),
    status: query.status ?? null,
    dormantBefore: new Date(now - query.dormantDays * DAY_MS),
    dormant: query.dormant ?? null,
    nameOrOwnerContains: query.nameOrOwnerContains ?? null,
    owner: query.owner ?? null,
    createdByKeyId: query.createdByKeyId ?? null,
    eventsSince: new Date(now - deps.eventSummaryDays * DAY_MS),
  });
  return {
    async list(orgId: string, query: ListQuery): Promise<z.output<typeof usageList>> {
      const now = deps.now();
      // A key of another org (or none) is not_found, not an empty page.
      for (const keyId of [query.keyId, query.createdByKeyId]) if (keyId) await requireKeyInOrg(deps.db, orgId, keyId);
      const after = await afterKey(deps.db, orgId, query);
      const { keys, total } = await listKeyUsage(deps.db, {
        ...filtersAt(orgId, now, query),
        keyId: query.keyId ?? null,
        sort: query.sort,
        order: query.order,
        after,
        limit: query.limit,
        offset: query.offset,
      });
      return {
        data: keys.map((key) => toUsageView(key, now, deps.eventSummaryDays)),
        page: { limit: query.limit, offset: query.offset, total: total!, nextAfter: nextAfter(keys, query) },
        generatedAt: new Date(now).toISOString(),
        delay: deps.delay,
      };
    },

    /**
     * Every key the filters select, oldest first, a page of views at a time (the CSV report), all
     * at one `now`. A createdByKeyId of another org (or none) is not_found before the first page.
     */
    async *report(orgId: string, query: ReportQuery): AsyncGenerator<KeyUsageView[]> {
      const now = deps.now();
      if (query.createdByKeyId) await requireKeyInOrg(deps.db, orgId, query.createdByKeyId);
      let after: string | undefined;
      for (;;) {
        const page = { sort: 'createdAt', order: 'asc', after, limit: REPORT_PAGE, offset: 0, withoutTotal: true } as const;
        const { keys } = await listKeyUsage(deps.db, { ...filtersAt(orgId, now, query), keyId: null, ...page });
        // The last key read was deleted since: the keyset lost its place, and an empty page would
        // end a report short that reads as complete.
        if (keys.length === 0 && after !== undefined && !(await findApiKeyInOrg(deps.db, orgId, after))) {
          throw new ReportCutShortError('The CSV report lost its place: the last key it read was deleted meanwhile');
        }
        if (keys.length > 0) yield keys.map((key) => toUsageView(key, now, deps.eventSummaryDays));
        if (keys.length < REPORT_PAGE) return;
        after = keys[keys.length - 1].keyId;
      }
    },

    async timeSeries(orgId: string, keyId: string, query: SeriesRequest): Promise<z.output<typeof usageSeries>> {
      const range = seriesRange(query, deps.now());
      await requireKeyInOrg(deps.db, orgId, keyId);
      const { buckets } = await readUsageSeries(deps.db, { orgId, keyId, ...range });
      return { keyId, ...seriesAnswer(range, buckets, query.byOutcome) };
    },

    async orgTimeSeries(orgId: string, query: SeriesRequest): Promise<z.output<typeof orgUsageSeries>> {
      const range = seriesRange(query, deps.now());
      const { buckets, keysUsed } = await readUsageSeries(deps.db, { orgId, ...range });
      const answer = seriesAnswer(range, buckets, query.byOutcome);
      return {
        orgId,
        ...answer,
        keysUsed,
        buckets: answer.buckets.map((bucket, i) => ({ ...bucket, keysUsed: buckets[i].keysUsed })),
      };
    },
  };
}
