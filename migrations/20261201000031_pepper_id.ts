import type { Knex } from 'knex';

// Which pepper made each stored hash (api/keys/keyMaterial.ts pepperId: a fingerprint of the
// pepper, never the pepper), so KEY_PEPPER can be rotated: a hash made with an older pepper
// (KEY_PEPPER_PREVIOUS) still verifies, and is rehashed with the current one on its next use.
// Rows written before this migration have null: made with whichever pepper was current then,
// which the verifier finds by trying each configured pepper.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('api_keys', (table) => {
    table.text('secret_pepper_id');
    table.text('previous_secret_pepper_id');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('api_keys', (table) => {
    table.dropColumn('secret_pepper_id');
    table.dropColumn('previous_secret_pepper_id');
  });
}
