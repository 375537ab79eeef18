import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Knex } from 'knex';
import type { RateLimitedWarn } from '../shared/rateLimitedLog';
import { steadyNow } from '../shared/steadyClock';
import { TABLE } from '../shared/tables';
import { PACKED_PAIR_CHARS, type KeyList } from './keyList';

// Keeps the collector's key list (collector/keyList.ts) close to api_keys: a full read at start,
// again every `fullReadMs` (which forgets deleted keys), and in between, every `refreshMs`, a read
// of the keys created lately (api_keys_created_at_idx) that the list may lack. A key created since
// the last read is not listed yet: during a flood that holds the unlisted half of the cap, its first
// uses are refused, until the next refresh.
// A read that fails leaves the list as it was (or not loaded, so every key is admitted) and is
// tried again at the next tick.

const PAGE_ROWS = 50_000;
// A key's created_at is its transaction's start, which may commit later: each refresh looks back
// this far before the previous read began.
const CREATED_MARGIN_MS = 300_000;
// The refresh's window in slices of created_at this long, each read again only when its keys
// changed: after a bulk import the window holds every imported key for five minutes, and reading
// them all at each refresh cost the receive loop 1.0-1.7 s of CPU per million keys, every
// refreshMs (docs/operations.md, key list).
const SLICE_SECONDS = 10;
const FULL_READ_MS = 3_600_000;
// A full read that fails while a list is loaded is tried again this much later; the refreshes go on
// meanwhile (retrying it at every tick would stop them).
const FULL_READ_RETRY_MS = 60_000;
// Each statement's timeout. A page takes well under a second; a read held by a lock (an operator's
// LOCK TABLE api_keys) gives up instead of holding a connection and every later tick.
const READ_TIMEOUT_MS = 30_000;

export interface KeyListSyncOptions {
  db: Knex;
  list: KeyList;
  refreshMs: number;
  /** How often the whole of api_keys is read again; an hour unless a test shortens it. */
  fullReadMs?: number;
  /** Each statement's timeout; 30 s unless a test shortens it. */
  readTimeoutMs?: number;
  warn: RateLimitedWarn;
  now: () => number;
  /** The age's clock: steady unless a test gives one, so a wall clock stepped back hides no staleness. */
  elapsed?: () => number;
}

