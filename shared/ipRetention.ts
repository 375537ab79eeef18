import type { Db } from './db';

// Every place the database keeps a client IP address, so that the retention job (the collector,
// hourly) and `npm run cli -- key erase-ips` cover all of them. A new table or column holding IPs
// joins this list, and both follow. Addresses in key_events details go with the events
// themselves (EVENTS_RETENTION_DAYS; deleted with the key).
//   rows:    the row exists only for its address: deleted.
//   columns: the address is one field of a row that stays: set to null.

export type IpHolder =
  | { kind: 'rows'; table: string; keyColumn: string; seenColumn: string }
  | { kind: 'columns'; table: string; keyColumn: string; columns: Array<{ ip: string; seenColumn: string }> };

export const IP_HOLDERS: readonly IpHolder[] = [
  { kind: 'rows', table: 'api_key_recent_ips', keyColumn: 'key_id', seenColumn: 'last_seen' },
  { kind: 'rows', table: 'api_key_failed_ips', keyColumn: 'key_id', seenColumn: 'last_seen' },
  // The networks key.new_ip remembers, with the first address seen in each: forgetting one means
  // a later use from it is reported as new again.
  { kind: 'rows', table: 'api_key_ip_history', keyColumn: 'key_id', seenColumn: 'last_seen' },
  {
    kind: 'columns',
    table: 'api_key_usage',
    keyColumn: 'key_id',
    columns: [
      { ip: 'last_used_ip', seenColumn: 'last_used_at' },
      { ip: 'last_failed_ip', seenColumn: 'last_failed_at' },
    ],
  },
  // The acting key's address; the audit log's triggers allow this one change (ip to null).
  { kind: 'columns', table: 'audit_log', keyColumn: 'actor_key_id', columns: [{ ip: 'ip', seenColumn: 'occurred_at' }] },
];

/** Rows deleted and fields cleared per table. */
export type ErasedIps = Record<string, number>;

// One statement per table (and column). Hourly, each run finds about an hour's worth of newly
// expired addresses.
async function erase(db: Db, where: (query: ReturnType<Db>, holder: IpHolder, seenColumn: string) => void): Promise<ErasedIps> {
  const erased: ErasedIps = {};
  for (const holder of IP_HOLDERS) {
    if (holder.kind === 'rows') {
      const query = db(holder.table);
      where(query, holder, holder.seenColumn);
      erased[holder.table] = await query.del();
      continue;
    }
    erased[holder.table] = 0;
    for (const column of holder.columns) {
      const query = db(holder.table).whereNotNull(column.ip);
      where(query, holder, column.seenColumn);
      erased[holder.table] += await query.update({ [column.ip]: null });
    }
  }
  return erased;
}

/** IP_RETENTION_DAYS: every address last seen longer ago than this. */
export function expireIpData(db: Db, retentionDays: number): Promise<ErasedIps> {
  return erase(db, (query, _holder, seenColumn) => query.where(seenColumn, '<', db.raw('now() - make_interval(days => ?)', [retentionDays])));
}

/** One key's IP history, whatever its age (a data subject's erasure request). */
export function eraseKeyIps(db: Db, keyId: string): Promise<ErasedIps> {
  return erase(db, (query, holder) => query.where(holder.keyColumn, keyId));
}
