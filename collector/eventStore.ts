// The SQL of key events. In the flush: the IP-prefix history with the facts for the batch's keys,
// then the events themselves, each one set-based statement inside the flush's transaction (so an
// event is recorded exactly when its usage is). Beside the flush: the time-based sweep, retention,
// and trimming the history.
import type { Knex } from 'knex';
import type { PoolClient } from 'pg';
import { isoTimeSql, type Db } from '../shared/db';
import { IDLE_SINCE_SQL, dormantKeySql } from '../shared/dormancy';
import { latestGapEnd } from '../shared/collectorUptime';
import type { KeyUsageDelta } from './aggregator';
import { BASELINE_DAYS } from '../shared/keyEvents';
import { eventIdSql } from '../shared/eventId';
import { detectKeyEvents, type DetectionThresholds, type HourFacts, type KeyEvent, type KeyFacts } from './eventRules';
import { TABLE } from '../shared/tables';
import { copyChunks, msToTime, STAGED_KEY } from './flushStaging';
import { chunksWritten, type CopyBytes } from './copyBytes';
import { markDeferred, planDeferred, raiseDeferred, type NetworkOfKey } from './deferredNetworks';
import { earliestHour, eventsInCrowdedRooms, recordedRooms, recordedRoomsSql, withinOrgHourlyLimit } from './eventBudget';
import { DAY_MS } from '../shared/timeUnits';
import { failExpiredDeliveries } from './webhookStore';
import { durationInWords } from './webhookWorker';

export interface EventDetection extends DetectionThresholds {
  ipHistoryPerKey: number;
  /** EVENTS_MAX_PER_ORG_HOUR (collector/eventBudget.ts). */
  maxPerOrgHour: number;
}

// One statement over the flush's staging tables (collector/flushStaging.ts), which hold only
// keys that exist by now, so detection costs one round trip before its insert:
// 1. The batch's proven addresses fold into their /24 (IPv4) or /64 (IPv6) and are upserted into
//    the key's history. One household or cloud subnet is one network, so a client on DHCP or a
//    rotating IPv6 privacy address does not look new every day. Rows this statement inserted
//    (xmax = 0) are the networks the key never had, or forgot. last_seen moves only when it is an
//    hour behind: the bound forgets the least recently seen network, for which an hour's precision
//    is plenty, and a key used every second no longer costs a row write (and two index writes)
//    per flush. The networks that are not due are left out before the upsert (`due`), not only by
//    its WHERE: ON CONFLICT DO UPDATE locks the conflicting row even when the WHERE refuses the
//    update, and that lock is itself a write (the row's xmax, a WAL record) per network per flush.
//    Both tests subtract the two times: timestamptz minus an interval is only stable, and Citus
//    takes only immutable functions in ON CONFLICT … WHERE.
// 2. One row per (key, hour) the batch touched that may raise an event (MAY_RAISE), with the
//    key's totals repeated and its new networks as JSON. Times go back as epoch milliseconds
//    (float8): pg parsing two timestamps per row cost the 100 k-key flush ≈ 0.2 s of client CPU.
//    The 7-day baseline is read only for hours that reached spikeMinUses ($1): most keys never
//    pay for it. An hour's counts are summed over both bucket tables: a late use of an hour the
//    upkeep already moved has a current row beside the moved one. Keys with new networks also get
//    the key.new_ip events already recorded in those networks' hours (`raised`), which the rules'
//    hourly limit counts on, and how many networks deferred earlier still wait (`waiting`: the
//    history read before this statement's upsert, which sets no event_due_at), and when their
//    key.first_use occurred (`first_use`), whose networks they may be (eventRules.ts afterFirstUse).
// The key's bucket of `hour` in each of the two bucket tables (shared/tables.ts): at most
// one row in each, so plain joins on the primary keys, which Citus pushes down to the org's shards
// as it does every other join here (a UNION ALL under LATERAL it refuses).
const joinHours = (moved: string, current: string, hour: string) =>
  [
    [TABLE.usageHourly, moved],
    [TABLE.usageCurrentHours, current],
  ]
    .map(([table, alias]) => `left join ${table} ${alias} on ${alias}.org_id = x.org_id and ${alias}.key_id = x.key_id and ${alias}.hour = ${hour}`)
    .join('\n  ');