export function createKeyListSync(options: KeyListSyncOptions) {
  const { db, list, refreshMs, warn, now } = options;
  const elapsed = options.elapsed ?? steadyNow;
  const fullReadMs = options.fullReadMs ?? FULL_READ_MS;
  const timeoutMs = options.readTimeoutMs ?? READ_TIMEOUT_MS;
  // The next full read, and one retry, each begun at a tick (up to refreshMs late) and the retry a
  // minute after the failure: trust does not lapse while they run, only once both have failed.
  const vouchMs = fullReadMs + 2 * (refreshMs + FULL_READ_RETRY_MS);
  const createdAt = elapsed();
  let lastReadElapsed: number | undefined;
  const stats = { failures: 0, lastReadAt: 0, lastFullReadAt: 0 };
  const recent = createRecentKeysReader(db, list, timeoutMs);
  let nextFullReadAt = -Infinity;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  // One read at a time: a tick that finds one still running skips.
  let reading: Promise<void> | undefined;
  const read = async () => {
    const startedAt = now();
    const startedElapsed = elapsed();
    // A clock stepped back behind the last full read would hold the next one off until it caught up.
    if (!list.loaded || startedAt >= nextFullReadAt || startedAt < stats.lastFullReadAt) {
      nextFullReadAt = startedAt + FULL_READ_RETRY_MS;
      const hashes = await hashesOfAllKeys(db, list, timeoutMs, () => stopped);
      if (hashes === undefined) return;
      list.replace(hashes);
      stats.lastFullReadAt = startedAt;
      nextFullReadAt = startedAt + fullReadMs;
    } else {
      // Only the time since the last read comes from this process's clocks: a skew between them
      // and the server's, whose now() the window ends at, moves nothing. The longer of the two
      // (a wider window is always safe): a wall clock stepped back narrowed it, and the steady one
      // stops while the host is suspended; keys created meanwhile went unlisted.
      const sinceLastRead = Math.max(startedElapsed - (lastReadElapsed ?? createdAt), startedAt - stats.lastReadAt);
      const windowMs = Math.max(0, sinceLastRead) + CREATED_MARGIN_MS;
      await recent.read(windowMs);
    }
    stats.lastReadAt = startedAt;
    lastReadElapsed = startedElapsed;
  };
  const tick = () => {
    reading ??= read()
      .catch((error: Error) => {
        // After stop() a read in progress fails with the pool: nothing to tell.
        if (stopped) return;
        stats.failures += 1;
        warn('key_list', { err: { message: error.message }, listedKeys: list.size, loaded: list.loaded }, 'reading the key list failed; it is tried again');
      })
      .finally(() => (reading = undefined));
  };
  return {
    stats,
    /** Since the last read that succeeded; since this sync was made while none has. */
    ageMs(): number {
      return elapsed() - (lastReadElapsed ?? createdAt);
    },
    /**
     * The list while it may vouch that its keys exist (collector/knownKeys.ts): loaded, by a full
     * read begun within `vouchMs` by this process's clock (not ahead of it: a clock stepped back
     * vouches for nothing until the full read it starts). Only a full read forgets deleted keys, so
     * a key deleted since stays vouched for until the next one; with full reads failing, no longer.
     */
    vouching(): KeyList | undefined {
      const age = now() - stats.lastFullReadAt;
      return list.loaded && age >= 0 && age <= vouchMs ? list : undefined;
    },
    /** Whether a read is in progress (one may outlive stop(), until the pool is destroyed). */
    get reading(): boolean {
      return reading !== undefined;
    },
    start(): void {
      tick();
      timer = setInterval(tick, refreshMs).unref();
    },
    /**
     * Starts no read, and no further page of a full read in progress. It does not wait for the
     * statement in flight: the list is of no use once the collector stops, and the caller's
     * bounded wait for its pool covers it.
     */
    stop(): void {
      stopped = true;
      clearInterval(timer);
    },
  };
}

export type KeyListSync = ReturnType<typeof createKeyListSync>;

// In pages along the primary key, each page one string of packed pairs (`PACKED_PAIR_CHARS` each):
// a row object per key cost this process about 1.9 s of CPU per million keys, on the thread that
// reads the UDP socket (bench/keyList.ts).
// Undefined once `stopped` says so, between pages.
export async function hashesOfAllKeys(db: Knex, list: KeyList, timeoutMs = READ_TIMEOUT_MS, stopped = () => false): Promise<number[] | undefined> {
  const hashes: number[] = [];
  let after: string | undefined;
  for (;;) {
    if (stopped()) return undefined;
    const packed = await packedPairs(db, timeoutMs, (q) => {
      const page = q(TABLE.apiKeys).select('id', 'org_id').orderBy('id').limit(PAGE_ROWS);
      return after === undefined ? page : page.where('id', '>', after);
    });
    pushHashes(list, packed, hashes);
    if (packed.length < PAGE_ROWS * PACKED_PAIR_CHARS) return hashes;
    after = packed.slice(-PACKED_PAIR_CHARS, -PACKED_PAIR_CHARS / 2);
  }
}

/**
 * Adds to `list` the keys created within the last `windowMs` of the server's clock (widened to whole
 * slices) that it may lack: those of the slices whose keys changed since the last read().
 *
 * Each slice's signature (its keys' count and the sum of a 64-bit hash of each (key, org) pair)
 * comes from the same statement, and snapshot, as the keys it reads, and is kept only once they
 * are in the list. A key committed late, created with an earlier created_at, or moved to another
 * org changes its slice's signature, and the slice is read again; only a change that leaves the
 * sum as it was (about one in 2^64) waits for the next full read. A full read needs no reset: it
 * begins after the last read() ended, so it lists every key those signatures counted.
 */
