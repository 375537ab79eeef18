import type { Knex } from 'knex';
import { LISTENING_HEARTBEAT_MS, SPAN_RETENTION_DAYS } from '../shared/collectorUptime';
import type { RateLimitedWarn } from '../shared/rateLimitedLog';
import { TABLE } from '../shared/tables';
import { DAY_MS } from '../shared/timeUnits';

// This collector's row of collector_listening_spans (shared/collectorUptime.ts): opened once it
// listens, its heard_at moved forward every LISTENING_HEARTBEAT_MS while nothing it received is
// lost, closed at a stop that wrote everything. What it vouches for at a beat: every use received
// until then is written, or was drained into a flush that wrote it (the aggregator holds the last
// interval's, which a crash loses: documented). A beat waits for the write in progress and
// vouches only if it left nothing pending: while a flush waits for its retry (the database down)
// the span is not moved; if the retry never succeeds, the time since is a gap, and once it does,
// the next beat covers the outage. Uses refused (the aggregator full, a signed datagram the replay
// cache had no room for) are lost: the span closes with the time they were noticed (lost_until)
// and a new one opens, so the beat they fell in is a gap.

/** Where a span's rows go: the database in production, a recorder in unit tests. */
export interface SpanStore {
  open(collector: string, startedAt: Date): Promise<string>;
  /** Moves heard_at; `lostUntil` closes the span: uses were lost after heard_at, by then. */
  heard(id: string, at: Date, lostUntil?: Date): Promise<void>;
}

export interface ListeningSpanOptions {
  store: SpanStore;
  /** The process, for operators: host:port, and /receiver in a cluster. */
  collector: string;
  /** The wall clock: spans are compared with the API's dormancy window. */
  now: () => number;
  /** Waits for the write in progress; true when everything drained so far is written (no batch waits for a retry). */
  writtenSoFar: () => Promise<boolean>;
  /** A count that grows whenever uses are lost (refused uses, replay-cache overflows): only its changes matter. */
  losses: () => number;
  warn: RateLimitedWarn;
  heartbeatMs?: number;
}

export function createListeningSpan(options: ListeningSpanOptions) {
  const { store, collector, now, writtenSoFar, losses, warn } = options;
  let span: { id: string | undefined; startedAt: number } | undefined;
  let lossesSeen = losses();
  let timer: NodeJS.Timeout | undefined;
  let beating: Promise<void> = Promise.resolve();

  // One write at a time, in order: a slow heartbeat and the stop's close must not cross.
  const queue = (step: () => Promise<void>) => {
    beating = beating
      .then(step)
      .catch((error: Error) => warn('listening-span', { error: error.message }, 'could not record that this collector listens (collector_listening_spans)'));
    return beating;
  };

  // The span's last heard time, never before its start (a wall clock stepped back).
  let lastHeard = 0;

  async function beat(at: number, closing: boolean): Promise<void> {
    if (span === undefined) return;
    span.id ??= await store.open(collector, new Date(span.startedAt));
    const lost = losses();
    if (lost !== lossesSeen) {
      // Closed where it was last heard, the loss noticed at `at`. Noted as seen once written: a
      // failed write closes it at the next beat.
      await store.heard(span.id, new Date(lastHeard), new Date(Math.max(at, lastHeard)));
      lossesSeen = lost;
      span = closing ? undefined : { id: undefined, startedAt: at };
      lastHeard = at;
      if (span === undefined) return;
      span.id = await store.open(collector, new Date(at));
    }
    if (!(await writtenSoFar())) return;
    lastHeard = Math.max(at, span.startedAt);
    await store.heard(span.id, new Date(lastHeard));
  }

  return {
    /** Opens the span (once the socket listens) and starts the heartbeat. */
    start(): Promise<void> {
      const startedAt = now();
      span = { id: undefined, startedAt };
      lastHeard = startedAt;
      lossesSeen = losses();
      timer ??= setInterval(() => void queue(() => beat(now(), false)), options.heartbeatMs ?? LISTENING_HEARTBEAT_MS).unref();
      return queue(() => beat(startedAt, false));
    },
    /**
     * Mirror of start: the last beat, at `closedAt` (when the socket closed), once the final flush
     * wrote everything (`flushed`). A stop whose final flush failed leaves the span as last heard.
     */
    stop(closedAt: number, flushed: boolean): Promise<void> {
      clearInterval(timer);
      timer = undefined;
      return queue(async () => {
        if (flushed) await beat(closedAt, true);
        span = undefined;
      });
    },
  };
}

/** The spans' rows in PostgreSQL: times written as read by the collector's clock (see the migration). */
export function spanStore(db: Knex): SpanStore {
  return {
    async open(collector, startedAt) {
      const [row] = await db(TABLE.collectorSpans).insert({ collector, started_at: startedAt, heard_at: startedAt }).returning('id');
      return String(row.id);
    },
    async heard(id, at, lostUntil) {
      await db(TABLE.collectorSpans)
        .where({ id })
        .update({ heard_at: at, ...(lostUntil ? { lost_until: lostUntil } : {}) });
    },
  };
}

/** The upkeep's retention: spans that ended before the longest window a clean-up may ask about. */
export async function expireListeningSpans(db: Knex, now: number): Promise<number> {
  return db(TABLE.collectorSpans)
    .where('heard_at', '<', new Date(now - SPAN_RETENTION_DAYS * DAY_MS))
    .delete();
}