const bothHours = (column: string, moved: string, current: string) => `keyusage_add(coalesce(${moved}.${column}, 0), coalesce(${current}.${column}, 0))`;

// The rows detectKeyEvents (collector/eventRules.ts) can raise an event from; every other row is
// left in PostgreSQL. A key used from known networks, below every threshold, is nearly every key
// of a busy flush, and returning its facts only for them to raise nothing cost the 100 k-key flush
// the rows' transfer, pg's parsing of them and the rules' pass over each. Key-level tests hold for
// every hour row of the key; an hour-level test keeps only that hour, the only one it can fire in.
// u.request_count already includes this flush, so "no use before it" is u ≤ the batch's uses.
const MAY_RAISE = `(fresh.prefixes is not null
    or coalesce(u.request_count, 0) <= x.batch_uses
    or cardinality(k.expected_networks) > 0
    or x.last_revoked_use_ms is not null
    or x.last_expired_use_ms is not null
    or ${bothHours('request_count', 'h', 'c')} >= $1
    or (x.batch_failed > 0 and ${bothHours('bad_secret_count', 'h', 'c')} >= $2))`;

const FACTS = `
with r as (
  select r.org_id, r.key_id, r.ip, ${msToTime('r.first_seen_ms')} as first_seen, ${msToTime('r.last_seen_ms')} as last_seen,
         network(set_masklen(cast(r.ip as inet), case family(cast(r.ip as inet)) when 4 then 24 else 64 end)) as prefix
    from flush_ips r ${STAGED_KEY('r')}
   where r.proven
), grouped as (
  select org_id, key_id, prefix, (array_agg(ip order by first_seen))[1] as first_ip, min(first_seen) as first_seen, max(last_seen) as last_seen
    from r group by org_id, key_id, prefix
), due as (
  select g.org_id, g.key_id, g.prefix, g.first_ip, g.first_seen, g.last_seen
    from grouped g
    left join ${TABLE.ipHistory} seen on seen.org_id = g.org_id and seen.key_id = g.key_id and seen.prefix = g.prefix
   where seen.key_id is null or g.last_seen - seen.last_seen > interval '1 hour'
), upserted as (
  insert into ${TABLE.ipHistory} (org_id, key_id, prefix, first_ip, first_seen, last_seen)
  select org_id, key_id, prefix, first_ip, first_seen, last_seen from due order by key_id, prefix
  on conflict (org_id, key_id, prefix) do update set last_seen = excluded.last_seen
     where excluded.last_seen - ${TABLE.ipHistory}.last_seen > interval '1 hour'
  returning org_id, key_id, cast(prefix as text) as prefix, first_ip, first_seen, (xmax = 0) as inserted
), fresh as (
  select key_id, json_agg(json_build_object('prefix', prefix, 'ip', first_ip, 'firstSeen', first_seen)) as prefixes
    from upserted where inserted group by key_id
), fresh_hours as (
  select distinct org_id, key_id, floor(extract(epoch from first_seen) / 3600) as hour_index from upserted where inserted
), raised as (
  select key_id, json_agg(json_build_array(hour_index * 3600000, events)) as new_ip_events
    from (select h.key_id, h.hour_index, count(*) as events
            from fresh_hours h
            join ${TABLE.keyEvents} e on e.org_id = h.org_id and e.key_id = h.key_id and e.type = 'key.new_ip'
             and e.occurred_at >= to_timestamp(h.hour_index * 3600) and e.occurred_at < to_timestamp((h.hour_index + 1) * 3600)
           group by h.key_id, h.hour_index) counted
   group by key_id
), waiting as (
  select p.key_id, count(*) as networks
    from (select distinct org_id, key_id from fresh_hours) h
    join ${TABLE.ipHistory} p on p.org_id = h.org_id and p.key_id = h.key_id and p.event_due_at is not null
   group by p.key_id
), first_use as (
  select e.key_id, min(e.occurred_at) as occurred_at, min(e.created_at) as recorded_at
    from (select distinct org_id, key_id from fresh_hours) h
    join ${TABLE.keyEvents} e on e.org_id = h.org_id and e.key_id = h.key_id and e.type = 'key.first_use'
   group by e.key_id
)
select x.key_id, x.hour_ms, ${bothHours('request_count', 'h', 'c')} as uses, ${bothHours('bad_secret_count', 'h', 'c')} as failed,
       coalesce(u.request_count, 0) as request_count, cast(floor(extract(epoch from k.created_at) * 1000) as float8) as created_ms,
       cast(k.expected_networks as text[]) as expected_networks,
       cast(floor(extract(epoch from k.restorable_until) * 1000) as float8) as restorable_until_ms,
       case when ${bothHours('request_count', 'h', 'c')} >= $1 then
         array(select ${bothHours('request_count', 'b', 'bc')}
                 from generate_series(1, ${BASELINE_DAYS}) as d(n)
                 ${joinHours('b', 'bc', 'x.hour - make_interval(days => d.n)')}
                order by d.n)
       end as baseline,
       fresh.prefixes, raised.new_ip_events, coalesce(waiting.networks, 0) as networks_waiting,
       cast(floor(extract(epoch from first_use.occurred_at) * 1000) as float8) as first_use_ms,
       cast(floor(extract(epoch from now() - first_use.recorded_at) * 1000) as float8) as first_use_age_ms
  from (select f.org_id, f.key_id, f.hour_ms, ${msToTime('f.hour_ms')} as hour, f.bad_secret_count as batch_failed,
               s.request_count as batch_uses, s.last_revoked_use_ms, s.last_expired_use_ms
          from flush_hours f ${STAGED_KEY('f')}) x
  join ${TABLE.apiKeys} k on k.org_id = x.org_id and k.id = x.key_id
  left join ${TABLE.usage} u on u.org_id = x.org_id and u.key_id = x.key_id
  ${joinHours('h', 'c', 'x.hour')}
  left join fresh on fresh.key_id = x.key_id
  left join raised on raised.key_id = x.key_id
  left join waiting on waiting.key_id = x.key_id
  left join first_use on first_use.key_id = x.key_id
 where ${MAY_RAISE}`;

