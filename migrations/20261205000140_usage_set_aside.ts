import type { Knex } from 'knex';

// Usage a collector could not apply, kept instead of lost, one row per key (its delta in the usage
// log's form, collector/logDelta.ts):
//   unreadable: a usage log row a fold could not decode, written by another version of the
//               collector (a newer one, during a rolling deploy or after a rollback) or damaged;
//               the fold deleted it with the rows it applied.
//   refused:    a key's rows PostgreSQL refused with a data error (the flush's or fold's
//               quarantine), whose uses were dropped so every other key could be written.
// Moved here in the transaction that takes them; `npm run cli -- usage-log requeue` puts them in
// the usage log for the next fold (once the collector reads them, or the cause is fixed). No
// index, as the log: rows arrive rarely and are read whole. They may hold client addresses: IP
// retention deletes those older than IP_RETENTION_DAYS, and key erase-ips a key's
// (shared/ipRetention.ts).
const TABLE = 'api_key_usage_set_aside';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table ${TABLE} (
      org_id uuid not null,
      key_id uuid not null,
      logged_at timestamptz not null default now(),
      set_aside_at timestamptz not null default now(),
      reason text not null check (reason in ('unreadable', 'refused')),
      delta text not null
    )`);
}

// Its rows are uses no fold has applied: refuse to drop them.
export async function down(knex: Knex): Promise<void> {
  const { rows } = await knex.raw(`select count(*)::int as n from ${TABLE}`);
  if (rows[0].n > 0)
    throw new Error(`${TABLE} holds ${rows[0].n} rows set aside: requeue them (npm run cli -- usage-log requeue) and let a fold apply them first`);
  await knex.raw(`drop table ${TABLE}`);
}
