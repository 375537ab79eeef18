import type { Knex } from 'knex';
import { createIndexConcurrently, withoutLockTimeout } from './20261203000120_api_keys_created_at_index';

// GET /api/orgs/:id/usage sums every key of an org by the hour. The closed hours' primary key,
// (org_id, key_id, hour), holds an org's hours key by key: a 7-day series of a year-old org read
// every hour of every key it ever had. Led by (org_id, hour), the index finds the range's rows
// only, and the heap pages they are on are few: the upkeep moves each closed hour's rows org by
// org (collector/hourMove.ts), so an org's rows of one hour lie together. Without INCLUDEd
// counts: covering, for index-only sums, it measured 0.77 × the table's size; plain, the btree
// keeps an org's rows of one hour under one key (deduplication), and it measured 88 MiB beside the
// table's 2,191 MiB (12.9 M rows of 100 orgs, docs/benchmarks.md §5). The open hours
// (api_key_usage_current_hours) hold an hour or two a key and keep a single index, so that the
// flush's updates stay HOT.
//
// Built concurrently, outside a transaction (20261203000120): the previous version's upkeep keeps
// moving hours into the table meanwhile. On Citus the table is distributed and the index is built
// on every shard.
export const config = { transaction: false };

export const ORG_HOUR_INDEX = {
  name: 'api_key_usage_hourly_org_hour_idx',
  on: 'api_key_usage_hourly (org_id, hour)',
};

export async function up(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, ORG_HOUR_INDEX.name, ORG_HOUR_INDEX.on);
}

// A concurrent drop waits for every transaction on the table, an hour move's chunk among them,
// longer than npm run migrate's lock_timeout (as 20261205000160's drop).
export async function down(knex: Knex): Promise<void> {
  await withoutLockTimeout(knex, [knex.raw('drop index concurrently if exists ??', [ORG_HOUR_INDEX.name]).toQuery()]);
}
