import type { Knex } from 'knex';
import type pg from 'pg';

// The collector's key list (collector/keyListSync.ts) reads the keys created in the last minutes
// every few seconds; without this index each read scanned the whole of api_keys.
//
// Built CONCURRENTLY, so outside a transaction: a plain CREATE INDEX holds a lock that stops every
// write to api_keys until the build ends, and the previous version's API, still serving while the
// migration runs (CHANGELOG upgrade notes), could not create, rotate or revoke a key meanwhile:
// seconds to minutes on millions of keys, and longer behind any open transaction that wrote one.
export const config = { transaction: false };

const INDEX = 'api_keys_created_at_idx';

/** Builds `index` with `definition` (what follows ON), dropping first an invalid one a failed concurrent build left. */
export async function createIndexConcurrently(knex: Knex, index: string, definition: string): Promise<void> {
  // A concurrent build that failed (cancelled, the connection lost) leaves an invalid index that
  // is never used but still written to; IF NOT EXISTS would keep it.
  const { rows } = await knex.raw<{ rows: Array<{ valid: boolean }> }>('select indisvalid as valid from pg_index where indexrelid = to_regclass(?)', [index]);
  const statements = [knex.raw(`create index concurrently if not exists ?? on ${definition}`, [index]).toQuery()];
  if (rows.length > 0 && !rows[0].valid) statements.unshift(knex.raw('drop index concurrently ??', [index]).toQuery());
  await withoutLockTimeout(knex, statements);
}

// A concurrent build waits, at its end, for every transaction older than it, on any table: under
// `npm run migrate`'s lock_timeout (MIGRATE_LOCK_TIMEOUT_MS, 2 s a try) a collector's longer flush
// failed every try, each after building the whole index. Its lock (SHARE UPDATE EXCLUSIVE) queues
// no reader or writer behind it, so it may wait as long as it needs. On one connection of the pool,
// whose own lock_timeout is put back after.
export async function withoutLockTimeout(knex: Knex, statements: readonly string[]): Promise<void> {
  const connection = (await knex.client.acquireConnection()) as pg.Client;
  try {
    const { rows } = await connection.query<{ lock_timeout: string }>('show lock_timeout');
    await connection.query('set lock_timeout = 0');
    try {
      for (const sql of statements) await connection.query(sql);
    } finally {
      await connection.query('select set_config($1, $2, false)', ['lock_timeout', rows[0].lock_timeout]);
    }
  } finally {
    await knex.client.releaseConnection(connection);
  }
}

export async function up(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, INDEX, 'api_keys (created_at)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index concurrently if exists ??', [INDEX]);
}
