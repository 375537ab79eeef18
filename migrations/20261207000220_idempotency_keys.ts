import type { Knex } from 'knex';

// A create or rotate sent with an Idempotency-Key is remembered here for IDEMPOTENCY_KEY_TTL_SECONDS
// (api/idempotency/idempotency.repository.ts), so a client that lost the answer and retries gets
// the first outcome back instead of a second key. Per org and caller (the acting key), the key
// itself as its SHA-256 (nothing a client chose is kept as written), the SHA-256 of the request
// (method, route, target key, body) to refuse the same key for another request, and the first
// answer's status and key view. Never the plaintext key: a replay answers without it.
//
// org_id leads the primary key, as every table distributed by it on Citus (scripts/citus/distribute.ts
// lays it out with the others); the foreign key goes to organizations, a reference table there.
// The created or rotated key's id has none: api_keys rows may be deleted by an operator, and the
// answer kept does not depend on the row. Expired rows are deleted by the API on its write path.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('idempotency_keys', (table) => {
    table.uuid('org_id').notNullable().references('id').inTable('organizations').onDelete('CASCADE');
    // The acting key's id; the nil UUID for a caller without one (the CLI sends none today).
    table.uuid('caller_key_id').notNullable();
    table.binary('key_hash').notNullable();
    table.binary('request_hash').notNullable();
    table.smallint('response_status').notNullable();
    table.jsonb('response_body').notNullable();
    table.uuid('key_id').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable();
    table.primary(['org_id', 'caller_key_id', 'key_hash']);
    table.index(['org_id', 'created_at'], 'idempotency_keys_org_created_idx');
  });
  // A SHA-256 each, and no plaintext key in a kept answer, whatever writes it. One constraint a
  // statement: on Citus the table is a local table of the coordinator from its foreign key to a
  // reference table, and Citus refuses an ALTER TABLE of several ADD CONSTRAINTs there.
  await knex.raw(
    `alter table idempotency_keys add constraint idempotency_keys_hashes_check check (octet_length(key_hash) = 32 and octet_length(request_hash) = 32)`,
  );
  await knex.raw(`alter table idempotency_keys add constraint idempotency_keys_no_plaintext_check check ((response_body -> 'key') is null)`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('idempotency_keys');
}
