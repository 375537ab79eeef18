import type { Knex } from 'knex';

// A webhook's signing secret rotates in place: the documented rotation (create a new webhook,
// delete the old one) lost every event pending on the old webhook, its delivery log with it, and
// sent each event twice meanwhile. The previous secret is kept, sealed as secret_box is
// (shared/secretBox.ts, the webhook id as associated data), until its grace period ends; the
// worker signs with both until then. Nullable columns without a default: on Citus an ALTER TABLE
// of a distributed table (webhooks is, by org_id) that adds such a column is propagated to every
// shard without rewriting a row.
export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table webhooks add column previous_secret_box bytea, add column previous_secret_expires_at timestamptz');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table webhooks drop column previous_secret_box, drop column previous_secret_expires_at');
}
