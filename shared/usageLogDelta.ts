import type { Db } from './db';
import { TABLE } from './tables';
import { OUTCOMES } from './usageWire';

// Where a usage log row's delta keeps its addresses (collector/usageLog.ts writes and reads the
// delta; shared/ipRetention.ts erases its addresses). The delta is a flat JSON array: total, a
// count per outcome, last used (time, address), last failed (time, address), last revoked use,
// last expired use, the number of hours, each hour (its time and a count per outcome), then the
// addresses: the proven ones and the failed ones, each list its length and four fields an address;
// then, only in a delta holding a use of the key's previous secret or a refused use's address, the
// previous secret's time and address (null and "" when none); then, only in the latter, the revoked
// and the expired uses' addresses, two more such lists.
const HEAD = 1 + OUTCOMES.length;
export const LOG_DELTA = {
  lastIp: HEAD + 1,
  lastFailedIp: HEAD + 3,
  hourCount: HEAD + 6,
  hourWidth: 1 + OUTCOMES.length,
} as const;

// Elements before the address lists, in SQL, of the jsonb `delta`.
const beforeAddresses = (delta: string) => `${LOG_DELTA.hourCount + 1} + ${LOG_DELTA.hourWidth} * cast(${delta} ->> ${LOG_DELTA.hourCount} as int)`;

// The indexes, in SQL, of the failed addresses' count and of what follows the failed addresses
// (a previous secret's last use, when the delta holds one).
const failedListAt = (delta: string) => `(${beforeAddresses(delta)} + 1 + 4 * cast(${delta} ->> (${beforeAddresses(delta)}) as int))`;
const afterAddresses = (delta: string) => `(${failedListAt(delta)} + 1 + 4 * cast(${delta} ->> ${failedListAt(delta)} as int))`;

/**
 * SQL over a text column holding deltas: `holdsIp`, whether the delta keeps an address; `erased`,
 * the delta without any (its last addresses empty, both address lists empty, a previous secret's
 * last address empty, the refused uses' lists left out as a delta holding none is written).
 * Counts, hours and times stay: a fold of an erased row writes its uses without an address.
 * Immutable functions only: Citus refuses a stable one (jsonb_build_array) inside a CASE of an
 * UPDATE of a distributed table.
 */
export function deltaIpsSql(column: string) {
  const delta = `cast(${column} as jsonb)`;
  const empty = `'""'::jsonb`;
  const lists = `cast(${delta} ->> (${beforeAddresses(delta)}) as int) + cast(${delta} ->> ${failedListAt(delta)} as int)`;
  return {
    holdsIp: `(${delta} ->> ${LOG_DELTA.lastIp} <> '' or ${delta} ->> ${LOG_DELTA.lastFailedIp} <> '' or ${lists} > 0
               or coalesce(${delta} ->> (${afterAddresses(delta)} + 1), '') <> '' or jsonb_array_length(${delta}) > ${afterAddresses(delta)} + 2)`,
    erased: `cast((select jsonb_agg(case when e.n - 1 in (${LOG_DELTA.lastIp}, ${LOG_DELTA.lastFailedIp}) then ${empty} else e.v end order by e.n)
                     from jsonb_array_elements(${delta}) with ordinality as e(v, n)
                    where e.n <= ${beforeAddresses(delta)}) || '[0, 0]'::jsonb
                 || case when jsonb_array_length(${delta}) > ${afterAddresses(delta)} then (${delta} -> ${afterAddresses(delta)}) || '[""]'::jsonb
                         else '[]'::jsonb end as text)`,
  };
}

/** The class of the transaction-level advisory lock a fold holds on each org it folds (collector/usageLog.ts). */
export const FOLD_LOCK_CLASS = 0x6b75_6c67; // "kulg"

/**
 * Waits for a fold of the org in progress to commit, and keeps new ones off the org until the
 * caller's transaction ends (they skip an org they cannot lock). An erasure of a key's addresses
 * takes it first: a fold takes the key's rows out of the log and writes their addresses to the
 * usage tables in one transaction, which the erasure's statements could see neither before nor
 * after, so the addresses it wrote outlived the erasure.
 */
export async function lockOrgFolds(trx: Db, orgId: string): Promise<void> {
  await trx.raw('select pg_advisory_xact_lock(?, hashtext(cast(? as text)))', [FOLD_LOCK_CLASS, orgId]);
}

/** Moves every unreadable row set aside back into the usage log, for a collector that reads it; returns how many. */
export async function requeueUnreadable(db: Db): Promise<number> {
  const { rowCount } = await db.raw(
    `with moved as (delete from ${TABLE.usageSetAside} returning org_id, key_id, logged_at, delta)
     insert into ${TABLE.usageLog} (org_id, key_id, logged_at, delta) select org_id, key_id, logged_at, delta from moved`,
  );
  return rowCount ?? 0;
}
