// The SQL of deferred key.new_ip events. The hourly limit (collector/eventRules.ts) defers the new
// networks over it: the flush marks them pending in the key's history (event_pending), and the
// time sweep raises their events in an hour with room, earliest first, even if the key is never
// used again. The networks stay known meanwhile, so a use from one raises nothing twice.
import type { Knex } from 'knex';
import type { PoolClient } from 'pg';
import { deferredNetworkEvents, HOUR_MS, type DeferredNetwork, type KeyEvent } from './eventRules';
import { TABLE } from '../shared/tables';

export type NetworkOfKey = Pick<DeferredNetwork, 'orgId' | 'keyId' | 'prefix'>;

/** At most this many pending networks a sweep: the others wait for the next one. */
export const DEFERRED_PER_SWEEP = 10_000;

// One statement per org, so that each stays on the org's shards on Citus. `p` names the three
// parameters in the caller's driver's style (pg's $n in the flush, knex's ? in the sweep).
const SET_PENDING = (pending: boolean, p: readonly [string, string, string]) => `
update ${TABLE.ipHistory} set event_pending = ${pending}
 where org_id = ${p[0]} and (key_id, prefix) in (select * from unnest(cast(${p[1]} as uuid[]), cast(${p[2]} as cidr[])))`;

function byOrg(networks: readonly NetworkOfKey[]): Array<[string, string[], string[]]> {
  const orgs = new Map<string, [string, string[], string[]]>();
  for (const { orgId, keyId, prefix } of networks) {
    const org = orgs.get(orgId) ?? orgs.set(orgId, [orgId, [], []]).get(orgId)!;
    org[1].push(keyId);
    org[2].push(prefix);
  }
  return [...orgs.values()];
}

/** In the flush's transaction; returns the statements it ran. */
export async function markDeferred(connection: PoolClient, networks: readonly NetworkOfKey[]): Promise<number> {
  const orgs = byOrg(networks);
  for (const values of orgs) await connection.query(SET_PENDING(true, ['$1', '$2', '$3']), values);
  return orgs.length;
}

// The earliest pending networks, by the partial index on first_seen: a sweep's cost is bounded by
// DEFERRED_PER_SWEEP, not by how many are pending (forged networks can fill every key's history).
// The key must still exist: the events' rows need its totals row.
const PENDING = `
select p.org_id, p.key_id, cast(p.prefix as text) as prefix, p.first_ip,
       cast(floor(extract(epoch from p.first_seen) * 1000) as float8) as first_seen_ms
  from ${TABLE.ipHistory} p
  join ${TABLE.apiKeys} k on k.org_id = p.org_id and k.id = p.key_id
 where p.event_pending
 order by p.first_seen, p.key_id, p.prefix
 limit :max`;

// The key.new_ip events of those keys already recorded in now's clock hour.
const RAISED_THIS_HOUR = `
select key_id, count(*) as events
  from ${TABLE.keyEvents}
 where key_id = any(cast(:keyIds as uuid[])) and type = 'key.new_ip' and occurred_at >= :hour and occurred_at < cast(:hour as timestamptz) + interval '1 hour'
 group by key_id`;

const INSERT_EVENTS = `
insert into ${TABLE.keyEvents} (org_id, key_id, type, occurred_at, details, dedupe_key)
select e.org_id, e.key_id, 'key.new_ip', :now, e.details, e.dedupe_key
  from unnest(cast(:orgIds as uuid[]), cast(:keyIds as uuid[]), cast(:details as jsonb[]), cast(:dedupeKeys as text[])) as e(org_id, key_id, details, dedupe_key)
 order by e.dedupe_key
on conflict (org_id, dedupe_key) do nothing`;

type PendingRow = { org_id: string; key_id: string; prefix: string; first_ip: string; first_seen_ms: number };

async function pendingEvents(trx: Knex.Transaction, now: Date, limit: number): Promise<KeyEvent[]> {
  const rows: PendingRow[] = (await trx.raw(PENDING, { max: DEFERRED_PER_SWEEP })).rows;
  if (rows.length === 0) return [];
  const keys = new Map<string, DeferredNetwork[]>();
  for (const row of rows) {
    const networks = keys.get(row.key_id) ?? keys.set(row.key_id, []).get(row.key_id)!;
    networks.push({ orgId: row.org_id, keyId: row.key_id, prefix: row.prefix, ip: row.first_ip, firstSeen: row.first_seen_ms });
  }
  const hour = new Date(now.getTime() - (now.getTime() % HOUR_MS));
  const counted: Array<{ key_id: string; events: string }> = (await trx.raw(RAISED_THIS_HOUR, { keyIds: [...keys.keys()], hour })).rows;
  const raised = new Map(counted.map((row) => [row.key_id, Number(row.events)]));
  return [...keys].flatMap(([keyId, networks]) => deferredNetworkEvents(networks, raised.get(keyId) ?? 0, limit, now.getTime()));
}

/**
 * In the sweep's transaction: raises the events of pending networks and clears them. Returns the
 * events new to key_events and their keys (a collector sweeping beside this one may have raised
 * the same: one row each, by their dedupe keys).
 */
export async function raiseDeferred(trx: Knex.Transaction, now: Date, limit: number): Promise<{ events: number; keys: NetworkOfKey[] }> {
  const events = await pendingEvents(trx, now, limit);
  if (events.length === 0) return { events: 0, keys: [] };
  const inserted = await trx.raw(INSERT_EVENTS, {
    now,
    orgIds: events.map((e) => e.orgId),
    keyIds: events.map((e) => e.keyId),
    details: events.map((e) => JSON.stringify(e.details)),
    dedupeKeys: events.map((e) => e.dedupeKey),
  });
  const raised = events.map(({ orgId, keyId, details }) => ({ orgId, keyId, prefix: details.prefix as string }));
  for (const values of byOrg(raised)) await trx.raw(SET_PENDING(false, ['?', '?', '?']), values);
  return { events: inserted.rowCount ?? 0, keys: raised };
}