// Sorted by dedupe_key so two collectors inserting the same events lock them in the same order.
// An event's id is that of its dedupe key (shared/eventId.ts), but a key.new_ip's: its dedupe key
// names the network, which an erasure of the key's addresses takes from the row, and an id
// derived from it let anyone who read the id find the network again (2^24 tries for a /24, a
// review). On conflict with any unique index: two collectors inserting the same event at once
// collide on the derived id as well as on the dedupe key, and only a named arbiter is absorbed.
const INSERT_EVENTS = `
insert into ${TABLE.keyEvents} (id, org_id, key_id, type, occurred_at, details, dedupe_key)
select case when e.type = 'key.new_ip' then gen_random_uuid() else ${eventIdSql('e.org_id', 'e.dedupe_key')} end,
       e.org_id, e.key_id, e.type, ${msToTime('e.occurred_ms')}, e.details, e.dedupe_key
  from flush_events e
 order by e.dedupe_key
on conflict do nothing`;

const RECORDED_ROOMS = recordedRoomsSql('$1', '$2');

// Which of `events` are recorded already, by their dedupe keys (unique per org), from the rooms'
// earliest hour: the org-time index bounds the read to the events counted above (a repeat's dedupe
// key names its hour), where the dedupe keys alone read every event the orgs retain.
const ALREADY_RECORDED = `select org_id, dedupe_key from ${TABLE.keyEvents} where org_id = any($1) and occurred_at >= $2 and dedupe_key = any($3)`;

