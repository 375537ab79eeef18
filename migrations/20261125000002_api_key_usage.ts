import type { Knex } from 'knex';

// Usage lives apart from api_keys so that counter writes never lock the rows the auth path
// reads. Foreign keys cascade so deleting a key or an org removes its history.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('api_key_usage', (table) => {
    table.uuid('key_id').primary().references('id').inTable('api_keys').onDelete('CASCADE');
    table.uuid('org_id').notNullable();
    table.bigInteger('request_count').notNullable().defaultTo(0);
    for (const outcome of ['ok', 'forbidden', 'expired', 'revoked', 'bad_secret', 'cross_org']) {
      table.bigInteger(`${outcome}_count`).notNullable().defaultTo(0);
    }
    table.timestamp('last_used_at', { useTz: true }).notNullable();
    table.text('last_used_ip').notNullable();
    table.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.index(['org_id', 'last_used_at'], 'api_key_usage_org_last_used_idx');
  });

  await knex.schema.createTable('api_key_usage_hourly', (table) => {
    table.uuid('key_id').notNullable().references('id').inTable('api_keys').onDelete('CASCADE');
    table.timestamp('hour', { useTz: true }).notNullable();
    table.bigInteger('request_count').notNullable();
    table.primary(['key_id', 'hour']);
    table.index(['hour'], 'api_key_usage_hourly_hour_idx');
  });

  await knex.schema.createTable('api_key_recent_ips', (table) => {
    table.uuid('key_id').notNullable().references('id').inTable('api_keys').onDelete('CASCADE');
    table.text('ip').notNullable();
    table.timestamp('first_seen', { useTz: true }).notNullable();
    table.timestamp('last_seen', { useTz: true }).notNullable();
    table.bigInteger('request_count').notNullable();
    table.primary(['key_id', 'ip']);
  });

  // One row per applied flush, written in the flush's own transaction: a retried flush whose
  // first COMMIT did land finds its id here and is skipped instead of counted twice.
  await knex.schema.createTable('usage_flushes', (table) => {
    table.uuid('id').primary();
    table.timestamp('applied_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.index(['applied_at'], 'usage_flushes_applied_at_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('usage_flushes');
  await knex.schema.dropTable('api_key_recent_ips');
  await knex.schema.dropTable('api_key_usage_hourly');
  await knex.schema.dropTable('api_key_usage');
}
