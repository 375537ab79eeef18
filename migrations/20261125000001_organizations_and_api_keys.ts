import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('organizations', (table) => {
    table.uuid('id').primary().defaultTo(knex.raw('gen_random_uuid()'));
    table.text('name').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });

  await knex.schema.createTable('api_keys', (table) => {
    table.uuid('id').primary();
    table.uuid('org_id').notNullable().references('id').inTable('organizations').onDelete('CASCADE');
    table.text('name').notNullable();
    table.text('display_prefix').notNullable();
    // HMAC-SHA-256 of the secret with the server-side pepper; the plaintext is never stored.
    table.binary('secret_hash').notNullable();
    table.binary('previous_secret_hash');
    table.timestamp('previous_secret_expires_at', { useTz: true });
    table.specificType('scopes', 'text[]').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.timestamp('expires_at', { useTz: true });
    table.timestamp('revoked_at', { useTz: true });
    table.timestamp('rotated_at', { useTz: true });
    table.index(['org_id', 'created_at', 'id'], 'api_keys_org_created_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('api_keys');
  await knex.schema.dropTable('organizations');
}
