import { isoTimeSql, type Db } from './db';
import { IP_DETAIL_FIELDS } from './keyEvents';
import { TABLE } from './tables';
import { deltaIpsSql, lockOrgFolds } from './usageLogDelta';

// Every place the database keeps a client IP address, so that the retention job (the collector,
// hourly) and `npm run cli -- key erase-ips` cover all of them. A new table or column holding IPs
// joins this list, and both follow.
//   rows:    the row exists only for its address: deleted.
//   columns: the address is one field of a row that stays: set to null, or to `erasedTo` (an SQL
//            expression) where the column cannot be null.
//   details: key events and the webhook deliveries made of them keep the event and its other
//            details; the fields in IP_DETAIL_FIELDS become JSON null.
//   log:     a usage log row not yet folded keeps its counts; its addresses go (usageLogDelta).
// keyColumn and seenColumn are SQL expressions (a column name, or a path into a payload): the
// key whose addresses they are, and when the address was seen.

export type IpHolder =
  | { kind: 'rows'; table: string; keyColumn: string; seenColumn: string; only?: string }
  | { kind: 'columns'; table: string; keyColumn: string; columns: Array<{ ip: string; seenColumn: string; erasedTo?: string }> }
  | {
      kind: 'details';
      table: string;
      keyColumn: string;
      seenColumn: string;
      /** seenColumn is an ISO 8601 UTC text of fixed width (toISOString's), compared as text. */
      seenIsIsoText?: true;
      column: string;
      path: string | null;
      dedupe?: { column: string; erased: string };
    }
  | { kind: 'log'; table: string; keyColumn: string; seenColumn: string; column: string };

// A new-network event's dedupe key names its network (key.new_ip:<key>:<prefix>:<first seen>):
// it goes too, for a key of its own that names the event instead. Casts, not uuid || text (a
// stable operator): Citus refuses a non-immutable function in an UPDATE's CASE.
const NEW_IP_DEDUPE_ERASED = {
  column: 'dedupe_key',
  erased: "case when type = 'key.new_ip' then 'key.new_ip:' || cast(key_id as text) || ':erased:' || cast(id as text) else dedupe_key end",
};

export const IP_HOLDERS: readonly IpHolder[] = [
  { kind: 'rows', table: TABLE.recentIps, keyColumn: 'key_id', seenColumn: 'last_seen' },
  { kind: 'rows', table: TABLE.failedIps, keyColumn: 'key_id', seenColumn: 'last_seen' },
  // The networks key.new_ip remembers, with the first address seen in each: forgetting one means
  // a later use from it is reported as new again.
  { kind: 'rows', table: TABLE.ipHistory, keyColumn: 'key_id', seenColumn: 'last_seen' },
  // A network still in use keeps its row, whose first address was seen when the network was: kept
  // by last_seen alone, it outlived the setting for as long as anyone in the network used the key
  // (and a deferred key.new_ip raised later carried it). It becomes the network's own address.
  { kind: 'columns', table: TABLE.ipHistory, keyColumn: 'key_id', columns: [{ ip: 'first_ip', seenColumn: 'first_seen', erasedTo: 'host(prefix)' }] },
  {
    kind: 'columns',
    table: TABLE.usage,
    keyColumn: 'key_id',
    columns: [
      { ip: 'last_used_ip', seenColumn: 'last_used_at' },
      { ip: 'last_failed_ip', seenColumn: 'last_failed_at' },
      { ip: 'previous_secret_last_used_ip', seenColumn: 'previous_secret_last_used_at' },
    ],
  },
  // The acting key's address; the audit log's triggers allow this one change (ip to null). Its
  // details hold no client address (names, scopes, dates, counts, configured networks).
  { kind: 'columns', table: TABLE.auditLog, keyColumn: 'actor_key_id', columns: [{ ip: 'ip', seenColumn: 'occurred_at' }] },
  // Its dedupe key names the network of a key.new_ip: NEW_IP_DEDUPE_ERASED.
  {
    kind: 'details',
    table: TABLE.keyEvents,
    keyColumn: 'key_id',
    seenColumn: 'occurred_at',
    column: 'details',
    path: null,
    dedupe: NEW_IP_DEDUPE_ERASED,
  },
  // A key.new_ip the hourly limit deferred occurs when the sweep raises it, hours or days after
  // its network's first use, whose address it carries: kept by occurred_at alone, that address
  // outlived IP_RETENTION_DAYS by as long as the event waited (found by a review). Such an event
  // goes by its details' firstSeen too (toISOString's text, compared as text, as the payloads).
  {
    kind: 'details',
    table: TABLE.keyEvents,
    keyColumn: 'key_id',
    seenColumn: `(details->>'firstSeen') collate "C"`,
    seenIsIsoText: true,
    column: 'details',
    path: null,
    dedupe: NEW_IP_DEDUPE_ERASED,
  },
  // The payload is a snapshot of the event (a ping's details hold no address). A delivery, pending
  // or finished, is kept EVENTS_RETENTION_DAYS (collector/eventStore.ts, expireOldEvents): with a
  // shorter IP_RETENTION_DAYS its addresses go here first, and a retry sends the rest. The time is
  // compared as text: a cast to timestamptz is a stable function, which Citus refuses on a column
  // in an UPDATE (every hourly run failed there).
  {
    kind: 'details',
    table: TABLE.webhookDeliveries,
    keyColumn: "payload->>'keyId'",
    seenColumn: '(payload->>\'occurredAt\') collate "C"',
    seenIsIsoText: true,
    column: 'payload',
    path: 'details',
  },
  // A deferred key.new_ip's deliveries, by its first use, as its event.
  {
    kind: 'details',
    table: TABLE.webhookDeliveries,
    keyColumn: "payload->>'keyId'",
    seenColumn: `(payload->'details'->>'firstSeen') collate "C"`,
    seenIsIsoText: true,
    column: 'payload',
    path: 'details',
  },
  // Log rows a fold could not read, kept for a collector that can: their addresses cannot be
  // found in a delta of an unknown form, so the row goes whole. (The deltas of keys PostgreSQL
  // refused are set aside without addresses, and stay.) Before the log: a requeue
  // (shared/usageLogDelta.ts) moving a row into the log as this runs either commits first, and the
  // log's statement, begun after this one waited for it, sees the row there; or finds the row
  // deleted here. The other order let a requeue carry a row past both statements.
  { kind: 'rows', table: TABLE.usageSetAside, keyColumn: 'key_id', seenColumn: 'logged_at', only: "reason = 'unreadable'" },
  // Uses appended by a collector with COLLECTOR_USAGE_LOG and not yet folded: without this, a
  // fold after an erasure would write the erased addresses back.
  { kind: 'log', table: TABLE.usageLog, keyColumn: 'key_id', seenColumn: 'logged_at', column: 'delta' },
];

