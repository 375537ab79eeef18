import type { Knex } from 'knex';

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
  if (rows.length > 0 && !rows[0].valid) await knex.raw('drop index concurrently ??', [index]);
  await knex.raw(`create index concurrently if not exists ?? on ${definition}`, [index]);
}

export async function up(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, INDEX, 'api_keys (created_at)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index concurrently if exists ??', [INDEX]);
}
