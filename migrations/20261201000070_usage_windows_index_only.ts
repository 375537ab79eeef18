import type { Knex } from 'knex';

// The usage page sums, for each of its 50 keys, the key's hourly buckets of the last 30 days
// (last 24 h, 7 d, 30 d and the 7-day sparkline). Buckets are appended hour by hour for every key
// at once, so one key's 720 buckets lie on up to 720 heap pages, and busiest-first lists exactly
// the keys with the most buckets: 36 k page reads for one page (docs/benchmarks.md §5). With
// request_count in the primary key's leaf entries (INCLUDE: stored, not part of the key, so the
// ON CONFLICT target is unchanged) the sums are an index-only scan over the key's few adjacent
// leaf pages. The cost is on the write path: the flush's update of the current hour's
// request_count is no longer HOT (it writes an entry in each of the table's two indexes);
// measured in docs/benchmarks.md §5.

export const PRIMARY_KEY = {
  plain: 'primary key (org_id, key_id, hour)',
  covering: 'primary key (org_id, key_id, hour) include (request_count)',
};

export async function setPrimaryKey(knex: Knex, definition: string): Promise<void> {
  await knex.raw('alter table api_key_usage_hourly drop constraint api_key_usage_hourly_pkey');
  await knex.raw(`alter table api_key_usage_hourly add constraint api_key_usage_hourly_pkey ${definition}`);
}

export async function up(knex: Knex): Promise<void> {
  await setPrimaryKey(knex, PRIMARY_KEY.covering);
}

export async function down(knex: Knex): Promise<void> {
  await setPrimaryKey(knex, PRIMARY_KEY.plain);
}