/** The events that fit in their orgs' hourly rooms (collector/eventBudget.ts), and the statements it took. */
async function withinLimit(connection: PoolClient, events: readonly KeyEvent[], limit: number): Promise<{ allowed: KeyEvent[]; statements: number }> {
  const orgIds = [...new Set(events.map((e) => e.orgId))];
  const from = new Date(earliestHour(events));
  const recorded = recordedRooms((await connection.query(RECORDED_ROOMS, [orgIds, from])).rows);
  const crowded = eventsInCrowdedRooms(events, recorded, limit);
  if (crowded.length === 0) return { allowed: withinOrgHourlyLimit(events, recorded.counts, limit), statements: 1 };
  const crowdedOrgs = [...new Set(crowded.map((e) => e.orgId))];
  const repeats = (await connection.query(ALREADY_RECORDED, [crowdedOrgs, from, crowded.map((e) => e.dedupeKey)])).rows;
  const known = new Set(repeats.map((row: { org_id: string; dedupe_key: string }) => `${row.org_id}|${row.dedupe_key}`));
  return {
    allowed: withinOrgHourlyLimit(
      events.filter((e) => !known.has(`${e.orgId}|${e.dedupeKey}`)),
      recorded.counts,
      limit,
    ),
    statements: 2,
  };
}

type PrefixJson = { prefix: string; ip: string; firstSeen: string };

async function readFacts(connection: PoolClient, { spikeMinUses, failedAttemptsPerHour }: DetectionThresholds): Promise<Map<string, KeyFacts>> {
  const result = await connection.query(FACTS, [spikeMinUses, failedAttemptsPerHour]);
  const facts = new Map<string, KeyFacts>();
  for (const row of result.rows as Array<Record<string, any>>) {
    let key = facts.get(row.key_id);
    if (key === undefined) {
      key = {
        requestCount: Number(row.request_count),
        createdAt: row.created_ms,
        expectedNetworks: row.expected_networks,
        hours: [],
        newPrefixes: ((row.prefixes ?? []) as PrefixJson[]).map((p) => ({ prefix: p.prefix, ip: p.ip, firstSeen: Date.parse(p.firstSeen) })),
        newIpEventsByHour: new Map((row.new_ip_events ?? []) as Array<[number, number]>),
        networksWaiting: Number(row.networks_waiting),
        firstUseAt: row.first_use_ms,
        firstUseAgeMs: row.first_use_age_ms,
        restorableUntil: row.restorable_until_ms,
      };
      facts.set(row.key_id, key);
    }
    const hour: HourFacts = { hour: row.hour_ms, uses: Number(row.uses), failed: Number(row.failed), baseline: row.baseline?.map(Number) ?? null };
    key.hours.push(hour);
  }
  return facts;
}

/** Returns how many were new (the others were already recorded within their window). */
async function insertEvents(connection: PoolClient, events: KeyEvent[]): Promise<number> {
  const line = (out: CopyBytes, e: KeyEvent) => out.line([e.orgId, e.keyId, e.type, e.occurredAt, JSON.stringify(e.details), e.dedupeKey]);
  await copyChunks(connection, 'flush_events', chunksWritten(events, line));
  return (await connection.query(INSERT_EVENTS)).rowCount ?? 0;
}

