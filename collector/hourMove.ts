import type { Knex } from 'knex';
import { OUTCOMES } from '../shared/usageWire';
import { TABLE } from '../shared/tables';
import { HOUR_MS } from '../shared/timeUnits';

// Moves closed hours from api_key_usage_current_hours, where the flush adds to them (HOT
// updates), into api_key_usage_hourly, where the usage page's window sums read them index-only
// (migrations/20261202000100). Run by the collector's upkeep.
//
// Exactly once: one statement deletes a chunk of rows and adds their counts to the hourly buckets,
// so a count is in one table or the other at every instant. A use of a moved hour that arrives later
// (a late datagram, a retried flush) creates a new current row, moved at a later run and added to
// the same bucket.
//
// Concurrency: the rows are locked in key order, as flushes lock them, and rows a flush (or
// another collector's move) holds are skipped, left for the next run, so a move never waits for a
// flush and cannot deadlock with one. A flush that waits for a row the move deleted inserts a new
// one once the move commits (ON CONFLICT sees the row gone). One org per statement: Citus locks
// rows (FOR UPDATE) only in a statement on one shard, and this keeps the org's delete and insert
// on the one worker that holds both of its tables. An org's rows go in chunks (HOUR_MOVE.chunkRows).

/**
 * How often the upkeep moves closed hours, how long after an hour closes it waits (the last
 * flushes of the hour land first), and how many rows one statement moves at most.
 */
export const HOUR_MOVE = { intervalMs: 5 * 60_000, graceMs: 5 * 60_000, chunkRows: 50_000 } as const;

const COLUMNS = ['org_id', 'key_id', 'hour', 'request_count', ...OUTCOMES.map((outcome) => `${outcome}_count`)];
const COUNTS = COLUMNS.slice(3);

const ORGS_WITH_CLOSED_HOURS = `select distinct org_id from ${TABLE.usageCurrentHours} where hour < :before`;

// One chunk of an org's closed hours, after a (key, hour) cursor, in key order. A closed hour of
// 1 M keys of one org moved in one statement was one transaction of 20-22 s, and a flush carrying
// a late use of one of its rows waited for all of it (docs/benchmarks.md §4c); chunked, its longest
// statement was 1.5 s. Each chunk is exactly once on its own. Returns the rows it moved and the last
// (key, hour) it took, where the next chunk starts. `moved` equals `taken` (every locked row is
// deleted and added), but the final select must read `added`: with `added` unread (no RETURNING,
// the count from `doomed`), the upkeep's move stalled on Citus (`npm run test:citus`, the timer test in
// test/hourMove.test.ts), where plain PostgreSQL was fine.
const MOVE_CHUNK = `
with doomed as materialized (
  select key_id, hour from ${TABLE.usageCurrentHours}
   where org_id = :orgId and hour < :before and (key_id, hour) > (:afterKey, :afterHour)
   order by key_id, hour
   limit :chunkRows
     for update skip locked
), moved as (
  delete from ${TABLE.usageCurrentHours} c using doomed d
   where c.org_id = :orgId and c.key_id = d.key_id and c.hour = d.hour
  returning ${COLUMNS.map((column) => `c.${column}`).join(', ')}
), added as (
  insert into ${TABLE.usageHourly} (${COLUMNS.join(', ')})
  select ${COLUMNS.join(', ')} from moved order by key_id, hour
  on conflict (org_id, key_id, hour) do update set
    ${COUNTS.map((column) => `${column} = keyusage_add(${TABLE.usageHourly}.${column}, excluded.${column})`).join(',\n    ')}
  returning 1
)
select (select count(*) from added) as moved, (select count(*) from doomed) as taken, last.key_id, last.hour
  from (select key_id, hour from doomed order by key_id desc, hour desc limit 1) last`;

// Before every key: the nil uuid and the earliest hour.
const START: { afterKey: string; afterHour: Date | string } = { afterKey: '00000000-0000-0000-0000-000000000000', afterHour: '-infinity' };

/** The start of the newest hour that is closed, with the grace, at `now`: hours before it are moved. */
export const closedBefore = (now: number) => new Date(Math.floor((now - HOUR_MOVE.graceMs) / HOUR_MS) * HOUR_MS);

// Chunk after chunk until one takes fewer rows than it may: no unheld closed row is left after the cursor.
async function moveOrg(db: Knex, orgId: string, before: Date, chunkRows: number): Promise<number> {
  let cursor = START;
  let moved = 0;
  for (;;) {
    const { rows } = await db.raw(MOVE_CHUNK, { orgId, before, chunkRows, ...cursor });
    const chunk = rows[0] as { moved: string; taken: string; key_id: string; hour: Date } | undefined;
    if (!chunk) return moved;
    moved += Number(chunk.moved);
    if (Number(chunk.taken) < chunkRows) return moved;
    cursor = { afterKey: chunk.key_id, afterHour: chunk.hour };
  }
}

/** Moves every current-hour row older than `before` that no transaction holds. Returns the rows moved. */
export async function moveClosedHours(db: Knex, before: Date, chunkRows: number = HOUR_MOVE.chunkRows): Promise<number> {
  const { rows } = await db.raw(ORGS_WITH_CLOSED_HOURS, { before });
  let moved = 0;
  for (const { org_id: orgId } of rows as Array<{ org_id: string }>) moved += await moveOrg(db, orgId, before, chunkRows);
  return moved;
}
