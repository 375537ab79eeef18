import type { Knex } from 'knex';
import { createIndexConcurrently } from './20261203000120_api_keys_created_at_index';

// The hourly IP erasure (shared/ipRetention.ts) read two tables whole on every run:
// - audit_log, by `ip is not null and occurred_at < cutoff`: no index led by occurred_at, and
//   the log is never deleted from, so each run read every entry ever written (5.1 s cold at 4 M
//   entries, to clear 17 addresses) and grew with the log; past DATABASE_REPLY_TIMEOUT_MS it
//   failed every run. Only the entries still holding an address are indexed: the index stays as
//   small as IP_RETENTION_DAYS keeps them.
// - key_events, by a deferred key.new_ip's details.firstSeen (text, compared as text in the "C"
//   collation, as the rule does): only the events that have one are indexed. The other rule,
//   by occurred_at, has key_events_occurred_at_idx.
//
// Built concurrently, outside a transaction (20261203000120): audit entries and events keep being
// written by the previous version meanwhile. On Citus both tables are distributed; Citus builds
// the index on every shard (as 20261207000240's on audit_log).
export const config = { transaction: false };

export const AUDIT_IP_INDEX = { name: 'audit_log_ip_held_idx', on: 'audit_log (occurred_at) where ip is not null' };
export const EVENT_FIRST_SEEN_INDEX = {
  name: 'key_events_first_seen_idx',
  on: `key_events (((details->>'firstSeen') collate "C")) where (details->>'firstSeen') is not null`,
};

export async function up(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, AUDIT_IP_INDEX.name, AUDIT_IP_INDEX.on);
  await createIndexConcurrently(knex, EVENT_FIRST_SEEN_INDEX.name, EVENT_FIRST_SEEN_INDEX.on);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index concurrently if exists ??', [EVENT_FIRST_SEEN_INDEX.name]);
  await knex.raw('drop index concurrently if exists ??', [AUDIT_IP_INDEX.name]);
}