/** Detects and records the events of `keys`, whose rows this transaction has staged and written. */
export async function recordFlushEvents(
  connection: PoolClient,
  keys: KeyUsageDelta[],
  detection: EventDetection,
): Promise<{ statements: number; events: number; candidates: number; newNetworks: Array<Pick<KeyUsageDelta, 'orgId' | 'keyId'>> }> {
  if (keys.length === 0) return { statements: 0, events: 0, candidates: 0, newNetworks: [] };
  const facts = await readFacts(connection, detection);
  const deferred: NetworkOfKey[] = [];
  const events = keys.flatMap((k) => {
    const keyFacts = facts.get(k.keyId);
    return keyFacts ? detectKeyEvents(k, keyFacts, detection, (prefix) => deferred.push({ orgId: k.orgId, keyId: k.keyId, prefix })) : [];
  });
  const statements = 1 + (deferred.length > 0 ? await markDeferred(connection, deferred) : 0);
  // Keys whose network history gained a row: the only ones its trim needs.
  const newNetworks = keys.filter((k) => (facts.get(k.keyId)?.newPrefixes.length ?? 0) > 0).map(({ orgId, keyId }) => ({ orgId, keyId }));
  const candidates = facts.size;
  if (events.length === 0) return { statements, events: 0, candidates, newNetworks };
  const limited = await withinLimit(connection, events, detection.maxPerOrgHour);
  return { statements: statements + limited.statements + 2, events: await insertEvents(connection, limited.allowed), candidates, newNetworks };
}

// A UTC day: '1 day' is a calendar day of the session's zone (shared/db.ts).
const DAY = `interval '24 hours'`;

// Only an event whose threshold was crossed within EVENTS_RETENTION_DAYS is written: once retention
// deleted an event its dedupe key is gone, and an older crossing would be written again, with a new
// webhook delivery, once every retention period (a key dormant since before the window, at its
// first sweep). Retention deletes by occurred_at, the sweep's time, never before the crossing: an
// event it deleted crossed before this bound, and is not swept again (see expireOldEvents).
const RETAINED_FROM = `cast(:now as timestamptz) - make_interval(days => :retentionDays)`;
const SWEPT_AT = `date_trunc('milliseconds', cast(:now as timestamptz))`;

// occurred_at is kept to the millisecond (as the flush's times are) so the events cursor, which
// carries milliseconds, pages exactly. A swept event occurs when the sweep finds it, not at the
// moment its threshold was crossed (details.crossedAt): that moment may be days before the sweep
// (a key created 3 days before its expiry crosses the 7-day mark before it exists; a collector
// down for a week finds keys dormant since), and a poller reading `since` its last poll never saw
// an event dated before it.

// The swept events (key.dormant, key.expiring: no address in their dedupe keys) not recorded yet:
// an anti-join on the org's dedupe keys, a left join on org_id as the dormant one's on the usage
// tables (Citus refuses a correlated NOT EXISTS there). Without it a chunk's LIMIT would pick the
// same recorded keys again, and listing the orgs due would list every org with a dormant key.
const notRecorded = (select: string) => `
select e.*
  from (${select}) e
  left join ${TABLE.keyEvents} r on r.org_id = e.org_id and r.dedupe_key = e.dedupe_key
 where r.org_id is null`;

// One org's chunk of them, with the id of its dedupe key as the flush's (INSERT_EVENTS). ON
// CONFLICT still decides: a collector sweeping beside this one may have inserted the same.
const insertSwept = (due: string) => `
insert into ${TABLE.keyEvents} (id, org_id, key_id, type, occurred_at, details, dedupe_key)
select ${eventIdSql('e.org_id', 'e.dedupe_key')}, e.*
  from (${due}) e
 order by e.key_id
 limit :chunk
on conflict do nothing
returning org_id, key_id`;

