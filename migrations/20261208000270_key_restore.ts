import type { Knex } from 'knex';

// A key revoked by the dormant clean-up can be restored for a while (POST …/api-keys/:keyId/restore):
// a clean-up is a guess from recorded uses, and a key that guessed wrong used to be gone for good,
// with every client that held it broken until a new key was deployed. restorable_until is when
// that ends (null: revoked for good, as a single revoke and every revocation before this one is);
// restored_at starts the key's idle time again (shared/dormancy.ts), or the next clean-up would
// revoke a key restored unused at once. Two nullable columns without a default: no table rewrite,
// a moment's lock on api_keys, which the previous version, still serving, reads unchanged.
export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table api_keys add column restorable_until timestamptz');
  await knex.raw('alter table api_keys add column restored_at timestamptz');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table api_keys drop column restored_at');
  await knex.raw('alter table api_keys drop column restorable_until');
}
