// The SQL of deferred key.new_ip events. The hourly limit (collector/eventRules.ts) defers the new
// networks over it: the flush makes them due in the key's history (event_due_at), and the time
// sweep raises their events in an hour with room, earliest first use first, even if the key is
// never used again. The networks stay known meanwhile, so a use from one raises nothing twice.
import type { Knex } from 'knex';
import type { PoolClient } from 'pg';
import { HOUR_MS, hourOf } from '../shared/timeUnits';
import { deferredNetworkEvents, type DeferredNetwork } from './eventRules';
import { TABLE } from '../shared/tables';
import { orgHourRoom, recordedRooms, recordedRoomsSql } from './eventBudget';

export type NetworkOfKey = Pick<DeferredNetwork, 'orgId' | 'keyId' | 'prefix'>;

/** At most this many due networks a sweep, shared by the orgs with room: the others wait for the next one. */
export const DEFERRED_PER_SWEEP = 10_000;

// Each statement that changes history rows runs per org, so that it stays on the org's shards on
// Citus. The rows are named by (key_id, prefix) arrays.
const ROWS_OF_ORG = (p: readonly [string, string, string]) =>
  `org_id = ${p[0]} and (key_id, prefix) in (select * from unnest(cast(${p[1]} as uuid[]), cast(${p[2]} as cidr[])))`;

// In org id order: two flushes listing the same two orgs in deferred_network_orgs for the first
// time in opposite orders each waited for the other's insert.
function byOrg(networks: readonly NetworkOfKey[]): Array<[string, string[], string[]]> {
  const orgs = new Map<string, [string, string[], string[]]>();
  for (const { orgId, keyId, prefix } of networks) {
    const org = orgs.get(orgId) ?? orgs.set(orgId, [orgId, [], []]).get(orgId)!;
    org[1].push(keyId);
    org[2].push(prefix);
  }
  return [...orgs.values()].sort(([a], [b]) => (a < b ? -1 : 1));
}

// Due at once: the sweep, not the flush, decides whether the hour has room. first_seen, not a
// clock: the flush has none of its own in SQL. The org joins the orgs the sweep reads
// (migration 20261205000170), in the same statement, on the org's shard: ON CONFLICT DO NOTHING
// takes no lock on a row already there, and waits only for another flush adding the same org
// for the first time.
const DEFER = `
with listed as (insert into ${TABLE.deferredNetworkOrgs} (org_id) values ($1) on conflict do nothing)
update ${TABLE.ipHistory} set event_due_at = first_seen where ${ROWS_OF_ORG(['$1', '$2', '$3'])}`;

/** In the flush's transaction; returns the statements it ran. */
export async function markDeferred(connection: PoolClient, networks: readonly NetworkOfKey[]): Promise<number> {
  const orgs = byOrg(networks);
  for (const values of orgs) await connection.query(DEFER, values);
  return orgs.length;
}

// The orgs with due networks, earliest due first, one probe each of the partial index on
// (org_id, event_due_at, first_seen). Each org with room in the hour then gets its share of the
// sweep, read on its own: an org with more deferred networks than its hour's room no longer fills
// every sweep's window ahead of the others, and one whose hour is full is not read (nor rewritten).
// Both start from deferred_network_orgs: Citus pushes a LATERAL with a LIMIT down to the shards
// only from a table distributed by the same column.
const DUE_ORGS = `
select o.org_id
  from ${TABLE.deferredNetworkOrgs} o
 cross join lateral (select p.event_due_at from ${TABLE.ipHistory} p
                      where p.org_id = o.org_id and p.event_due_at <= :now
                      order by p.event_due_at
                      limit 1) due
 order by due.event_due_at, o.org_id
 limit :max`;

