import { rawRows, type Db } from './db';
import { TABLE } from './tables';
import { DAY_MS } from './timeUnits';

// When collectors listened: what tells a key that looks dormant from one whose uses fell where no
// collector listened (UDP drops them without a word). Each collector process keeps one row of
// collector_listening_spans while it runs (migrations/20261207000260): when it began listening and
// the last time it vouched that every use it received until then is written, but the last flush
// interval's (collector/listeningSpan.ts). The revoke-dormant clean-up reads the times no span covers
// (collectorUptimeSince, below) and refuses to select keys again across them; the key.dormant
// sweep says whether one came after the key's last use (collector/eventStore.ts).

/** How often a running collector moves its span's heard_at forward. */
export const LISTENING_HEARTBEAT_MS = 15_000;

/**
 * Silences shorter than this are not gaps: a heartbeat is up to LISTENING_HEARTBEAT_MS old, a
 * restart leaves a few seconds between two spans, and a use in them is as likely as one in the
 * last flush interval of a crash. Four heartbeats, so one late write is not a gap.
 */
export const GAP_TOLERANCE_MS = 4 * LISTENING_HEARTBEAT_MS;

/** Spans are kept as long as the longest dormantDays a clean-up may ask about (api/keys/apiKeys.routes.ts). */
export const SPAN_RETENTION_DAYS = 3650;

/**
 * A time within a window when a use may have been lost: no collector listened ('no_collector';
 * `to` null while none is heard still), or one refused uses ('uses_lost': its aggregator full, or
 * its replay cache).
 */
export interface CollectorGap {
  from: Date;
  to: Date | null;
  cause: 'no_collector' | 'uses_lost';
}

export interface CollectorUptime {
  /** When the first span kept began (null: no collector of this version has run): no gap is known before it. */
  trackedSince: Date | null;
  /** The newest `limit` gaps since `from`, oldest first. */
  gaps: CollectorGap[];
  /** Older gaps than those answered exist. */
  moreGaps: boolean;
}

// The spans reaching into the window, each counted until GAP_TOLERANCE_MS after it was last heard,
// and, where spans began before the window, one that covers its start (the time before is not
// asked about); a silence is where a span starts after every earlier one ended (islands and gaps,
// by a running max), or the time since the last beat of all when it is older than the tolerance
// (still going on). A span closed on a loss is a gap of its own, from its last beat to the beat
// that noticed the loss (lost_until), whatever others covered: a datagram goes to one collector,
// and that one dropped it; within a silence it says nothing more. A loss is found by its end, so
// one that began before the window and ended in it counts. All in one statement, so that `limit`
// counts what is answered.
const GAPS_CTE = `
  with reaching as (
    select started_at, heard_at from ${TABLE.collectorSpans} where heard_at >= :reachFrom
  ), covered as (
    select started_at, heard_at + :tolerance as until from reaching
    union all
    (select cast('-infinity' as timestamptz), cast(:from as timestamptz) + :tolerance from ${TABLE.collectorSpans} where started_at < :from limit 1)
  ), ordered as (
    select started_at, max(until) over (order by started_at, until rows between unbounded preceding and 1 preceding) as reached from covered
  ), silent as (
    select greatest(reached - :tolerance, :from) as gap_from, started_at as gap_to from ordered where started_at > reached
    union all
    select greatest(max(heard_at), :from), cast(null as timestamptz) from ${TABLE.collectorSpans} having max(heard_at) + :tolerance < :now
  ), losses as (
    select greatest(heard_at, :from) as gap_from, lost_until as gap_to from ${TABLE.collectorSpans} where lost_until >= :from
  ), gaps as (
    select gap_from, gap_to, 'no_collector' as cause from silent
    union all
    select l.gap_from, l.gap_to, 'uses_lost' from losses l
     where not exists (select 1 from silent s where l.gap_from >= s.gap_from and (s.gap_to is null or l.gap_to <= s.gap_to))
  )`.replaceAll(':tolerance', 'cast(:tolerance as interval)');

