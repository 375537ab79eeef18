import { exactCount, rawRows, type Count, type Db } from '../../shared/db';
import { dormantKeySql } from '../../shared/dormancy';
import { LIMIT_EVENT, type EventType } from '../../shared/keyEvents';
import { OUTCOMES, type Outcome } from '../../shared/usageWire';
import type { PreviousSecretUse } from '../keys/apiKeys.repository';
import type { KeyStatus } from '../keys/apiKeys.service';
import type { Scope } from '../keys/scopes';
import { hourBuckets, IP_TABLES, RECENT_IPS_PER_KEY, TABLE } from '../../shared/tables';
import { DAY_MS } from '../../shared/timeUnits';

export type UsageSort = 'createdAt' | 'lastUsedAt' | 'requestCount';

export interface RecentIp {
  ip: string;
  firstSeen: Date;
  lastSeen: Date;
  requestCount: Count;
}

export interface FailedIp {
  ip: string;
  firstSeen: Date;
  lastSeen: Date;
  attemptCount: Count;
}

export interface KeyUsageRecord {
  keyId: string;
  name: string;
  owner: string | null;
  displayPrefix: string;
  scopes: Scope[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  restorableUntil: Date | null;
  restoredAt: Date | null;
  createdByKeyId: string | null;
  lastUsedAt: Date | null;
  lastUsedIp: string | null;
  requestCount: Count;
  outcomes: Record<Outcome, Count>;
  last24h: Count;
  last7d: Count;
  last30d: Count;
  /** Uses per UTC day over the last 7 days, oldest first; the last is today so far. */
  last7Days: Count[];
  recentIps: RecentIp[];
  failedAttempts: Count;
  lastFailedAt: Date | null;
  lastFailedIp: string | null;
  recentFailedIps: FailedIp[];
  lastRevokedUseAt: Date | null;
  lastExpiredUseAt: Date | null;
  rotatedAt: Date | null;
  previousSecretExpiresAt: Date | null;
  /** The newest use of a previous secret the collector wrote, whichever rotation made it previous (the service shows it or not). */
  previousSecretUse: PreviousSecretUse | undefined;
  /** By the rule of shared/dormancy.ts, at UsageQuery.now with UsageQuery.dormantBefore. */
  dormant: boolean;
  /** Events since UsageQuery.eventsSince, by type (types without one are absent). */
  eventCounts: Partial<Record<EventType, number>>;
  latestEventAt: Date | null;
}

export interface UsageQuery {
  orgId: string;
  now: Date;
  /** Keys with this status only; null for every status. */
  status: KeyStatus | null;
  /** A key not used since this instant (counted from its creation if never used) is dormant (shared/dormancy.ts). */
  dormantBefore: Date;
  /** Only dormant keys (true), only the others (false), or no filter (null). */
  dormant: boolean | null;
  /** When set, only keys whose name or owner contains it, case-insensitively (taken literally: no wildcards). */
  nameOrOwnerContains: string | null;
  /** When set, only keys with this owner (exactly). */
  owner?: string | null;
  /** When set, only this key (the dashboard's key page). */
  keyId: string | null;
  /** When set, only the keys this key created (a leaked key's clean-up). */
  createdByKeyId?: string | null;
  /** Events counted per key are those since this instant. */
  eventsSince: Date;
  sort: UsageSort;
  order: 'asc' | 'desc';
  /** With sort createdAt only: the page holds the keys after this key (its id, a key of the org) in the sort's order. */
  after?: string;
  limit: number;
  offset: number;
  /** Leave out the count of every key the filters select (the CSV report walks them all instead); total is then null. */
  withoutTotal?: boolean;
}

// Each sort as an expression over the page query's columns (inner) and over the page (outer).
const SORT_COLUMNS: Record<UsageSort, { inner: string; outer: string }> = {
  createdAt: { inner: 'k.created_at', outer: 'p.created_at' },
  lastUsedAt: { inner: 'u.last_used_at', outer: 'p.last_used_at' },
  requestCount: { inner: 'coalesce(u.request_count, 0)', outer: 'p.request_count' },
};

// ILIKE reads %, _ and \ as pattern syntax; a search for "50%" means those characters.
export const likePattern = (text: string) => `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

// The 7 UTC days of the sparkline (oldest first, the last is today), summed in the same LATERAL as
// the windows: day i runs from :day<i> to :day<i+1>.
const SPARKLINE_DAYS = 7;
const dailyColumns = Array.from(
  { length: SPARKLINE_DAYS },
  (_, i) => `cast(coalesce(sum(h.request_count) filter (where h.hour >= :day${i} and h.hour < :day${i + 1}), 0) as text)`,
).join(', ');

// Every bound of the windows as a value, computed here once: written in SQL as
// `cast(:now as timestamptz) - interval '7 days'`, each is a timezone-aware function call that
// PostgreSQL cannot fold (timestamptz arithmetic is only stable) and evaluates for every bucket
// row: 30 days of a busy key are 720 rows × 17 bounds, which made busiest-first CPU-bound
// (docs/benchmarks.md §5).
function windowBounds(now: Date): Record<string, Date> {
  const today = Math.floor(now.getTime() / DAY_MS) * DAY_MS;
  const days = Array.from({ length: SPARKLINE_DAYS + 1 }, (_, i) => [`day${i}`, new Date(today - (SPARKLINE_DAYS - 1 - i) * DAY_MS)]);
  return {
    since24h: new Date(now.getTime() - DAY_MS),
    since7d: new Date(now.getTime() - 7 * DAY_MS),
    since30d: new Date(now.getTime() - 30 * DAY_MS),
    ...Object.fromEntries(days),
  };
}

const outcomeColumns = OUTCOMES.map((outcome) => `coalesce(u.${outcome}_count, 0) as ${outcome}_count`).join(', ');

// The newest rows of an IP table as JSON; counts as text, which JSON.parse would otherwise round.
// The collector trims older addresses after each flush; the limit caps them too in between. Among
// rows tied on last_seen (a datagram's lines share its receipt time) the key's last address
// (`lastIp`, a column of the page's row) first, then ip: the collector's trim keeps them in this
// order (collector/usageStore.ts), so the last IP is among the recent ones, and the rows shown
// between a flush and its trim are those it keeps.
const recentIpsJson = ({ table, count }: (typeof IP_TABLES)[keyof typeof IP_TABLES], lastIp: 'last_used_ip' | 'last_failed_ip') => `
         left join lateral (
           select json_agg(json_build_object('ip', r.ip, 'firstSeen', r.first_seen, 'lastSeen', r.last_seen, 'count', cast(r.${count} as text))
                           order by r.last_seen desc, (r.ip = p.${lastIp}) is not true, r.ip) as ips
             from (select * from ${table} i where i.org_id = :orgId and i.key_id = p.id
                    order by i.last_seen desc, (i.ip = p.${lastIp}) is not true, i.ip limit ${RECENT_IPS_PER_KEY}) r
         ) ${table} on true`;

// A key's status as SQL, in keyStatus()'s order: revoked wins over expired.
const REVOKED = 'k.revoked_at is not null';
const EXPIRED = '(k.revoked_at is null and k.expires_at <= cast(:now as timestamptz))';
const ACTIVE = '(k.revoked_at is null and not coalesce(k.expires_at <= cast(:now as timestamptz), false))';
const STATUS_SQL: Record<KeyStatus, string> = { active: ACTIVE, revoked: REVOKED, expired: EXPIRED };
const DORMANT = dormantKeySql('cast(:now as timestamptz)', 'cast(:dormantBefore as timestamptz)');

function filters(query: UsageQuery): string {
  const conditions: string[] = [];
  if (query.status) conditions.push(STATUS_SQL[query.status]);
  if (query.dormant !== null) conditions.push(query.dormant ? DORMANT : `not ${DORMANT}`);
  // The owner too: the dashboard's one search box finds a team's keys by its name.
  if (query.nameOrOwnerContains) conditions.push("(k.name ilike :namePattern escape '\\' or k.owner ilike :namePattern escape '\\')");
  if (query.owner) conditions.push('k.owner = :owner');
  if (query.keyId) conditions.push('k.id = :keyId');
  if (query.createdByKeyId) conditions.push('k.created_by_key_id = :createdByKeyId');
  return conditions.map((condition) => `and ${condition}`).join(' ');
}

// Never-used keys (no last use) first in ascending order, last in descending, ties by key id.
// The createdAt order is created_at (never null) then id, both in the order asked, descending the
// exact reverse of ascending: api_keys_org_created_idx holds it either way, so a page reads the
// index from its start or its cursor and stops at its limit. With NULLS FIRST, or ties ascending
// under a descending created_at, every page sorted every key of the org (0.12 s a page of the CSV
// report, 0.17–0.2 s the list's default first page, at 100,000 keys).
function orderBy(query: UsageQuery, column: 'inner' | 'outer'): string {
  const id = column === 'inner' ? 'k.id' : 'p.id';
  if (query.sort === 'createdAt') return `${SORT_COLUMNS.createdAt[column]} ${query.order}, ${id} ${query.order}`;
  return `${SORT_COLUMNS[query.sort][column]} ${query.order === 'desc' ? 'desc nulls last' : 'asc nulls first'}, ${id}`;
}

// The keys after the cursor in the createdAt order (created_at then id, ascending or descending):
// a keyset, so a key entering or leaving the filtered set shifts no other. A row comparison, which
// api_keys_org_created_idx starts the page at (the CSV report walks 100,000 keys so).
// The cursor's created_at is read in the same statement, from the placement its rows come from:
// on Citus every node's copy of the reference table api_keys wrote its own now() for a key (each
// its own transaction's), so a position read before (on the coordinator) was up to tens of ms
// off the worker's copy, and the page held the cursor key itself.
const AFTER_CREATED_AT = `(select a.created_at from ${TABLE.apiKeys} a where a.org_id = :orgId and a.id = :afterId)`;
const AFTER_POSITION = {
  asc: `and (k.created_at, k.id) > (${AFTER_CREATED_AT}, :afterId)`,
  desc: `and (k.created_at, k.id) < (${AFTER_CREATED_AT}, :afterId)`,
};

// The page's keys in order: filter, sort, limit over api_keys and api_key_usage only.
function pageKeys(query: UsageQuery): string {
  if (query.sort !== 'createdAt' && query.order === 'desc') return usedFirstKeys(query, USED_FIRST[query.sort]);
  return `${PAGE_COLUMNS} ${keysOfOrg(query)} ${query.after ? AFTER_POSITION[query.order] : ''}
            order by ${orderBy(query, 'inner')}
            limit :limit offset :offset`;
}

const PAGE_COLUMNS = `select k.id, k.name, k.owner, k.display_prefix, k.scopes, k.created_at, k.expires_at, k.revoked_at, k.restorable_until, k.restored_at, k.created_by_key_id,
                  k.rotated_at, k.previous_secret_expires_at, u.previous_secret_last_used_at, u.previous_secret_last_used_ip,
                  u.last_used_at, u.last_used_ip, coalesce(u.request_count, 0) as request_count, ${outcomeColumns},
                  u.last_failed_at, u.last_failed_ip, u.last_revoked_use_at, u.last_expired_use_at, ${DORMANT} as dormant`;

const keysOfOrg = (query: UsageQuery) => `from ${TABLE.apiKeys} k
         left join ${TABLE.usage} u on u.org_id = :orgId and u.key_id = k.id
        where k.org_id = :orgId ${filters(query)}`;

// What ranks the keys with uses first, for the two descending orders by use: the value, which
// usage rows hold one (the used keys), the order of the values, and the one value of every key
// without uses (one value, so those keys are in id order).
const USED_FIRST: Record<Exclude<UsageSort, 'createdAt'>, { value: string; used: string; order: string; unused: string }> = {
  requestCount: { value: 'u.request_count', used: 'u.request_count > 0', order: 'desc', unused: '0' },
  lastUsedAt: { value: 'u.last_used_at', used: 'u.last_used_at is not null', order: 'desc nulls last', unused: 'cast(null as timestamptz)' },
};

// Busiest first and most recently used first, in the order of every sort here (the value
// descending, then key id), without joining and sorting every key of the org. A key with uses has
// an api_key_usage row, so the page's first keys are the top of the org's usage rows alone: a
// top-N sort over one row per used key (busy), joined to api_keys only when a filter needs its
// columns (a usage row exists only for a key of its own org: the flush writes none for a key
// another org's line named, and it goes with its key). The keys without uses come after them, by
// id; that part (idle) is read only when the page reaches past the used keys: its LIMIT is then
// above zero, and a LIMIT of zero never reads its input. The page's keys are then read one by one
// (LIMIT 1 keeps the LATERAL a per-row lookup, never a join with every key of the org).
// request_count and last_used_at have no index on purpose: the flush updates them, and with an
// index those updates would no longer be HOT (migrations/20261201000050_hot_usage_updates.ts).
function usedFirstKeys(query: UsageQuery, { value, used, order, unused }: (typeof USED_FIRST)[keyof typeof USED_FIRST]): string {
  const filtered = filters(query);
  const keysOfBusy = filtered ? `join ${TABLE.apiKeys} k on k.org_id = :orgId and k.id = u.key_id` : '';
  return `with busy as materialized (
             select u.key_id, ${value} as rank
               from ${TABLE.usage} u ${keysOfBusy}
              where u.org_id = :orgId and ${used} ${filtered}
              order by ${value} ${order}, u.key_id
              limit :pageEnd
           ), idle as materialized (
             select k.id as key_id, ${unused} as rank ${keysOfOrg(query)} and not coalesce(${used}, false)
           )
           ${PAGE_COLUMNS}
             from (select ranked.key_id
                     from ((select key_id, rank from busy)
                           union all
                           (select key_id, rank from idle order by key_id limit greatest(0, :pageEnd - (select count(*) from busy)))) ranked
                    order by ranked.rank ${order}, ranked.key_id
                    limit :limit offset :offset) b
            cross join lateral (
              select k.id, k.name, k.owner, k.display_prefix, k.scopes, k.created_at, k.expires_at, k.revoked_at, k.created_by_key_id, k.rotated_at, k.restored_at, k.restorable_until,
                     k.previous_secret_expires_at
                from ${TABLE.apiKeys} k where k.org_id = :orgId and k.id = b.key_id limit 1
            ) k
             left join ${TABLE.usage} u on u.org_id = :orgId and u.key_id = k.id`;
}

// One statement per page. The page is chosen first (pageKeys); the windows from the hourly
// buckets and the recent IPs are then joined through LATERAL to those rows alone, so the cost
// follows the page size, not the org's key count. Every usage table is named with
// org_id = :orgId, so on Citus the whole statement runs on the one worker that holds the org's
// shards (api_keys is a reference table, present there too).
export async function listKeyUsage(db: Db, query: UsageQuery): Promise<{ keys: KeyUsageRecord[]; total: number | null }> {
  const bindings = {
    orgId: query.orgId,
    now: query.now,
    dormantBefore: query.dormantBefore,
    namePattern: query.nameOrOwnerContains ? likePattern(query.nameOrOwnerContains) : null,
    owner: query.owner ?? null,
    keyId: query.keyId,
    createdByKeyId: query.createdByKeyId ?? null,
    eventsSince: query.eventsSince,
    afterId: query.after ?? null,
    limit: query.limit,
    offset: query.offset,
    pageEnd: query.limit + query.offset,
    ...windowBounds(query.now),
  };
  const [rows, count] = await Promise.all([
    rawRows<KeyUsageRow>(
      db,
      `select p.*,
              coalesce(w.last_24h, 0) as last_24h, coalesce(w.last_7d, 0) as last_7d, coalesce(w.last_30d, 0) as last_30d, w.last_7_days,
              coalesce(${TABLE.recentIps}.ips, cast('[]' as json)) as recent_ips,
              coalesce(${TABLE.failedIps}.ips, cast('[]' as json)) as recent_failed_ips,
              coalesce(ev.by_type, cast('{}' as json)) as event_counts, ev.latest_at as latest_event_at
         from (${pageKeys(query)}) p
         left join lateral (
           select sum(h.request_count) filter (where h.hour > :since24h) as last_24h,
                  sum(h.request_count) filter (where h.hour > :since7d) as last_7d,
                  sum(h.request_count) as last_30d,
                  array[${dailyColumns}] as last_7_days
             from ${hourBuckets('hour, request_count', 'org_id = :orgId and key_id = p.id and hour > :since30d')} h
         ) w on true ${recentIpsJson(IP_TABLES.proven, 'last_used_ip')} ${recentIpsJson(IP_TABLES.failed, 'last_failed_ip')}
         left join lateral (
           select json_object_agg(s.type, s.n) as by_type, max(s.latest) as latest_at
             from (select e.type, count(*) as n, max(e.occurred_at) as latest
                     from ${TABLE.keyEvents} e
                    where e.org_id = :orgId and e.key_id = p.id and e.occurred_at > :eventsSince and e.type <> '${LIMIT_EVENT}'
                    group by e.type) s
         ) ev on true
        order by ${orderBy(query, 'outer')}`,
      bindings,
    ),
    query.withoutTotal ? null : rawRows<{ total: string }>(db, `select count(*) as total ${keysOfOrg(query)}`, bindings),
  ]);
  return { keys: rows.map(toKeyUsage), total: count && Number(count[0].total) };
}

type IpJson = { ip: string; firstSeen: string; lastSeen: string; count: string };

// A row of listKeyUsage's page as PostgreSQL returns it (windows and IP counts as text: exact).
type KeyUsageRow = {
  id: string;
  name: string;
  owner: string | null;
  display_prefix: string;
  scopes: Scope[];
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  restorable_until: Date | null;
  restored_at: Date | null;
  created_by_key_id: string | null;
  last_used_at: Date | null;
  last_used_ip: string | null;
  request_count: Count;
  last_failed_at: Date | null;
  last_failed_ip: string | null;
  last_revoked_use_at: Date | null;
  last_expired_use_at: Date | null;
  rotated_at: Date | null;
  previous_secret_expires_at: Date | null;
  previous_secret_last_used_at: Date | null;
  previous_secret_last_used_ip: string | null;
  last_24h: string;
  last_7d: string;
  last_30d: string;
  last_7_days: string[];
  recent_ips: IpJson[];
  recent_failed_ips: IpJson[];
  event_counts: Partial<Record<EventType, number>>;
  latest_event_at: string | null;
  dormant: boolean;
} & Record<`${Outcome}_count`, Count>;

const ipRows = (json: IpJson[]) =>
  json.map((row) => ({ ip: row.ip, firstSeen: new Date(row.firstSeen), lastSeen: new Date(row.lastSeen), count: exactCount(row.count) }));

function toKeyUsage(row: KeyUsageRow): KeyUsageRecord {
  return {
    keyId: row.id,
    name: row.name,
    owner: row.owner,
    displayPrefix: row.display_prefix,
    scopes: row.scopes,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    restorableUntil: row.restorable_until,
    restoredAt: row.restored_at,
    createdByKeyId: row.created_by_key_id,
    lastUsedAt: row.last_used_at,
    lastUsedIp: row.last_used_ip,
    requestCount: row.request_count,
    outcomes: Object.fromEntries(OUTCOMES.map((outcome) => [outcome, row[`${outcome}_count`]])) as Record<Outcome, Count>,
    last24h: exactCount(row.last_24h),
    last7d: exactCount(row.last_7d),
    last30d: exactCount(row.last_30d),
    last7Days: row.last_7_days.map(exactCount),
    recentIps: ipRows(row.recent_ips).map(({ count, ...ip }) => ({ ...ip, requestCount: count })),
    failedAttempts: row.bad_secret_count,
    lastFailedAt: row.last_failed_at,
    lastFailedIp: row.last_failed_ip,
    recentFailedIps: ipRows(row.recent_failed_ips).map(({ count, ...ip }) => ({ ...ip, attemptCount: count })),
    lastRevokedUseAt: row.last_revoked_use_at,
    lastExpiredUseAt: row.last_expired_use_at,
    rotatedAt: row.rotated_at,
    previousSecretExpiresAt: row.previous_secret_expires_at,
    previousSecretUse: row.previous_secret_last_used_at ? { at: row.previous_secret_last_used_at, ip: row.previous_secret_last_used_ip } : undefined,
    dormant: row.dormant,
    eventCounts: row.event_counts,
    latestEventAt: row.latest_event_at ? new Date(row.latest_event_at) : null,
  };
}

export type Granularity = 'hour' | 'day';

export interface SeriesBucket {
  start: Date;
  requestCount: Count;
  /** Keys with a proven use in the bucket. */
  keysUsed: number;
  outcomes: Record<Outcome, Count>;
}

const FIRST_BUCKET = "date_trunc(:granularity, cast(:from as timestamptz), 'UTC')";
// The range is [from, to): the buckets that start before `to`, and the hours from the one holding
// `from` to the last that starts before `to`. The whole bucket holding `to` was read, so a report
// ending at midnight counted the next day's uses too; the whole day holding `from`, so a day
// series from noon counted the morning's. With `to` at the first bucket's start (from = to on a
// boundary) the series is empty.
const FIRST_HOUR = "date_trunc('hour', cast(:from as timestamptz), 'UTC')";
const LAST_INSTANT = "cast(:to as timestamptz) - interval '1 microsecond'";

/** A series' range, and whose uses it sums: one key's, or (without keyId) every key's of the org. */
export interface SeriesQuery {
  orgId: string;
  keyId?: string;
  from: Date;
  to: Date;
  granularity: Granularity;
}

export interface UsageSeriesRows {
  buckets: SeriesBucket[];
  /** Keys with a proven use in the range (1 or 0 for one key's series). */
  keysUsed: number;
}

// Sums stay numeric (PostgreSQL's exact decimal) and are read as exact counts: saturated
// buckets would overflow a bigint sum. The hours of the range are read from both bucket tables
// once, then matched to their bucket by equality (a hash join: with the range alone the 720
// hours of a 30-day hourly series were compared with each of its 721 buckets). A row's bucket is
// date_bin from the epoch, integer arithmetic, where date_trunc looked up its time zone for each
// row: an org's 30 days (129,000 hours) took 146–174 ms instead of 257–287 ms, its 7 days 23–26
// ms instead of 52–58 (p50 of three runs, docs/benchmarks.md §5). A key's hours come from the
// primary keys, an org's from the closed hours' (org_id, hour) index (20261208000280). The
// grouping set () is the whole range: its distinct keys are not the sum of the buckets', a key
// used on two days is one key of the week.
export async function readUsageSeries(db: Db, query: SeriesQuery): Promise<UsageSeriesRows> {
  // A UTC day is 24 hours; '1 day' is a calendar day of the session's zone (shared/db.ts).
  const step = query.granularity === 'hour' ? '1 hour' : '24 hours';
  const columns = ['request_count', ...OUTCOMES.map((outcome) => `${outcome}_count`)];
  const counts = columns.join(', ');
  const sums = columns.map((column) => `coalesce(sum(h.${column}), 0) as ${column}`).join(', ');
  const keyFilter = query.keyId === undefined ? '' : 'and key_id = :keyId';
  const rows = await rawRows<{ start: Date | null; keys_used: number } & Record<'request_count' | `${Outcome}_count`, string>>(
    db,
    `select s.bucket as start, ${sums}, cast(count(distinct h.key_id) filter (where h.request_count > 0) as int) as keys_used
       from generate_series(${FIRST_BUCKET}, ${LAST_INSTANT}, cast(:step as interval)) as s(bucket)
       left join ${hourBuckets(`key_id, hour, ${counts}`, `org_id = :orgId ${keyFilter} and hour >= ${FIRST_HOUR} and hour < cast(:to as timestamptz)`)} h
         on date_bin(cast(:step as interval), h.hour, timestamptz '1970-01-01 00:00:00+00') = s.bucket
      group by grouping sets ((s.bucket), ())
      order by s.bucket nulls last`,
    { from: query.from, to: query.to, step, granularity: query.granularity, orgId: query.orgId, keyId: query.keyId ?? null },
  );
  const whole = rows.pop();
  return {
    buckets: rows.map((row) => ({
      start: row.start as Date,
      requestCount: exactCount(row.request_count),
      keysUsed: row.keys_used,
      outcomes: Object.fromEntries(OUTCOMES.map((outcome) => [outcome, exactCount(row[`${outcome}_count`])])) as Record<Outcome, Count>,
    })),
    keysUsed: whole?.keys_used ?? 0,
  };
}
