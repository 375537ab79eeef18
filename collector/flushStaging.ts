// A flush's rows reach PostgreSQL through COPY into temporary staging tables, and every target
// table is then written by one set-based statement that reads them (collector/usageStore.ts,
// collector/eventStore.ts). COPY's text format (written as bytes, collector/copyBytes.ts) costs the
// server one parse per field; the bind arrays it replaces made pg escape every element and the server
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
               last_failed_ms float8, last_failed_ip text, last_revoked_use_ms float8, last_expired_use_ms float8,
               previous_secret_ms float8, previous_secret_ip text`,
  flush_hours: `org_id uuid, key_id uuid, hour_ms float8, request_count bigint, ${counts}`,
  flush_ips: `proven boolean, org_id uuid, key_id uuid, ip text, first_seen_ms float8, last_seen_ms float8, n bigint`,
  flush_events: `org_id uuid, key_id uuid, type text, occurred_ms float8, details jsonb, dedupe_key text`,
} as const;
export type StagingTable = keyof typeof STAGING_TABLES;
/** Where copyChunks can COPY to: a staging table, or a table with its columns named, `table (a, b)`. */
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

/**
 * COPYs `chunks` of COPY text (collector/copyBytes.ts's chunksWritten, in the target's column
 * order) into `target`; one round trip, nothing for no chunks. Chunks are made as the stream asks
 * for them (Readable.from reads up to 16 ahead, about 1 MiB of 64 KiB chunks), so PostgreSQL parses
 * the first ones while the client writes the rest: the two run on different cores.
 */
export async function copyChunks(connection: PoolClient, target: CopyTarget, chunks: Iterator<Buffer>): Promise<number> {
  const first = chunks.next();
  if (first.done) return 0;
  await pipeline(Readable.from(startingWith(first.value, chunks)), connection.query(copyFrom(`copy ${target} from stdin`)));
  return 1;
}

function* startingWith<T>(first: T, rest: Iterator<T>): Generator<T> {
  yield first;
  for (let next = rest.next(); !next.done; next = rest.next()) yield next.value;
}

/** Epoch milliseconds in a staging column as timestamptz. */
export const msToTime = (column: string) => `timestamptz 'epoch' + ${column} * interval '1 millisecond'`;

/** The staged keys (unknown ones already gone) that a row of another staging table belongs to. */
export const STAGED_KEY = (alias: string) => `join flush_keys s on s.org_id = ${alias}.org_id and s.key_id = ${alias}.key_id`;
