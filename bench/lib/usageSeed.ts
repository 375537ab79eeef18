import { performance } from 'node:perf_hooks';
import type { Db } from '../../shared/db';
import { fmt } from './report';

// Keys and 30 days of usage for many orgs at once, in set-based statements (generate_series), the
// shape stated in docs/benchmarks.md §5. Key n of an org (1-based, oldest first) is, by n % 100:
//   0       hot     (1 %): a bucket every hour of the last 30 days (720), the org's busiest keys;
//   1 – 19  active (19 %): one bucket a day (30), at hour n % 24 of the day;
//   20 – 49 stale  (30 %): a usage row, last used 31–180 days ago, no bucket in the window;
//   50 – 99 unused (50 %): no usage row.
// 20 % of keys used in the last 30 days: most keys of a tenant are CI, staging or forgotten keys,
// and a bucket exists only for an hour a key was used. Buckets go in hour by hour, every org's in
// the same statement, the order in which flushes append them: a key's rows are spread over the
// table as in production, not packed together; the current hour's buckets end up in the current
// hours' table, where the flush writes them. Used keys have 3 recent IPs; 2 % of keys have an
// event in the last 7 days.

export const SEED_SHAPE =
  '1 % of keys hot (a bucket every hour of 30 days, 720 rows), 19 % active (one bucket a day, 30 rows), 30 % last used 31–180 days ago (usage row, no bucket), 50 % never used; ' +
  'buckets written hour by hour across every org (as flushes append them), the current hour’s in api_key_usage_current_hours; used keys have 3 recent IPs, 2 % of keys an event in the last 7 days; then VACUUM ANALYZE';

export interface SeedCounts {
  keys: number;
  hourly: number;
  usage: number;
  seconds: number;
}

const HOT = 'k.n % 100 = 0';
const ACTIVE = 'k.n % 100 between 1 and 19';
const STALE = 'k.n % 100 between 20 and 49';

/**
 * Seeds `keysPerOrg` keys named `${prefix}${n}` in each org, with usage of the shape above.
 * Stops with an error once `budgetMs` is spent (checked between statements).
 */