// Dormant by the rule of shared/dormancy.ts, with its org's threshold, and as the dormant clean-up
// sees it: a key with uses in the usage log not folded yet, or set aside, is not dormant (the sweep
// paged for a key in use whose last use waited for its fold). An anti-join on the keys with uses
// waiting (at most a row per key): Citus refuses a subquery on distributed tables correlated with
// api_keys, a reference table, and a NOT IN over many rows is a scan per key once it outgrows
// work_mem. The dedupe key names the use (or rotation) it followed, so a key used or rotated
// again and left idle again raises a new event. A rotation is named only when it came after the
// last use and the creation, so the dedupe keys of events written before rotations counted stay;
// a restore (a key the clean-up revoked, given back) likewise.
// Times in an event's details are written as the API writes every time (isoTimeSql): the jsonb of
// a timestamptz is `2026-12-06T03:40:37+00:00`, which a receiver comparing it with the key's own
// expiresAt as text found different.
// usesMayHaveBeenLost: a collector gap (shared/collectorUptime.ts) ended after the key's idle time
// began, so a use in it was lost and the key may be in use: a receiver that revokes on key.dormant
// can hold back, as the clean-up does.
// `orgs` narrows the keys: every org when listing those with events due, one org for its chunk.
const dormantDue = (orgs: string) =>
  notRecorded(`
select k.org_id, k.id as key_id, 'key.dormant' as type,
       ${SWEPT_AT},
       jsonb_build_object('lastUsedAt', ${isoTimeSql('u.last_used_at')}, 'dormantDays', o.dormancy_days,
                          'crossedAt', ${isoTimeSql(`${IDLE_SINCE_SQL} + o.dormancy_days * ${DAY}`)},
                          'usesMayHaveBeenLost', ${IDLE_SINCE_SQL} < cast(:gapEnd as timestamptz)),
       'key.dormant:' || k.id || ':' || coalesce(cast(extract(epoch from u.last_used_at) * 1000 as bigint)::text, 'never')
         || case when k.rotated_at > coalesce(u.last_used_at, k.created_at)
                 then ':rotated:' || cast(extract(epoch from k.rotated_at) * 1000 as bigint) else '' end
         || case when k.restored_at > coalesce(u.last_used_at, k.created_at)
                 then ':restored:' || cast(extract(epoch from k.restored_at) * 1000 as bigint) else '' end as dedupe_key
  from ${TABLE.apiKeys} k
  join ${TABLE.organizations} o on o.id = k.org_id
  left join ${TABLE.usage} u on u.org_id = k.org_id and u.key_id = k.id
  left join (select org_id, key_id from ${TABLE.usageLog} union select org_id, key_id from ${TABLE.usageSetAside}) w
    on w.org_id = k.org_id and w.key_id = k.id
 where ${orgs}
   and ${dormantKeySql('cast(:now as timestamptz)', `cast(:now as timestamptz) - o.dormancy_days * ${DAY}`)}
   and ${IDLE_SINCE_SQL} + o.dormancy_days * ${DAY} >= ${RETAINED_FROM}
   and w.key_id is null`);

// A key created within a threshold of its expiry came within it when it was created.
const EXPIRING_CROSSED = `greatest(k.expires_at - t.days * ${DAY}, k.created_at)`;

// For each active key, the smallest threshold it has crossed (a key created 12 hours before its
// expiry gets the 1-day warning only, not a late 7-day one too).
const expiringDue = (orgs: string) =>
  notRecorded(`
select k.org_id, k.id as key_id, 'key.expiring' as type, ${SWEPT_AT},
       jsonb_build_object('expiresAt', ${isoTimeSql('k.expires_at')}, 'daysBefore', t.days,
                          'crossedAt', ${isoTimeSql(EXPIRING_CROSSED)}),
       'key.expiring:' || k.id || ':' || t.days || 'd:' || cast(extract(epoch from k.expires_at) * 1000 as bigint) as dedupe_key
  from ${TABLE.apiKeys} k
  cross join lateral (select min(d) as days from unnest(cast(:days as int[])) as d where k.expires_at - d * ${DAY} <= :now) t
 where ${orgs} and k.revoked_at is null and k.expires_at > :now and t.days is not null
   and ${EXPIRING_CROSSED} >= ${RETAINED_FROM}`);

const EVERY_ORG = 'true';
const ONE_ORG = 'k.org_id = :orgId';