/** Rows deleted and fields cleared per table. */
export type ErasedIps = Record<string, number>;

type Query = ReturnType<Db>;

// The details object with every address field set to JSON null, and whether it has one to erase.
function detailsSql(holder: Extract<IpHolder, { kind: 'details' }>) {
  const details = holder.path === null ? holder.column : `${holder.column} -> '${holder.path}'`;
  const fields = `array[${IP_DETAIL_FIELDS.map((field) => `'${field}'`).join(', ')}]`;
  const redacted = `(select jsonb_object_agg(f.key, case when f.key = any(${fields}) then 'null'::jsonb else f.value end) from jsonb_each(${details}) f)`;
  return {
    holdsIp: `jsonb_typeof(${details}) = 'object' and exists (select 1 from jsonb_each(${details}) f where f.key = any(${fields}) and f.value <> 'null'::jsonb)`,
    erased: holder.path === null ? redacted : `jsonb_set(${holder.column}, '{${holder.path}}', ${redacted})`,
  };
}

// One statement per table (and column). Hourly, each run finds about an hour's worth of newly
// expired addresses. `where` narrows the query it is given and returns it.
//
// `eachOnItsOwn` (the hourly run, not in a transaction): a statement that fails (timed out, locked
// out, refused) no longer ends the run; every other table is still erased, and the run then fails
// naming the tables that were not. The first failure used to end it: an audit log too long to read
// within DATABASE_REPLY_TIMEOUT_MS kept every table after it (events, deliveries, usage log) from
// ever being erased again. In a transaction (an erasure request) the first failure ends it: every
// later statement would be refused, and all of it rolls back.
async function erase(
  db: Db,
  where: (query: Query, keyColumn: string, seenColumn: string, seenIsIsoText?: true) => Query,
  eachOnItsOwn = false,
): Promise<ErasedIps> {
  const erased: ErasedIps = {};
  const failed = new Map<string, Error>();
  for (const holder of IP_HOLDERS) {
    erased[holder.table] ??= 0;
    try {
      await eraseHolder(db, holder, where, (count) => (erased[holder.table] += count));
    } catch (error) {
      if (!eachOnItsOwn) throw error;
      if (!failed.has(holder.table)) failed.set(holder.table, error as Error);
    }
  }
  if (failed.size > 0) throw new IpErasureError(failed);
  return erased;
}

/** An hourly run that could not erase every table (`failed`, by table); the others were erased. */
export class IpErasureError extends Error {
  constructor(readonly failed: ReadonlyMap<string, Error>) {
    super(`IP addresses not erased in ${[...failed].map(([table, error]) => `${table} (${error.message})`).join(', ')}; the other tables were`, {
      cause: [...failed.values()][0],
    });
    this.name = 'IpErasureError';
  }
}

