import type { Knex } from 'knex';

// Usage log rows a fold could not decode: written by another version of the collector (a newer
// one, during a rolling deploy or after a rollback), or damaged. The fold deleted them with the
// rows it applied, and their uses were gone for good; it moves them here instead, in the same
// transaction, and `npm run cli -- usage-log requeue` puts them back in the log for a collector
// that reads them. No index, as the log: rows arrive rarely and are read whole. They may hold
// client addresses: IP retention deletes those older than IP_RETENTION_DAYS, and key erase-ips a
// key's (shared/ipRetention.ts).
const TABLE = 'api_key_usage_log_unreadable';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table ${TABLE} (
      org_id uuid not null,
      key_id uuid not null,
      logged_at timestamptz not null,
      set_aside_at timestamptz not null default now(),
      delta text not null
    )`);
}

// Its rows are uses no fold has applied: refuse to drop them.
export async function down(knex: Knex): Promise<void> {
  const { rows } = await knex.raw(`select count(*)::int as n from ${TABLE}`);
  if (rows[0].n > 0)
    throw new Error(`${TABLE} holds ${rows[0].n} rows set aside: requeue them (npm run cli -- usage-log requeue) with a collector that reads them first`);
  await knex.raw(`drop table ${TABLE}`);
}