// Each org's earliest due networks. A key without room in this hour has its rows postponed to the
// next, so it does not hold its org's share for the others. The key must still exist: the events'
// rows need its totals row.
const DUE = `
select due.*
  from ${TABLE.deferredNetworkOrgs} o
 cross join lateral (select p.org_id, p.key_id, cast(p.prefix as text) as prefix,
                            cast(floor(extract(epoch from p.first_seen) * 1000) as float8) as first_seen_ms
                       from ${TABLE.ipHistory} p
                       join ${TABLE.apiKeys} k on k.org_id = p.org_id and k.id = p.key_id
                      where p.org_id = o.org_id and p.event_due_at <= :now
                      order by p.event_due_at, p.first_seen, p.key_id, p.prefix
                      limit :share) due
 where o.org_id = any(cast(:orgIds as uuid[]))`;

// The key.new_ip events of those keys already recorded in now's clock hour.
const RAISED_THIS_HOUR = `
select key_id, count(*) as events
  from ${TABLE.keyEvents}
 where key_id = any(cast(:keyIds as uuid[])) and type = 'key.new_ip' and occurred_at >= :hour and occurred_at < cast(:hour as timestamptz) + interval '1 hour'
 group by key_id`;

// Takes the rows to raise out of the due ones. Rows an erasure or a deletion took meanwhile are not
// returned (the update waits for that transaction, then finds them gone), so no event carries an
// address erased after the sweep read it. first_seen as it is: Citus takes only immutable functions
// in a RETURNING.
const CLAIM = `
update ${TABLE.ipHistory} set event_due_at = null
 where ${ROWS_OF_ORG(['?', '?', '?'])} and event_due_at is not null
returning org_id, key_id, cast(prefix as text) as prefix, first_ip, first_seen`;

const POSTPONE = `update ${TABLE.ipHistory} set event_due_at = ? where ${ROWS_OF_ORG(['?', '?', '?'])} and event_due_at is not null`;

// A random id (the column's default), never one derived from the dedupe key, which names the
// network (collector/eventStore.ts, INSERT_EVENTS).
const INSERT_EVENTS = `
insert into ${TABLE.keyEvents} (org_id, key_id, type, occurred_at, details, dedupe_key)
select e.org_id, e.key_id, 'key.new_ip', :now, e.details, e.dedupe_key
  from unnest(cast(:orgIds as uuid[]), cast(:keyIds as uuid[]), cast(:details as jsonb[]), cast(:dedupeKeys as text[])) as e(org_id, key_id, details, dedupe_key)
 order by e.dedupe_key
on conflict do nothing`;

type DueRow = { org_id: string; key_id: string; prefix: string; first_seen_ms: number };
type ClaimedRow = Omit<DueRow, 'first_seen_ms'> & { first_ip: string; first_seen: Date };

/** What a sweep will do with the due networks it read: raise the earliest up to each key's room, postpone the rest. */
export interface DeferredPlan {
  raise: NetworkOfKey[];
  postpone: NetworkOfKey[];
  /** key.new_ip events already recorded this hour, by key id. */
  raised: ReadonlyMap<string, number>;
}

const RECORDED_ROOMS = recordedRoomsSql('cast(:orgIds as uuid[])', ':hour');

/**
 * Reads only: the caller anchors every key of the plan before raiseDeferred takes their rows (lock
 * order). `limit` is each key's room in the hour, `orgLimit` (EVENTS_MAX_PER_ORG_HOUR) each org's
 * for such events: a network without room in either waits for the next hour (postponed when its
 * key is full, left due when its org is), not dropped.
 */
