import type { Knex } from 'knex';

// Citus-ready keys (docs/scaling.md): every usage, bucket, IP, event and flush-ledger table
// carries org_id, and its primary key and unique constraints start with it, because Citus
// distributes these tables by org_id and requires the distribution column in every unique
// constraint. organizations and api_keys keep their keys: on Citus they are reference tables
// (a copy on every node), so the auth path's lookup by key id alone stays a local read.
//
// Runs on plain PostgreSQL, in one transaction, before any table is distributed
// (scripts/citus/distribute.ts does that afterwards). Collectors are stopped while it runs: the
// previous version's ON CONFLICT targets no longer match a constraint.

const IP_TABLES = ['api_key_recent_ips', 'api_key_failed_ips'];
const BACKFILLED = ['api_key_usage_hourly', ...IP_TABLES];

async function replacePrimaryKey(knex: Knex, table: string, columns: string[]) {
  await knex.raw(`alter table ?? drop constraint ??`, [table, `${table}_pkey`]);
  await knex.raw(`alter table ?? add constraint ?? primary key (${columns.map(() => '??').join(', ')})`, [table, `${table}_pkey`, ...columns]);
}

export async function up(knex: Knex): Promise<void> {
  for (const table of BACKFILLED) {
    await knex.schema.alterTable(table, (t) => t.uuid('org_id'));
    await knex.raw(`update ?? r set org_id = k.org_id from api_keys k where k.id = r.key_id`, [table]);
    await knex.schema.alterTable(table, (t) => t.dropNullable('org_id'));
  }
  // The ledger holds one row per (flush, org) from now on. Its rows only let a collector that
  // retries an in-doubt flush skip it; no collector of the previous version survives this
  // migration, so the org-less rows can never match again.
  await knex('usage_flushes').delete();
  await knex.schema.alterTable('usage_flushes', (t) => t.uuid('org_id').notNullable());

  await replacePrimaryKey(knex, 'api_key_usage', ['org_id', 'key_id']);
  await replacePrimaryKey(knex, 'api_key_usage_hourly', ['org_id', 'key_id', 'hour']);
  for (const table of IP_TABLES) await replacePrimaryKey(knex, table, ['org_id', 'key_id', 'ip']);
  await replacePrimaryKey(knex, 'usage_flushes', ['org_id', 'id']);
  await replacePrimaryKey(knex, 'key_events', ['org_id', 'id']);
  await knex.schema.alterTable('key_events', (t) => {
    t.dropUnique(['dedupe_key']);
    t.unique(['org_id', 'dedupe_key']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('key_events', (t) => {
    t.dropUnique(['org_id', 'dedupe_key']);
    t.unique(['dedupe_key']);
  });
  await replacePrimaryKey(knex, 'key_events', ['id']);
  // Several (flush, org) rows share a flush id; one per flush is enough to skip a retry.
  await knex.raw(`delete from usage_flushes f using usage_flushes g where f.id = g.id and f.org_id > g.org_id`);
  await replacePrimaryKey(knex, 'usage_flushes', ['id']);
  await knex.schema.alterTable('usage_flushes', (t) => t.dropColumn('org_id'));
  for (const table of IP_TABLES) await replacePrimaryKey(knex, table, ['key_id', 'ip']);
  await replacePrimaryKey(knex, 'api_key_usage_hourly', ['key_id', 'hour']);
  await replacePrimaryKey(knex, 'api_key_usage', ['key_id']);
  for (const table of BACKFILLED) await knex.schema.alterTable(table, (t) => t.dropColumn('org_id'));
}