// Reads only, so the scan of every org's keys holds no lock and writes nothing. Two statements, not
// a UNION of the two: each is the shape its chunk's INSERT … SELECT reads.
const ORGS_DUE = [dormantDue(EVERY_ORG), expiringDue(EVERY_ORG)].map((due) => `select distinct org_id from (${due}) d`);
const SWEEP_DORMANT = insertSwept(dormantDue(ONE_ORG));
const SWEEP_EXPIRING = insertSwept(expiringDue(ONE_ORG));

// A key's rows in key_events go with its api_key_usage row (migrations/20261201000080): a key
// never used has none, so the sweep writes a zero one for each key it recorded an event for, in
// the same transaction. Its no-op update locks an existing row, as the insert's foreign-key check
// locks the key: an operator's DELETE of the key meanwhile waits for this commit and then takes
// the events too, or commits first and makes this transaction fail (retried at the next sweep).
const ANCHOR_TOTALS = `
insert into ${TABLE.usage} (org_id, key_id)
select * from unnest(cast(? as uuid[]), cast(? as uuid[])) as k(org_id, key_id)
 order by key_id
on conflict (org_id, key_id) do update set updated_at = ${TABLE.usage}.updated_at`;

type SweptKey = { org_id: string; key_id: string };

async function anchorTotals(trx: Knex.Transaction, swept: readonly SweptKey[]): Promise<void> {
  const keys = [...new Map(swept.map((k) => [`${k.org_id}/${k.key_id}`, k])).values()];
  if (keys.length > 0) await trx.raw(ANCHOR_TOTALS, [keys.map((k) => k.org_id), keys.map((k) => k.key_id)]);
}

/**
 * At most this many keys' swept events a transaction, each of one org. Each event inserts a
 * delivery per webhook of its org in the same transaction (the outbox trigger): an org of 20,000
 * keys expiring together with 20 webhooks held every org's events in one 185-second sweep, which
 * past DATABASE_REPLY_TIMEOUT_MS would roll back and repeat. A constant, not a setting yet.
 */
export const SWEEP_KEYS_PER_TRANSACTION = 5_000;

type TimeBindings = { now: Date; days: number[]; retentionDays: number; gapEnd: Date | string };
type Swept = { dormant: number; expiring: number };

// One org's chunk, dormant first, the expiring ones in the room left, so a transaction writes the
// events of at most `chunk` keys.
function sweepOrgChunk(db: Db, orgId: string, bindings: TimeBindings, chunk: number): Promise<Swept> {
  return db.transaction(async (trx) => {
    const dormant: SweptKey[] = (await trx.raw(SWEEP_DORMANT, { ...bindings, orgId, chunk })).rows;
    const room = chunk - dormant.length;
    const expiring: SweptKey[] = room > 0 ? (await trx.raw(SWEEP_EXPIRING, { ...bindings, orgId, chunk: room })).rows : [];
    await anchorTotals(trx, [...dormant, ...expiring]);
    return { dormant: dormant.length, expiring: expiring.length };
  });
}

async function orgsDue(db: Db, bindings: TimeBindings): Promise<string[]> {
  const orgs = new Set<string>();
  for (const sql of ORGS_DUE) for (const row of (await db.raw(sql, bindings)).rows as Array<{ org_id: string }>) orgs.add(row.org_id);
  return [...orgs].sort();
}

// The orgs with events due take turns, a chunk each a round, as the deferred networks share a
// sweep (collector/deferredNetworks.ts), so a small org's event waits for one chunk of a big
// org's, not for all of them. An org stays for the next round while it filled its chunk: each
// round writes at least a chunk, so the sweep ends. A chunk a collector sweeping beside this one
// took part of ends its org's turns here; that collector goes on, or the next sweep does.
async function sweepKeysInTurns(db: Db, bindings: TimeBindings, chunk: number): Promise<Swept> {
  const total: Swept = { dormant: 0, expiring: 0 };
  let orgs = await orgsDue(db, bindings);
  while (orgs.length > 0) {
    const full: string[] = [];
    for (const orgId of orgs) {
      const swept = await sweepOrgChunk(db, orgId, bindings, chunk);
      total.dormant += swept.dormant;
      total.expiring += swept.expiring;
      if (swept.dormant + swept.expiring === chunk) full.push(orgId);
    }
    orgs = full;
  }
  return total;
}