// The gaps of [from, now] (GAPS_CTE) read by `select`; undefined before any span was kept.
async function readGaps<Row>(db: Db, from: Date, now: Date, select: string, bindings: Record<string, number> = {}) {
  // Before migration …260 (a process of this version on a database not migrated yet, in a rolling
  // deploy): nothing is known, as before any collector of this version ran. Asked, not caught: in
  // the apply's transaction a failed statement would abort it.
  const [present] = await rawRows<{ present: boolean }>(db, 'select to_regclass(?) is not null as present', [TABLE.collectorSpans]);
  if (!present.present) return undefined;
  const [extent] = await rawRows<{ tracked_since: Date | null }>(db, `select min(started_at) as tracked_since from ${TABLE.collectorSpans}`);
  if (extent.tracked_since === null) return undefined;
  const reachFrom = new Date(from.getTime() - GAP_TOLERANCE_MS);
  const rows = await rawRows<Row>(db, `${GAPS_CTE} ${select}`, { from, reachFrom, now, tolerance: `${GAP_TOLERANCE_MS} milliseconds`, ...bindings });
  return { trackedSince: extent.tracked_since, rows };
}

const NOTHING_KNOWN: CollectorUptime = Object.freeze({ trackedSince: null, gaps: [], moreGaps: false });

/** When no collector listened, or one lost uses, between `from` and `now`: the newest `limit` gaps. */
export async function collectorUptimeSince(db: Db, from: Date, now: Date, limit: number): Promise<CollectorUptime> {
  const read = await readGaps<{ gap_from: Date; gap_to: Date | null; cause: CollectorGap['cause'] }>(
    db,
    from,
    now,
    'select gap_from, gap_to, cause from gaps order by gap_from desc, gap_to desc nulls first limit :limit',
    { limit: limit + 1 },
  );
  if (read === undefined) return NOTHING_KNOWN;
  const gaps = read.rows.slice(0, limit).map((row) => ({ from: row.gap_from, to: row.gap_to, cause: row.cause }));
  return { trackedSince: read.trackedSince, gaps: gaps.reverse(), moreGaps: read.rows.length > limit };
}

export interface ListeningSpan {
  collector: string;
  startedAt: Date;
  heardAt: Date;
  /** Closed on a loss: uses were lost after heardAt, by then. */
  lostUntil: Date | null;
}

/** The spans heard since `from`, newest first: the CLI's `collector spans`. */
export async function spansHeardSince(db: Db, from: Date, limit: number): Promise<ListeningSpan[]> {
  const rows = await rawRows<{ collector: string; started_at: Date; heard_at: Date; lost_until: Date | null }>(
    db,
    `select collector, started_at, heard_at, lost_until from ${TABLE.collectorSpans} where heard_at >= :from order by started_at desc, id desc limit :limit`,
    { from, limit },
  );
  return rows.map((row) => ({ collector: row.collector, startedAt: row.started_at, heardAt: row.heard_at, lostUntil: row.lost_until }));
}

/**
 * The end of the newest gap kept ('infinity' while one goes on, '-infinity' for none): a key
 * idle since before it may have had uses then, lost. The key.dormant sweep compares each key with it.
 */
export async function latestGapEnd(db: Db, now: Date): Promise<Date | 'infinity' | '-infinity'> {
  // The latest end, not the end of the gap that starts last: a loss may surround a later silence
  // (a collector cut from its database for half an hour, another restarting meanwhile), and a key
  // used in the silence's wake was told safe (a review).
  const read = await readGaps<{ going_on: boolean | null; latest_end: Date | null }>(
    db,
    new Date(now.getTime() - SPAN_RETENTION_DAYS * DAY_MS),
    now,
    'select bool_or(gap_to is null) as going_on, max(gap_to) as latest_end from gaps',
  );
  const [row] = read?.rows ?? [];
  if (row?.going_on) return 'infinity';
  return row?.latest_end ?? '-infinity';
}
