import type { Knex } from 'knex';
import { OUTCOMES } from '../shared/usageWire';
import { TABLE } from '../shared/tables';

// Moves closed hours from api_key_usage_current_hours, where the flush adds to them (HOT
// updates), into api_key_usage_hourly, where the usage page's window sums read them index-only
// (migrations/20261202000100). Run by the collector's upkeep.
//
// Exactly once: one statement deletes the rows and adds their counts to the hourly buckets, so a
// count is in one table or the other at every instant. A use of a moved hour that arrives later
// (a late datagram, a retried flush) creates a new current row, moved at a later run and added to
// the same bucket.
//
// Concurrency: the rows are locked in key order, as flushes lock them, and rows a flush (or
// another collector's move) holds are skipped, left for the next run, so a move never waits for a
// flush and cannot deadlock with one. A flush that waits for a row the move deleted inserts a new
// one once the move commits (ON CONFLICT sees the row gone). One org per statement: Citus locks
// rows (FOR UPDATE) only in a statement on one shard, and this keeps the org's delete and insert
// on the one worker that holds both of its tables.

/** How often the upkeep moves closed hours, and how long after an hour closes it waits (the last flushes of the hour land first). */
export const HOUR_MOVE = { intervalMs: 5 * 60_000, graceMs: 5 * 60_000 } as const;

const HOUR_MS = 3_600_000;
const COLUMNS = ['org_id', 'key_id', 'hour', 'request_count', ...OUTCOMES.map((outcome) => `${outcome}_count`)];
const COUNTS = COLUMNS.slice(3);

const ORGS_WITH_CLOSED_HOURS = `select distinct org_id from ${TABLE.usageCurrentHours} where hour < :before`;

const MOVE_ORG = `
with doomed as materialized (
  select key_id, hour from ${TABLE.usageCurrentHours}
   where org_id = :orgId and hour < :before
   order by key_id, hour
     for update skip locked
), moved as (
  delete from ${TABLE.usageCurrentHours} c using doomed d
   where c.org_id = :orgId and c.key_id = d.key_id and c.hour = d.hour
  returning ${COLUMNS.map((column) => `c.${column}`).join(', ')}
)
insert into ${TABLE.usageHourly} (${COLUMNS.join(', ')})
select ${COLUMNS.join(', ')} from moved order by key_id, hour
on conflict (org_id, key_id, hour) do update set
  ${COUNTS.map((column) => `${column} = keyusage_add(${TABLE.usageHourly}.${column}, excluded.${column})`).join(',\n  ')}`;

/** The start of the newest hour that is closed, with the grace, at `now`: hours before it are moved. */
export const closedBefore = (now: number) => new Date(Math.floor((now - HOUR_MOVE.graceMs) / HOUR_MS) * HOUR_MS);

/** Moves every current-hour row older than `before` that no transaction holds. Returns the rows moved. */
export async function moveClosedHours(db: Knex, before: Date): Promise<number> {
  const { rows } = await db.raw(ORGS_WITH_CLOSED_HOURS, { before });
  let moved = 0;
  for (const { org_id: orgId } of rows as Array<{ org_id: string }>) moved += (await db.raw(MOVE_ORG, { orgId, before })).rowCount ?? 0;
  return moved;
}
