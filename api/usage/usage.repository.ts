import type { Db } from '../../shared/db';
import { OUTCOMES, type Outcome } from '../../shared/usageWire';
import type { Scope } from '../keys/scopes';

// The collector trims older addresses after each flush; the query caps them too in between.
const RECENT_IPS_SHOWN = 5;

export type UsageSort = 'createdAt' | 'lastUsedAt' | 'requestCount';

export interface RecentIp {
  ip: string;
  firstSeen: Date;
  lastSeen: Date;
  requestCount: number;
}

export interface KeyUsageRecord {
  keyId: string;
  name: string;
  displayPrefix: string;
  scopes: Scope[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
  lastUsedIp: string | null;
  requestCount: number;
  outcomes: Record<Outcome, number>;
  last24h: number;
  last7d: number;
  last30d: number;
  recentIps: RecentIp[];
}

export interface UsageQuery {
  orgId: string;
  now: Date;
  /** When set, only keys never used or last used before this instant. */
  dormantBefore: Date | null;
  sort: UsageSort;
  order: 'asc' | 'desc';
  limit: number;
  offset: number;
}

// Each sort as an expression over the page query's columns (inner) and over the page (outer).
const SORT_COLUMNS: Record<UsageSort, { inner: string; outer: string }> = {
  createdAt: { inner: 'k.created_at', outer: 'p.created_at' },
  lastUsedAt: { inner: 'u.last_used_at', outer: 'p.last_used_at' },
  requestCount: { inner: 'coalesce(u.request_count, 0)', outer: 'p.request_count' },
};

const outcomeColumns = OUTCOMES.map((outcome) => `coalesce(u.${outcome}_count, 0) as ${outcome}_count`).join(', ');

// One statement per page. The page is chosen first (filter, sort, limit over api_keys and
// api_key_usage only); the windows from the hourly buckets and the recent IPs are then joined
// through LATERAL to those rows alone, so the cost follows the page size, not the org's key count.
export async function listKeyUsage(db: Db, query: UsageQuery): Promise<{ keys: KeyUsageRecord[]; total: number }> {
  const dormantFilter = query.dormantBefore ? 'and (u.last_used_at is null or u.last_used_at < :dormantBefore)' : '';
  const bindings = { orgId: query.orgId, now: query.now, dormantBefore: query.dormantBefore, limit: query.limit, offset: query.offset };
  const direction = query.order === 'asc' ? 'asc nulls first' : 'desc nulls last';
  const sort = SORT_COLUMNS[query.sort];
  const keysOfOrg = `from api_keys k
         left join api_key_usage u on u.key_id = k.id and u.org_id = k.org_id
        where k.org_id = :orgId ${dormantFilter}`;
  const [rows, count] = await Promise.all([
    db.raw(
      `select p.*,
              cast(coalesce(w.last_24h, 0) as bigint) as last_24h, cast(coalesce(w.last_7d, 0) as bigint) as last_7d,
              cast(coalesce(w.last_30d, 0) as bigint) as last_30d,
              coalesce(ips.recent_ips, cast('[]' as json)) as recent_ips
         from (
           select k.id, k.name, k.display_prefix, k.scopes, k.created_at, k.expires_at, k.revoked_at,
                  u.last_used_at, u.last_used_ip, coalesce(u.request_count, 0) as request_count, ${outcomeColumns}
             ${keysOfOrg}
            order by ${sort.inner} ${direction}, k.id
            limit :limit offset :offset
         ) p
         left join lateral (
           select sum(h.request_count) filter (where h.hour > cast(:now as timestamptz) - interval '24 hours') as last_24h,
                  sum(h.request_count) filter (where h.hour > cast(:now as timestamptz) - interval '7 days') as last_7d,
                  sum(h.request_count) as last_30d
             from api_key_usage_hourly h
            where h.key_id = p.id and h.hour > cast(:now as timestamptz) - interval '30 days'
         ) w on true
         left join lateral (
           select json_agg(json_build_object('ip', r.ip, 'firstSeen', r.first_seen, 'lastSeen', r.last_seen, 'requestCount', r.request_count)
                           order by r.last_seen desc) as recent_ips
             from (select * from api_key_recent_ips where key_id = p.id order by last_seen desc limit ${RECENT_IPS_SHOWN}) r
         ) ips on true
        order by ${sort.outer} ${direction}, p.id`,
      bindings,
    ),
    db.raw(`select count(*) as total ${keysOfOrg}`, bindings),
  ]);
  return { keys: rows.rows.map(toKeyUsage), total: Number(count.rows[0].total) };
}

function toKeyUsage(row: Record<string, any>): KeyUsageRecord {
  return {
    keyId: row.id,
    name: row.name,
    displayPrefix: row.display_prefix,
    scopes: row.scopes,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsedAt: row.last_used_at,
    lastUsedIp: row.last_used_ip,
    requestCount: row.request_count,
    outcomes: Object.fromEntries(OUTCOMES.map((outcome) => [outcome, row[`${outcome}_count`]])) as Record<Outcome, number>,
    last24h: row.last_24h,
    last7d: row.last_7d,
    last30d: row.last_30d,
    recentIps: (row.recent_ips as Array<Record<string, any>>).map((ip) => ({
      ip: ip.ip,
      firstSeen: new Date(ip.firstSeen),
      lastSeen: new Date(ip.lastSeen),
      requestCount: Number(ip.requestCount),
    })),
  };
}

export type Granularity = 'hour' | 'day';

export async function keyTimeSeries(
  db: Db,
  query: { keyId: string; from: Date; to: Date; granularity: Granularity },
): Promise<Array<{ start: Date; requestCount: number }>> {
  const step = query.granularity === 'hour' ? '1 hour' : '1 day';
  const result = await db.raw(
    `select s.bucket as start, cast(coalesce(sum(h.request_count), 0) as bigint) as request_count
       from generate_series(date_trunc(:granularity, cast(:from as timestamptz), 'UTC'), cast(:to as timestamptz), cast(:step as interval)) as s(bucket)
       left join api_key_usage_hourly h
         on h.key_id = :keyId and h.hour >= s.bucket and h.hour < s.bucket + cast(:step as interval)
      group by s.bucket
      order by s.bucket`,
    { granularity: query.granularity, from: query.from, to: query.to, step, keyId: query.keyId },
  );
  return result.rows.map((row: { start: Date; request_count: number }) => ({ start: row.start, requestCount: row.request_count }));
}
