import type { Knex } from 'knex';

// The collector's key list (collector/keyListSync.ts) reads the keys created in the last minutes
// every few seconds; without this index each read scanned the whole of api_keys.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('api_keys', (table) => {
    table.index(['created_at'], 'api_keys_created_at_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('api_keys', (table) => {
    table.dropIndex(['created_at'], 'api_keys_created_at_idx');
  });
}
