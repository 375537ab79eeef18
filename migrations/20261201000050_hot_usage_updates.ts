import type { Knex } from 'knex';

// Every flush updates each active key's api_key_usage row, its current hour's bucket and its
// recent IPs. An update is HOT (no index entry written, the old version pruned in place) only
// when no indexed column changes and the page has room for the new version:
// - api_key_usage_org_last_used_idx indexed last_used_at, which every flush moves, so every
//   totals update wrote every index of the table. The usage endpoint reaches api_key_usage from
//   api_keys by (org_id, key_id), the primary key, and filters (dormant) and sorts (lastUsedAt)
//   over that join, which this index cannot serve; the dormant sweep joins every key.
// - Pages filled to 100 % leave no room for the new version. fillfactor keeps room on pages
//   written from now on; existing pages get it when the table is rewritten (VACUUM FULL).
//   A flush updates every row of an active key's page, so a page needs room for about as many new
//   versions as it holds rows: api_key_usage (one row per key, small) is kept half empty. The
//   hourly buckets and IP rows are updated only while recent and grow for 30 days, so they keep
//   more of the page and some of their updates stay non-HOT.
const FILLFACTOR: Record<string, number> = {
  api_key_usage: 50,
  api_key_usage_hourly: 70,
  api_key_recent_ips: 85,
  api_key_failed_ips: 85,
};

export async function up(knex: Knex): Promise<void> {
  await knex.raw('drop index if exists api_key_usage_org_last_used_idx');
  for (const [table, fillfactor] of Object.entries(FILLFACTOR)) await knex.raw(`alter table ?? set (fillfactor = ${fillfactor})`, [table]);
}

export async function down(knex: Knex): Promise<void> {
  for (const table of Object.keys(FILLFACTOR)) await knex.raw('alter table ?? reset (fillfactor)', [table]);
  await knex.raw('create index if not exists api_key_usage_org_last_used_idx on api_key_usage (org_id, last_used_at)');
}
