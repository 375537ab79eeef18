import type { Knex } from 'knex';

// A key rotated with a grace period keeps its previous secret working until the grace ends; its
// uses counted with the new secret's, an operator could not tell whether clients still send the
// old one. The collector keeps, per key, the newest use of the previous secret and its address
// (collector/usageStore.ts, a max-merge like last_used_at/_ip). api_key_usage is keyed by
// (org_id, key_id) already, its org_id the distribution column on Citus: nullable columns without
// a default are propagated to every shard without rewriting a row, and rows written before hold
// null (no such use known).
export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table api_key_usage add column previous_secret_last_used_at timestamptz, add column previous_secret_last_used_ip text');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table api_key_usage drop column previous_secret_last_used_at, drop column previous_secret_last_used_ip');
}
