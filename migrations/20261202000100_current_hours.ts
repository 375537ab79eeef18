import type { Knex } from 'knex';
import { deleteKeyRowsFunction, KEY_ROW_TABLES } from './20261201000080_key_rows_cascade_from_totals';

// The hours still being counted get a table of their own: api_key_usage_current_hours.
//
// Every flush adds to the current hour's bucket of each key it carries. In api_key_usage_hourly
// that update could not be HOT since 20261201000070 put request_count into the primary key's
// leaf entries (the usage page's window sums are index-only thanks to it): each update wrote a
// new entry in the primary key, the largest statement of a 100 k-key flush (docs/benchmarks.md
// §4). Here the primary key is plain and the only index, and pages are kept half empty (a flush
// updates every row of an active key's page, as for api_key_usage), so the flush's updates are
// HOT. The collector's upkeep moves each closed hour into api_key_usage_hourly in one statement
// (collector/hourMove.ts), where it is written once per key and hour; readers sum both tables.
//
// Safe on existing data: the rows already in api_key_usage_hourly stay there (readers see them as
// before) and the new table starts empty. On Citus, scripts/citus/distribute.ts lays it out
// co-located with the other usage tables (it distributes every table with an org_id).

const TABLE = 'api_key_usage_current_hours';
const FILLFACTOR = 50;

const COUNT_COLUMNS = ['request_count', 'ok_count', 'forbidden_count', 'expired_count', 'revoked_count', 'bad_secret_count', 'cross_org_count'];

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`create table ${TABLE} (like api_key_usage_hourly including defaults) with (fillfactor = ${FILLFACTOR})`);
  await knex.raw(`alter table ${TABLE} add constraint ${TABLE}_pkey primary key (org_id, key_id, hour)`);
  await knex.raw(deleteKeyRowsFunction([...KEY_ROW_TABLES, TABLE]));
}

// Back to one table: every count still in the current hours goes into the hourly buckets first.
export async function down(knex: Knex): Promise<void> {
  const columns = ['org_id', 'key_id', 'hour', ...COUNT_COLUMNS].join(', ');
  await knex.raw(`
    insert into api_key_usage_hourly (${columns})
    select ${columns} from ${TABLE}
    on conflict (org_id, key_id, hour) do update set
      ${COUNT_COLUMNS.map((c) => `${c} = keyusage_add(api_key_usage_hourly.${c}, excluded.${c})`).join(',\n      ')}`);
  await knex.raw(deleteKeyRowsFunction(KEY_ROW_TABLES));
  await knex.raw(`drop table ${TABLE}`);
}
