import type { Knex } from 'knex';

// The usage log: what a collector's flush appends when COLLECTOR_USAGE_LOG sends it there (collector/usageLog.ts).
//
// A flush then appends one row per key (the key's whole delta) and commits; the fold upserts the
// log into the usage tables later, every flush of a key since the last fold in one upsert. No
// index and no primary key: an append is the cheapest write PostgreSQL has (a 100 k-row COPY into
// a table without an index took 0.25-0.31 s here, against 0.84-0.93 s for one upsert; docs/
// benchmarks.md §4b), and the fold reads and deletes every row of the orgs it folds, a sequential
// scan of a table it keeps near empty. Its exactly-once is the flush ledger (usage_flushes) for
// the append and the delete itself for the fold. On Citus it is distributed by org_id like every
// table with one (scripts/citus/distribute.ts), so an org's log sits beside its usage rows.

const TABLE = 'api_key_usage_log';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table ${TABLE} (
      org_id uuid not null,
      key_id uuid not null,
      logged_at timestamptz not null default now(),
      delta text not null
    )`);
}

// Rows still in the log are uses no fold has applied yet: refuse to drop them.
export async function down(knex: Knex): Promise<void> {
  const { rows } = await knex.raw(`select count(*)::int as n from ${TABLE}`);
  if (rows[0].n > 0) throw new Error(`${TABLE} holds ${rows[0].n} rows not yet folded: start a collector to fold them first`);
  await knex.raw(`drop table ${TABLE}`);
}
