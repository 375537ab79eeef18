// A flush's rows reach PostgreSQL through COPY into temporary staging tables, and every target
// table is then written by one set-based statement that reads them (collector/usageStore.ts,
// collector/eventStore.ts). COPY's text format costs the client one string per row and the server
// one parse per field; the bind arrays it replaces made pg escape every element and the server
// parse each array once per statement that used it, and every statement joined api_keys again.
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Knex } from 'knex';
import type { PoolClient } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { OUTCOMES } from '../shared/usageWire';

const counts = OUTCOMES.map((outcome) => `${outcome}_count bigint`).join(', ');

// Temporary: private to the connection, never WAL-logged, gone with it. ON COMMIT DELETE ROWS
// empties them at the end of the flush's transaction, and a rollback takes their rows with it,
// so the usual flush finds them empty; the delete covers a savepoint bisection, which stages
// again in the same transaction. Times are epoch milliseconds (float8, exact for whole ms): a
// formatted timestamp per value cost the client more than the rest of the row.
const STAGING_TABLES = {
  flush_keys: `org_id uuid, key_id uuid, request_count bigint, ${counts}, last_used_ms float8, last_ip text,
               last_failed_ms float8, last_failed_ip text, last_revoked_use_ms float8, last_expired_use_ms float8`,
  flush_hours: `org_id uuid, key_id uuid, hour_ms float8, request_count bigint, ${counts}`,
  flush_ips: `proven boolean, org_id uuid, key_id uuid, ip text, first_seen_ms float8, last_seen_ms float8, n bigint`,
  flush_events: `org_id uuid, key_id uuid, type text, occurred_ms float8, details jsonb, dedupe_key text`,
} as const;
export type StagingTable = keyof typeof STAGING_TABLES;
/** Where copyLines can COPY to: a staging table, or a table with its columns named, `table (a, b)`. */
export type CopyTarget = StagingTable | `${string} (${string})`;

const PREPARE_STAGING = Object.entries(STAGING_TABLES)
  .map(([table, columns]) => `create temporary table if not exists ${table} (${columns}) on commit delete rows; delete from ${table};`)
  .join('\n');

/** The transaction's own connection: COPY and multi-statement queries go to pg directly. */
export async function connectionOf(trx: Knex.Transaction): Promise<PoolClient> {
  return (await trx.client.acquireConnection()) as PoolClient;
}

/** Creates (first use on this connection) or empties the staging tables: one round trip. */
export async function prepareStaging(connection: PoolClient): Promise<void> {
  await connection.query(PREPARE_STAGING);
}

const SPECIAL = /[\\\t\n\r]/;
const SPECIALS = /[\\\t\n\r]/g;
const ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };

// Fields of COPY's text format (tab-separated, \N for null, backslash escapes). Callers make each
// line with one join of its fields and copyLines joins 4096 lines at a time: measured on 100 k
// keys (docs/benchmarks.md §4), that builds the flush's COPY text in about 0.55 × the CPU of
// mapping every row's array through a field function, and a line written as one template string
// of ~15 parts took 1.8 × (V8 keeps such a string as a tree of parts until it is flattened).
/** A text field; null is \N. */
export const copyText = (value: string | null): string => (value === null ? '\\N' : SPECIAL.test(value) ? value.replace(SPECIALS, (c) => ESCAPES[c]) : value);
/** A number; -Infinity, the aggregator's "no such use in this batch", is \N, which never wins greatest(). */
export const copyNumber = (value: number): string => (value === -Infinity ? '\\N' : String(value));
/** One COPY line of `fields`, already encoded (copyText, copyNumber) or plain numbers. */
export const copyLine = (fields: ReadonlyArray<string | number>): string => `${fields.join('\t')}\n`;

/** `line` of each item, made only when the COPY stream asks for it (see copyLines). */
export function* linesOf<T>(items: Iterable<T>, line: (item: T) => string): Generator<string> {
  for (const item of items) yield line(item);
}

const LINES_PER_CHUNK = 4096;

function* chunksOf(lines: Iterable<string>): Generator<string> {
  let part: string[] = [];
  for (const line of lines) {
    part.push(line);
    if (part.length === LINES_PER_CHUNK) {
      yield part.join('');
      part = [];
    }
  }
  if (part.length > 0) yield part.join('');
}

function* startingWith<T>(first: T, rest: Iterator<T>): Generator<T> {
  yield first;
  for (let next = rest.next(); !next.done; next = rest.next()) yield next.value;
}

/**
 * COPYs `lines` (copyLine, in the target's column order) into `target`; one round trip,
 * nothing for no lines. Chunks are built as the stream asks for them, so PostgreSQL parses the
 * first ones while the client builds the rest: the two run on different cores. Only if `lines`
 * is lazy (linesOf): the lines of an array are all built before the COPY starts.
 */
export async function copyLines(connection: PoolClient, target: CopyTarget, lines: Iterable<string>): Promise<number> {
  return copyChunks(connection, target, chunksOf(lines));
}

/** copyLines for chunks of COPY text already built (collector/copyBytes.ts), each sent as it is made. */
export async function copyChunks(connection: PoolClient, target: CopyTarget, chunks: Iterator<string | Buffer>): Promise<number> {
  const first = chunks.next();
  if (first.done) return 0;
  await pipeline(Readable.from(startingWith(first.value, chunks)), connection.query(copyFrom(`copy ${target} from stdin`)));
  return 1;
}

/** Epoch milliseconds in a staging column as timestamptz. */
export const msToTime = (column: string) => `timestamptz 'epoch' + ${column} * interval '1 millisecond'`;

/** The staged keys (unknown ones already gone) that a row of another staging table belongs to. */
export const STAGED_KEY = (alias: string) => `join flush_keys s on s.org_id = ${alias}.org_id and s.key_id = ${alias}.key_id`;