export async function planDeferred(trx: Knex.Transaction, now: Date, limit: number, orgLimit = Infinity): Promise<DeferredPlan> {
  const hour = hourOf(now.getTime());
  const dueOrgs: string[] = (await trx.raw(DUE_ORGS, { now, max: DEFERRED_PER_SWEEP })).rows.map((row: { org_id: string }) => row.org_id);
  if (dueOrgs.length === 0) return { raise: [], postpone: [], raised: new Map() };
  const orgRecorded = recordedRooms((await trx.raw(RECORDED_ROOMS, { orgIds: dueOrgs, hour: new Date(hour) })).rows);
  const recordedIn = (orgId: string) => orgRecorded.counts.get(orgHourRoom(orgId, hour, 'routine')) ?? 0;
  const orgIds = dueOrgs.filter((orgId) => recordedIn(orgId) < orgLimit);
  if (orgIds.length === 0) return { raise: [], postpone: [], raised: new Map() };
  const share = Math.max(1, Math.floor(DEFERRED_PER_SWEEP / orgIds.length));
  const rows: DueRow[] = (await trx.raw(DUE, { now, orgIds, share })).rows;
  const keyIds = [...new Set(rows.map((row) => row.key_id))];
  const counted: Array<{ key_id: string; events: string }> = (await trx.raw(RAISED_THIS_HOUR, { keyIds, hour: new Date(hour) })).rows;
  const raised = new Map(counted.map((row) => [row.key_id, Number(row.events)]));
  const plan: DeferredPlan = { raise: [], postpone: [], raised };
  const taken = new Map<string, number>();
  const takenInOrg = new Map<string, number>();
  // Each key's room goes to its earliest first uses. DUE's order is by due time, and a row deferred
  // in an hour's last minute (due then) sorts before an older one postponed to the next hour's
  // start, where it took that hour's room first.
  for (const { org_id: orgId, key_id: keyId, prefix } of rows.sort((a, b) => a.first_seen_ms - b.first_seen_ms)) {
    const keyRoom = limit - (raised.get(keyId) ?? 0) - (taken.get(keyId) ?? 0);
    const orgRoom = orgLimit - recordedIn(orgId) - (takenInOrg.get(orgId) ?? 0);
    // Without room in its org's hour it is left as it is: the org is not read again this hour.
    if (orgRoom <= 0) continue;
    if (keyRoom <= 0) {
      plan.postpone.push({ orgId, keyId, prefix });
      continue;
    }
    taken.set(keyId, (taken.get(keyId) ?? 0) + 1);
    takenInOrg.set(orgId, (takenInOrg.get(orgId) ?? 0) + 1);
    plan.raise.push({ orgId, keyId, prefix });
  }
  return plan;
}

/**
 * In the sweep's transaction, after planDeferred and the anchoring of the plan's keys: raises
 * the events of the planned networks still due, and postpones the others to the next hour.
 * Returns the events new to key_events (a collector sweeping beside this one may have raised the
 * same: one row each, by their dedupe keys).
 */
export async function raiseDeferred(trx: Knex.Transaction, plan: DeferredPlan, now: Date, limit: number): Promise<number> {
  for (const values of byOrg(plan.postpone)) await trx.raw(POSTPONE, [new Date(hourOf(now.getTime()) + HOUR_MS), ...values]);
  const claimed: ClaimedRow[] = [];
  for (const values of byOrg(plan.raise)) claimed.push(...(await trx.raw(CLAIM, values)).rows);
  const keys = new Map<string, DeferredNetwork[]>();
  for (const row of claimed) {
    const networks = keys.get(row.key_id) ?? keys.set(row.key_id, []).get(row.key_id)!;
    networks.push({ orgId: row.org_id, keyId: row.key_id, prefix: row.prefix, ip: row.first_ip, firstSeen: row.first_seen.getTime() });
  }
  const events = [...keys].flatMap(([keyId, networks]) => deferredNetworkEvents(networks, plan.raised.get(keyId) ?? 0, limit, now.getTime()));
  if (events.length === 0) return 0;
  const inserted = await trx.raw(INSERT_EVENTS, {
    now,
    orgIds: events.map((e) => e.orgId),
    keyIds: events.map((e) => e.keyId),
    details: events.map((e) => JSON.stringify(e.details)),
    dedupeKeys: events.map((e) => e.dedupeKey),
  });
  return inserted.rowCount ?? 0;
}