// Bounded on their own: DEFERRED_PER_SWEEP networks, at most EVENTS_MAX_PER_ORG_HOUR of an org.
function sweepDeferred(db: Db, now: Date, newIpPerKeyHour: number, maxPerOrgHour: number | undefined): Promise<number> {
  return db.transaction(async (trx) => {
    const deferred = await planDeferred(trx, now, newIpPerKeyHour, maxPerOrgHour);
    // Before the deferred networks' rows, the keys postponed too: a flush locks a key's totals row,
    // then its history rows (in key and network order, the postponement in due order).
    await anchorTotals(
      trx,
      [...deferred.raise, ...deferred.postpone].map((k) => ({ org_id: k.orgId, key_id: k.keyId })),
    );
    return raiseDeferred(trx, deferred, now, newIpPerKeyHour);
  });
}

/** The time-based events, and key.new_ip events the hourly limit deferred; returns how many were new. */
export async function sweepTimeEvents(
  db: Db,
  now: Date,
  {
    expiringDays,
    retentionDays,
    newIpPerKeyHour,
    maxPerOrgHour,
    keysPerTransaction = SWEEP_KEYS_PER_TRANSACTION,
  }: { expiringDays: readonly number[]; retentionDays: number; newIpPerKeyHour: number; maxPerOrgHour?: number; keysPerTransaction?: number },
): Promise<{ dormant: number; expiring: number; newIp: number }> {
  const gapEnd = await latestGapEnd(db, now);
  const swept = await sweepKeysInTurns(db, { now, days: [...expiringDays], retentionDays, gapEnd }, keysPerTransaction);
  return { ...swept, newIp: await sweepDeferred(db, now, newIpPerKeyHour, maxPerOrgHour) };
}

// Events, and the webhook deliveries made of them: their payloads copy the events' details, IPs
// included, so they must not outlive them. Attempts go with their delivery (ON DELETE CASCADE).
// An event is kept a day past EVENTS_RETENTION_DAYS: each collector runs retention and the sweep on
// its own clock, and a sweep on a clock 15 minutes behind the retention's wrote an event retention
// had just deleted again, with a webhook delivery (a review). Any clock less than a day behind now
// finds the crossing outside its window (RETAINED_FROM). The day is not taken from the sweep's
// window: with a retention of 1 day it left none.
// A delivery still pending then is failed, unsent: retries waiting (up to 85 days with
// WEBHOOK_MAX_ATTEMPTS and WEBHOOK_RETRY_BASE_MS at their maximum), put back unsent (a secret
// unopened, lookups busy) or never claimed (an org's backlog), it kept the copy with no end. Failed
// after the delete, it stays in its webhook's delivery log until the next run, which deletes it
// before its event goes (a day later). Returns how many were failed.
export async function expireOldEvents(db: Db, now: Date, retentionDays: number): Promise<number> {
  await db.raw(`delete from ${TABLE.keyEvents} where occurred_at < cast(? as timestamptz) - make_interval(days => ?) - ${DAY}`, [now, retentionDays]);
  const madeBefore = new Date(now.getTime() - retentionDays * DAY_MS);
  await db.raw(`delete from ${TABLE.webhookDeliveries} where status <> 'pending' and created_at < ?`, [madeBefore]);
  return failExpiredDeliveries(db, madeBefore, now, expiredUnsent(retentionDays));
}

const expiredUnsent = (retentionDays: number) =>
  `nothing more was sent: the delivery was still pending ${durationInWords(retentionDays * DAY_MS)} after it was made (EVENTS_RETENTION_DAYS), ` +
  "and its payload copies its event's details, which are kept no longer; it is deleted at the next retention run";
