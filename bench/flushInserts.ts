import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { createScratchDatabase, openPostgresServer } from '../harness/postgres';
import { createDb, migrateLatest, type Db } from '../shared/db';
import { TABLE } from '../shared/tables';
import { MIGRATED, openVariantDatabase, selectedVariants } from './flushVariants';
import { median } from './lib/stats';

// The per-row work of a new-IP flush's inserts, apart from the rest of the flush: 100 k rows
// inserted into each table that grows when every key comes from a new address, in a transaction
// that is rolled back (so every repetition meets the same tables), per schema variant in its own
// database, interleaved, with the time PostgreSQL reports for each trigger (foreign-key checks,
// the webhook outbox) from EXPLAIN ANALYZE. Not part of `npm run bench`; docs/benchmarks.md §4.
//
//   BENCH_FLUSH_VARIANTS=before-080,fk-checks,outbox-insert-always npx tsx bench/flushInserts.ts [keys] [reps]

const ORG = '00000000-0000-4000-8000-000000000001';
const FROM_KEYS = `from ${TABLE.apiKeys} order by id`;
const INSERTS: Record<string, string> = {
  [TABLE.usageHourly]: `(org_id, key_id, hour, request_count) select org_id, id, date_trunc('hour', now()), 1 ${FROM_KEYS}`,
  [TABLE.recentIps]: `(org_id, key_id, ip, first_seen, last_seen, request_count) select org_id, id, '10.1.2.3', now(), now(), 1 ${FROM_KEYS}`,
  [TABLE.ipHistory]: `(org_id, key_id, prefix, first_ip, first_seen, last_seen) select org_id, id, '10.1.2.0/24', '10.1.2.3', now(), now() ${FROM_KEYS}`,
  [TABLE.keyEvents]: `(org_id, key_id, type, occurred_at, details, dedupe_key) select org_id, id, 'key.new_ip', now(), '{"ip":"10.1.2.3"}', 'probe:' || id ${FROM_KEYS}`,
};

type Times = Map<string, number[]>;
const record = (times: Times, label: string, ms: number) => times.set(label, [...(times.get(label) ?? []), ms]);

async function seed(db: Db, keys: number) {
  await db.raw(`insert into ${TABLE.organizations} (id, name) values (?, 'probe')`, [ORG]);
  await db.raw(
    `insert into ${TABLE.apiKeys} (id, org_id, name, display_prefix, secret_hash, scopes)
     select gen_random_uuid(), ?, 'k', 'ku_test', '\\x00', '{keys:read}' from generate_series(1, ?)`,
    [ORG, keys],
  );
  await db.raw('vacuum analyze');
}

// Each insert once, rolled back: its wall time and each trigger's time as EXPLAIN ANALYZE reports it.
async function insertOnce(db: Db, times: Times) {
  for (const [table, rows] of Object.entries(INSERTS)) {
    const trx = await db.transaction();
    const started = performance.now();
    const plan = (await trx.raw(`explain (analyze, format json) insert into ${table} ${rows}`)).rows[0]['QUERY PLAN'][0];
    record(times, table, performance.now() - started);
    for (const trigger of plan.Triggers ?? []) record(times, `${table}: ${trigger['Constraint Name'] ?? trigger['Trigger Name']}`, trigger.Time);
    await trx.rollback();
  }
  // The rolled-back rows' index entries, so the next round inserts into tables of the same size.
  await db.raw(`vacuum ${Object.keys(INSERTS).join(', ')}`);
}

async function main(keys: number, reps: number) {
  const server = await openPostgresServer('keyusage-flush-inserts-', console.log);
  const targets: Array<{ name: string; db: Db; drop(): Promise<void> }> = [];
  try {
    const scratch = await createScratchDatabase(server.adminUrl, `flush_inserts_${process.pid}`);
    const migrated = createDb(scratch.url, { poolMax: 1 });
    await migrateLatest(migrated);
    targets.push({ name: MIGRATED, db: migrated, drop: async () => (await migrated.destroy(), await scratch.drop()) });
    for (const variant of selectedVariants(process.env.BENCH_FLUSH_VARIANTS)) targets.push(await openVariantDatabase(scratch.url, variant));
    for (const target of targets) await seed(target.db, keys);
    const times = new Map(targets.map((target) => [target.name, new Map() as Times]));
    for (let rep = 0; rep < reps; rep += 1) {
      // Rotated order, so no variant always runs first after the others' vacuum.
      for (let i = 0; i < targets.length; i += 1) {
        const target = targets[(i + rep) % targets.length];
        await insertOnce(target.db, times.get(target.name)!);
      }
      console.log(
        `round ${rep + 1}/${reps}, load average ${os
          .loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
      );
    }
    for (const [name, byLabel] of times) {
      console.log(`\n${name} (${keys} rows per insert, median / worst of ${reps}):`);
      for (const [label, values] of byLabel) console.log(`  ${label}: ${median(values).toFixed(0)} / ${Math.max(...values).toFixed(0)} ms`);
    }
  } finally {
    for (const target of targets.reverse()) await target.drop();
    server.stop();
  }
}

main(Number(process.argv[2] ?? 100_000), Number(process.argv[3] ?? 5)).catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