export function createRecentKeysReader(db: Knex, list: KeyList, timeoutMs = READ_TIMEOUT_MS) {
  let seen: string[] = [];
  return {
    /** Returns how many keys it read (listed already or not). */
    async read(windowMs: number): Promise<number> {
      const { rows } = await db
        .raw<{ rows: Array<{ signed: string[] | null; pairs: string | null }> }>(RECENT_KEYS_SQL, {
          sliceSeconds: SLICE_SECONDS,
          table: TABLE.apiKeys,
          windowSeconds: windowMs / 1000,
          seen,
          pageRows: PAGE_ROWS,
        })
        .timeout(timeoutMs, { cancel: true });
      let keys = 0;
      let signed: string[] = [];
      for (const row of rows) {
        if (row.pairs === null) {
          signed = row.signed ?? [];
          continue;
        }
        // Between pages the event loop runs: the UDP socket's reads wait for one page's hashing at
        // most (the driver parsed each row as its bytes came).
        if (keys > 0) await nextTurn();
        list.add(pushHashes(list, row.pairs, []));
        keys += row.pairs.length / PACKED_PAIR_CHARS;
      }
      seen = signed;
      return keys;
    },
  };
}

// One statement, so one snapshot: a row of signatures, one for each slice of the window,
// `start=count:sum`, and rows of the keys of the slices whose signature was not seen, PAGE_ROWS
// keys a row, read by created_at range (no slice changed, no key read). Pages as the full read's:
// the first refresh after a bulk import of a million keys brought them as one 72 MB value, and
// parsing and hashing it held the collector's event loop for 181-261 ms at once. A slice is
// SLICE_SECONDS of created_at from the epoch: date_bin, integer arithmetic, where extract(epoch)
// is numeric and took twice as long. An infinite created_at (only SQL by hand makes one) has no
// slice: the full reads list its key.
const RECENT_KEYS_SQL = `
  with signed as (
    select slice,
           cast(extract(epoch from slice) as bigint) || '=' || count(*) || ':' ||
           sum(uuid_hash_extended(id, 0) # uuid_hash_extended(org_id, 1)) as signature
      from (select id, org_id, date_bin(make_interval(secs => :sliceSeconds), created_at, timestamptz 'epoch') as slice
              from :table:
             where created_at >= date_bin(make_interval(secs => :sliceSeconds), now() - make_interval(secs => :windowSeconds), timestamptz 'epoch')
               and isfinite(created_at)) as recent
     group by slice
  )
  select array_agg(signature) as signed, null as pairs from signed
  union all
  select null, string_agg(pair, '')
    from (select cast(k.id as text) || cast(k.org_id as text) as pair, (row_number() over () - 1) / :pageRows as page
            from signed
            join :table: as k on k.created_at >= signed.slice and k.created_at < signed.slice + make_interval(secs => :sliceSeconds)
           where signed.signature <> all(cast(:seen as text[]))) as changed
   group by page`;

function pushHashes(list: KeyList, packed: string, hashes: number[]): number[] {
  for (let at = 0; at < packed.length; at += PACKED_PAIR_CHARS) hashes.push(list.hashPacked(packed, at));
  return hashes;
}

// Each statement is cancelled past `timeoutMs` (knex's timeout, a pg_cancel_backend from another
// connection). Not a transaction with SET LOCAL statement_timeout: the fault tests cut the
// connection at a flush's COMMIT, and must not meet the key list's.
async function packedPairs(db: Knex, timeoutMs: number, rows: (q: Knex) => Knex.QueryBuilder): Promise<string> {
  const result = await db
    .raw<{ rows: Array<{ pairs: string | null }> }>(`select string_agg(cast(id as text) || cast(org_id as text), '' order by id) as pairs from (?) as page`, [
      rows(db),
    ])
    .timeout(timeoutMs, { cancel: true });
  return result.rows[0].pairs ?? '';
}