// `count` is told each statement's rows as it ends: a holder of several columns may fail after
// some were cleared.
async function eraseHolder(db: Db, holder: IpHolder, where: Parameters<typeof erase>[1], count: (rows: number) => void): Promise<void> {
  if (holder.kind === 'rows') {
    const rows = holder.only === undefined ? db(holder.table) : db(holder.table).whereRaw(holder.only);
    count(await where(rows, holder.keyColumn, holder.seenColumn).del());
  } else if (holder.kind === 'log') {
    const sql = deltaIpsSql(holder.column);
    count(await where(db(holder.table).whereRaw(sql.holdsIp), holder.keyColumn, holder.seenColumn).update({ [holder.column]: db.raw(sql.erased) }));
  } else if (holder.kind === 'details') {
    const sql = detailsSql(holder);
    const query = where(db(holder.table).whereRaw(sql.holdsIp), holder.keyColumn, holder.seenColumn, holder.seenIsIsoText);
    const dedupe = holder.dedupe ? { [holder.dedupe.column]: db.raw(holder.dedupe.erased) } : {};
    count(await query.update({ [holder.column]: db.raw(sql.erased), ...dedupe }));
  } else {
    for (const { ip, seenColumn, erasedTo } of holder.columns) {
      const holding = erasedTo === undefined ? db(holder.table).whereNotNull(ip) : db(holder.table).whereRaw(`${ip} <> ${erasedTo}`);
      count(await where(holding, holder.keyColumn, seenColumn).update({ [ip]: erasedTo === undefined ? null : db.raw(erasedTo) }));
    }
  }
}

// The network of an address, as the flush files it in the history (collector/eventStore.ts). A
// searched CASE: Citus deparsed the simple form (case family(…) when 4) in an UPDATE's subquery
// into integer = boolean, and every run failed.
const networkSql = (ip: string) => `network(set_masklen(cast(${ip} as inet), case when family(cast(${ip} as inet)) = 4 then 24 else 64 end))`;

// A network's last_seen in the history moves only once it is an hour behind (collector/eventStore.ts),
// so it trails the network's last use by up to 59 minutes: the delete took a network used within
// the setting, and its next use raised a false key.new_ip (found by a review). The recent
// addresses' times are exact: the history rows within that hour of the cut-off first take the
// newest last_seen of their network's recent addresses. Within the hour, not only past the
// cut-off: the delete reads now() again, later. Joined on org_id (co-located on Citus), through a
// subquery grouped by it, which Citus pushes down to each shard.
function catchUpNetworksInUse(db: Db, cutoff: string, retentionDays: number) {
  return db.raw(
    `update ${TABLE.ipHistory} h set last_seen = r.last_seen
       from (select org_id, key_id, ${networkSql('ip')} as prefix, max(last_seen) as last_seen
               from ${TABLE.recentIps} where last_seen >= ${cutoff} group by org_id, key_id, 3) r
      where h.org_id = r.org_id and h.key_id = r.key_id and h.prefix = r.prefix
        and h.last_seen < ${cutoff} + interval '1 hour' and r.last_seen > h.last_seen`,
    [retentionDays, retentionDays],
  );
}

/** IP_RETENTION_DAYS: every address last seen longer ago than this. */
export async function expireIpData(db: Db, retentionDays: number): Promise<ErasedIps> {
  const cutoff = 'now() - make_interval(days => ?)';
  await catchUpNetworksInUse(db, cutoff, retentionDays);
  // The same instant in the payload's own text form (the outbox trigger's to_char, or toISOString).
  const isoCutoff = `${isoTimeSql(cutoff)} collate "C"`;
  return erase(
    db,
    (query, _keyColumn, seenColumn, seenIsIsoText) => query.whereRaw(`${seenColumn} < ${seenIsIsoText ? isoCutoff : cutoff}`, [retentionDays]),
    true,
  );
}

/** One key's IP history, whatever its age (a data subject's erasure request). In a transaction: it holds off the org's folds. */
export async function eraseKeyIps(trx: Db, orgId: string, keyId: string): Promise<ErasedIps> {
  await lockOrgFolds(trx, orgId);
  // A flush and the time sweep lock the key's totals row before its address rows; the erasure
  // deletes address rows first, so without this a flush of the key between two of its statements
  // deadlocked with it (one of them aborted by PostgreSQL).
  await trx(TABLE.usage).where({ org_id: orgId, key_id: keyId }).forUpdate().select(trx.raw('1'));
  // By org as well as key: the CLI erases for a key id that no longer exists (a deleted key leaves
  // its webhook deliveries and audit entries), and then only its own org's rows may be taken.
  return erase(trx, (query, keyColumn) => query.whereRaw(`org_id = ? and ${keyColumn} = ?`, [orgId, keyId]));
}
