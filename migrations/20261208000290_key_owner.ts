import type { Knex } from 'knex';

// Who answers for a key: a person, team or address to ask before it is revoked. A dormant key's
// clean-up is a guess from recorded uses, and an operator had only the key's name (and its
// creator's id) to find whom to ask; the name is what the key is for, not who holds it. One
// nullable column without a default: no table rewrite, a moment's lock on api_keys, which the
// previous version, still serving, reads unchanged (it selects every column and maps what it knows).
export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table api_keys add column owner text');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table api_keys drop column owner');
}
