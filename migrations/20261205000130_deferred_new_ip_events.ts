import type { Knex } from 'knex';

// key.new_ip's hourly limit (EVENTS_NEW_IP_PER_KEY_HOUR) defers the networks over it: the flush
// sets event_due_at on their history rows and the collector's time sweep raises their events once
// an hour has room (collector/deferredNetworks.ts), moving a key without room to the next hour.
// Before, they were dropped from the history and raised an event only if used again in an hour
// with room, so whoever filled a key's hours with forged networks hid its real new ones.
//
// A nullable column is added without rewriting the table, and only collectors write it (they are
// stopped while migrations run), so the index is built in the transaction. It is partial, and in
// the sweep's order: the sweep reads the earliest due rows only, a handful beside the history's
// millions.
const TABLE = 'api_key_ip_history';
const INDEX = 'api_key_ip_history_due_idx';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`alter table ${TABLE} add column event_due_at timestamptz`);
  await knex.raw(`create index ${INDEX} on ${TABLE} (event_due_at, first_seen) where event_due_at is not null`);
}

// The previous version keeps no deferred networks: they leave the history as it dropped them, so
// a later use from one is new again.
export async function down(knex: Knex): Promise<void> {
  await knex.raw(`delete from ${TABLE} where event_due_at is not null`);
  await knex.raw(`drop index ${INDEX}`);
  await knex.raw(`alter table ${TABLE} drop column event_due_at`);
}
