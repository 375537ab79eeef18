import type { Knex } from 'knex';

// Webhook create and secret rotation take an Idempotency-Key too (api/idempotency/idempotentChange.ts):
// their answers are kept in idempotency_keys beside the key creates and rotates. `resource` says
// what a row's change made or changed, an API key or a webhook, and so what its key_id (the
// column's name from 20261207000220, which may have been run) is the id of. Existing rows, and
// those an API of the previous version writes while this one rolls out, are key changes: the
// default. (One such API reusing an expired webhook row for a key change leaves it labelled
// 'webhook': its upsert sets no resource. Nothing decides by the label: the request's hash
// names the route, so no row replays on another resource's route.) The one key per caller and idempotency key stays: the same key sent to a webhook
// route after a key route is another request (422), as before.
//
// A webhook's answer carries its signing secret as `secret`: refused in a kept answer as a key's
// plaintext is. A column with a constant default and two checks on a table of a day's rows: no
// rewrite, a short scan. One change a statement: Citus refuses an ALTER TABLE of several
// subcommands with an ADD CONSTRAINT among them.
export async function up(knex: Knex): Promise<void> {
  await knex.raw(`alter table idempotency_keys add column resource text not null default 'api_key'`);
  await knex.raw(`alter table idempotency_keys add constraint idempotency_keys_resource_check check (resource in ('api_key', 'webhook'))`);
  await knex.raw(`alter table idempotency_keys add constraint idempotency_keys_no_secret_check check ((response_body -> 'secret') is null)`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`delete from idempotency_keys where resource <> 'api_key'`);
  await knex.raw(`alter table idempotency_keys drop constraint idempotency_keys_no_secret_check`);
  await knex.raw(`alter table idempotency_keys drop constraint idempotency_keys_resource_check`);
  await knex.raw(`alter table idempotency_keys drop column resource`);
}
