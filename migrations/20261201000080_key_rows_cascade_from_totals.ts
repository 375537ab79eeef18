import type { Knex } from 'knex';

// A key's rows go with it through its totals row, not through a foreign key on every table.
//
// Each row inserted into the hourly, IP, IP-history and event tables ran a foreign-key check
// (`SELECT … FOR KEY SHARE` on api_keys, events also on organizations): ≈ 6 s of a 100 k-key flush
// in which every key came from a new address (docs/benchmarks.md §4). The application never
// deletes keys or organizations (keys are revoked); only an operator's SQL does. What the keys
// did for that is kept another way:
// - api_key_usage keeps its foreign key to api_keys (ON DELETE CASCADE). Its rows are inserted
//   once per key, not once per flush, so the check is rare; and every writer of the other tables
//   writes the key's totals row first in the same transaction (the flush's upsert, the event
//   sweep's anchor), which either locks the existing row or checks the key, so a concurrent
//   DELETE of the key waits for that transaction or makes it fail (collector/usageStore.ts).
// - An AFTER DELETE row trigger on api_key_usage deletes the key's rows from the other tables,
//   by (org_id, key_id): the cascade from organizations → api_keys → api_key_usage reaches them.
//   On Citus this trigger runs on the org's shard of api_key_usage and deletes from the
//   co-located shards of the same org (as the webhook outbox trigger inserts); a trigger on
//   api_keys could not, because api_keys is a reference table and Citus refuses a query on a
//   distributed table from a trigger on a reference table's placement.
// - Keys that have rows in those tables but no totals row (the sweep's key.dormant of a key never
//   used) get a zero totals row here, so the trigger finds them.

/** The tables whose rows the totals row carries, and the foreign keys they lose. */
export const KEY_ROW_TABLES = ['api_key_usage_hourly', 'api_key_recent_ips', 'api_key_failed_ips', 'api_key_ip_history', 'key_events'] as const;

const FUNCTION = 'keyusage_delete_key_rows';
const TRIGGER = 'api_key_usage_delete_key_rows';

/** The trigger's function, deleting the key's rows from `tables` (20261202000100 adds a table). */
export const deleteKeyRowsFunction = (tables: readonly string[]) => `
  create or replace function ${FUNCTION}() returns trigger language plpgsql as $$
  begin
    ${tables.map((table) => `delete from ${table} where org_id = old.org_id and key_id = old.key_id;`).join('\n    ')}
    return null;
  end $$`;

/** Undoes up(): the foreign keys (and their cascades) of 20261125000002…20261201000010 back. Also the benchmark's "fk-checks" variant. */
export const RESTORE_FOREIGN_KEYS = [
  `drop trigger if exists ${TRIGGER} on api_key_usage`,
  `drop function if exists ${FUNCTION}()`,
  ...KEY_ROW_TABLES.map(
    (table) => `alter table ${table} add constraint ${table}_key_id_foreign foreign key (key_id) references api_keys (id) on delete cascade`,
  ),
  'alter table key_events add constraint key_events_org_id_foreign foreign key (org_id) references organizations (id) on delete cascade',
];

const zeroTotals = (tables: readonly string[]) => `
  insert into api_key_usage (org_id, key_id)
  select distinct r.org_id, r.key_id
    from (${tables.map((table) => `select org_id, key_id from ${table}`).join(' union ')}) r
    join api_keys k on k.id = r.key_id and k.org_id = r.org_id
  on conflict (org_id, key_id) do nothing`;

export async function up(knex: Knex): Promise<void> {
  // The scan of every key table first, while the foreign keys stand: dropping one takes ACCESS
  // EXCLUSIVE on api_keys (and on organizations) until the commit, and the previous version's API,
  // serving beside the migration, could not read a key for as long as the scan of the hourly
  // buckets took. Then, with the tables locked, the events once more: only the event sweep writes
  // a row of a key that has no totals row, and it may have since the scan.
  await knex.raw(zeroTotals(KEY_ROW_TABLES));
  for (const table of KEY_ROW_TABLES) await knex.raw('alter table ?? drop constraint ??', [table, `${table}_key_id_foreign`]);
  await knex.raw('alter table key_events drop constraint key_events_org_id_foreign');
  await knex.raw(zeroTotals(['key_events']));
  await knex.raw(deleteKeyRowsFunction(KEY_ROW_TABLES));
  await knex.raw(`create trigger ${TRIGGER} after delete on api_key_usage for each row execute function ${FUNCTION}()`);
}

export async function down(knex: Knex): Promise<void> {
  for (const statement of RESTORE_FOREIGN_KEYS) await knex.raw(statement);
}
