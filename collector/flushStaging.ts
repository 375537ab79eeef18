// A flush's rows reach PostgreSQL through COPY into temporary staging tables, and every target
// table is then written by one set-based statement that reads them (collector/usageStore.ts,
// collector/eventStore.ts). COPY's text format costs the client one join per row and the server
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

export type CopyValue = string | number | boolean | null;

const SPECIAL = /[\\\t\n\r]/;
const ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };

// COPY's text format: tab-separated, \N for null, backslash escapes. -Infinity is the
// aggregator's "no such use in this batch" and goes in as null, which never wins greatest().
function field(value: CopyValue): string {
  if (value === null || value === -Infinity) return '\\N';
  if (typeof value !== 'string') return String(value);
  return SPECIAL.test(value) ? value.replace(/[\\\t\n\r]/g, (c) => ESCAPES[c]) : value;
}

const ROWS_PER_CHUNK = 4096;

/** COPYs `rows` (each in the table's column order) into a staging table; one round trip, nothing for no rows. */
export async function copyRows(connection: PoolClient, table: StagingTable, rows: ReadonlyArray<readonly CopyValue[]>): Promise<number> {
  if (rows.length === 0) return 0;
  const chunks: string[] = [];
  for (let start = 0; start < rows.length; start += ROWS_PER_CHUNK) {
    let chunk = '';
    for (const row of rows.slice(start, start + ROWS_PER_CHUNK)) chunk += `${row.map(field).join('\t')}\n`;
    chunks.push(chunk);
  }
  await pipeline(Readable.from(chunks), connection.query(copyFrom(`copy ${table} from stdin`)));
  return 1;
}

/** Epoch milliseconds in a staging column as timestamptz. */
export const msToTime = (column: string) => `timestamptz 'epoch' + ${column} * interval '1 millisecond'`;

/** The staged keys (unknown ones already gone) that a row of another staging table belongs to. */
export const STAGED_KEY = (alias: string) => `join flush_keys s on s.org_id = ${alias}.org_id and s.key_id = ${alias}.key_id`;