export async function seedTenants(
  db: Db,
  orgIds: string[],
  keysPerOrg: number,
  options: { prefix: string; budgetMs: number; log: (line: string) => void },
): Promise<SeedCounts> {
  const started = performance.now();
  const step = async (label: string, sql: string, bindings: Record<string, unknown> = {}) => {
    if (performance.now() - started > options.budgetMs) throw new Error(`seed budget of ${options.budgetMs / 1000} s spent before "${label}"`);
    const t = performance.now();
    const result = await db.raw(sql, bindings as never);
    options.log(`seed: ${label} in ${fmt.ms(performance.now() - t, 0)}`);
    return result;
  };
  const scope = { orgIds, prefix: options.prefix, count: keysPerOrg };
  // Each key's ordinal computed once, in a table of its own (unlogged: scratch), so the statements
  // below join integers instead of parsing names.
  await step('key ordinals', 'drop table if exists bench_seed_keys');
  await step(
    'key ordinals',
    `create unlogged table bench_seed_keys as
     select gen_random_uuid() as id, o.org_id, n
       from unnest(cast(:orgIds as uuid[])) as o(org_id) cross join generate_series(1, cast(:count as int)) as n`,
    scope,
  );
  // Keys created over the last year, one org's n-th key as old as every other org's.
  await step(
    `${fmt.int(orgIds.length * keysPerOrg)} keys`,
    `insert into api_keys (id, org_id, name, display_prefix, secret_hash, scopes, created_at)
     select k.id, k.org_id, :prefix || k.n, 'ku_' || substr(replace(cast(k.id as text), '-', ''), 1, 8),
            decode(md5(cast(k.id as text)), 'hex'), cast('{keys:read}' as text[]), now() - make_interval(secs => (:count - k.n) * 3000)
       from bench_seed_keys k order by k.org_id, k.n`,
    scope,
  );
  const keys = 'bench_seed_keys k';
  // One statement per day of buckets, each in hour order: bounded statements, progress, and the
  // append order of real flushes. The table's indexes are dropped meanwhile and built afterwards
  // (as for any bulk load): inserted in hour order, every row would land on a random page of an
  // index larger than shared_buffers.
  const rebuildIndexes = await dropIndexes(db, 'api_key_usage_hourly');
  for (let day = 29; day >= 0; day--) {
    await step(
      `buckets of day -${day}`,
      `insert into api_key_usage_hourly (org_id, key_id, hour, request_count, ok_count)
       select k.org_id, k.id, date_trunc('hour', now()) - make_interval(hours => h.h), c.n, c.n
         from ${keys}
         cross join generate_series(:day * 24 + 23, :day * 24, -1) as h(h)
         cross join lateral (select case when ${HOT} then 50 + (k.n * 7 + h.h) % 500 else 1 + (k.n * 7 + h.h) % 50 end as n) c
        where (${HOT} or ${ACTIVE}) and (${HOT} or h.h % 24 = k.n % 24)
        order by h.h desc, k.org_id, k.id`,
      { ...scope, day },
    );
  }
  for (const [i, sql] of rebuildIndexes.entries()) await step(`index ${i + 1} of api_key_usage_hourly`, sql);
  await step(
    'usage rows of used keys',
    `insert into api_key_usage (org_id, key_id, request_count, ok_count, last_used_at, last_used_ip)
     select h.org_id, h.key_id, sum(h.request_count) + 1000, sum(h.request_count) + 1000, max(h.hour), '10.1.0.' || (count(*) % 250)
       from api_key_usage_hourly h
      where h.org_id = any (cast(:orgIds as uuid[]))
      group by h.org_id, h.key_id`,
    scope,
  );
  await step(
    'usage rows of stale keys',
    `insert into api_key_usage (org_id, key_id, request_count, ok_count, last_used_at, last_used_ip)
     select k.org_id, k.id, 10 + k.n % 90, 10 + k.n % 90, now() - make_interval(days => 31 + k.n % 150), '10.1.' || (k.n % 250) || '.' || (k.n % 200)
       from ${keys} where ${STALE}`,
    scope,
  );
  await step(
    'recent IPs',
    `insert into api_key_recent_ips (org_id, key_id, ip, first_seen, last_seen, request_count)
     select k.org_id, k.id, '10.2.' || (k.n % 250) || '.' || i, now() - interval '20 days', now() - make_interval(hours => i), 5 * i
       from ${keys} cross join generate_series(1, 3) as i
      where ${HOT} or ${ACTIVE}`,
    scope,
  );
  await step(
    'events',
    `insert into key_events (org_id, key_id, type, occurred_at, details)
     select k.org_id, k.id, 'key.new_ip', now() - make_interval(hours => k.n % 160), '{}'
       from ${keys} where k.n % 50 = 3`,
    scope,
  );
  // The hour still being counted lives in its own table until the collector moves it (collector/hourMove.ts).
  await step(
    'the current hour into api_key_usage_current_hours',
    `with current as (delete from api_key_usage_hourly where org_id = any (cast(:orgIds as uuid[])) and hour >= date_trunc('hour', now()) returning *)
     insert into api_key_usage_current_hours (org_id, key_id, hour, request_count, ok_count)
     select org_id, key_id, hour, request_count, ok_count from current order by key_id, hour`,
    scope,
  );
  await step('drop key ordinals', 'drop table bench_seed_keys');
  for (const table of ['api_keys', 'api_key_usage', 'api_key_usage_hourly', 'api_key_usage_current_hours', 'api_key_recent_ips', 'key_events']) {
    await step(`vacuum analyze ${table}`, `vacuum analyze ${table}`);
  }
  const counts = await db.raw(
    `select (select count(*) from api_keys where org_id = any (cast(:orgIds as uuid[]))) as keys,
            (select count(*) from api_key_usage_hourly where org_id = any (cast(:orgIds as uuid[]))) as hourly,
            (select count(*) from api_key_usage where org_id = any (cast(:orgIds as uuid[]))) as usage`,
    scope,
  );
  const row = counts.rows[0];
  return { keys: Number(row.keys), hourly: Number(row.hourly), usage: Number(row.usage), seconds: (performance.now() - started) / 1000 };
}

/** Drops the table's primary key and indexes; returns the statements that build them again. */
async function dropIndexes(db: Db, table: string): Promise<string[]> {
  const constraints = await db.raw(
    `select conname, pg_get_constraintdef(oid) as def from pg_constraint where conrelid = cast(? as regclass) and contype in ('p', 'u')`,
    [table],
  );
  const indexes = await db.raw(
    `select i.indexname, i.indexdef from pg_indexes i
      where i.tablename = ? and i.schemaname = current_schema()
        and not exists (select 1 from pg_constraint c where c.conindid = cast(i.indexname as regclass))`,
    [table],
  );
  const rebuild: string[] = [];
  for (const row of constraints.rows as Array<{ conname: string; def: string }>) {
    await db.raw('alter table ?? drop constraint ??', [table, row.conname]);
    rebuild.push(db.raw(`alter table ?? add constraint ?? ${row.def}`, [table, row.conname]).toQuery());
  }
  for (const row of indexes.rows as Array<{ indexname: string; indexdef: string }>) {
    await db.raw('drop index ??', [row.indexname]);
    rebuild.push(row.indexdef);
  }
  return rebuild;
}
