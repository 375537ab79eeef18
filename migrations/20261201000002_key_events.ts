import type { Knex } from 'knex';

// Key events (new IP, spike, revoked key used, …), detected by the collector inside its flush
// transaction or by its periodic sweep. Never key material: `details` holds IPs, counts and
// thresholds. `dedupe_key` makes "at most once per key per <window>" a unique constraint, so
// two collectors flushing the same key cannot both emit the same event.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('key_events', (table) => {
    table.uuid('id').primary().defaultTo(knex.raw('gen_random_uuid()'));
    table.uuid('org_id').notNullable().references('id').inTable('organizations').onDelete('CASCADE');
    table.uuid('key_id').notNullable().references('id').inTable('api_keys').onDelete('CASCADE');
    table.text('type').notNullable();
    table.timestamp('occurred_at', { useTz: true }).notNullable();
    table.jsonb('details').notNullable().defaultTo('{}');
    table.text('dedupe_key').unique();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.index(['org_id', 'occurred_at', 'id'], 'key_events_org_time_idx');
    table.index(['key_id', 'type', 'occurred_at'], 'key_events_key_type_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('key_events');
}
