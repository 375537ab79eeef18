import { migrateLatest, createDb, type Db } from '../shared/db';
import { createScratchDatabase, type ScratchDatabase } from '../harness/postgres';
import { PRIMARY_KEY } from '../migrations/20261201000070_usage_windows_index_only';
import { RESTORE_FOREIGN_KEYS } from '../migrations/20261201000080_key_rows_cascade_from_totals';
import { ENQUEUE_ALWAYS } from '../migrations/20261201000090_outbox_trigger_skips_orgs_without_webhooks';

// Schema variants for A/B work on the flush (benchmark 4): each is the migrated schema plus a few
// statements, in a database of its own on the same server, so its tables reach their own steady
// state while its flushes are interleaved with the migrated schema's. Selected with
// BENCH_FLUSH_VARIANTS=<name>,<name>; the default run has none.

export interface SchemaVariant {
  name: string;
  /** What the variant changes, for the report. */
  change: string;
  statements: readonly string[];
  /**
   * COLLECTOR_USAGE_LOG for this variant's store; unset: the migrated target's (BENCH_FLUSH_USAGE_LOG,
   * bench/flush.ts). A flush that appends is followed by the fold of its rows (timed apart).
   */
  usageLog?: UsageLogSetting;
}

export const MIGRATED = 'migrated';

export type UsageLogSetting = 'true' | 'false' | 'auto';

export const SCHEMA_VARIANTS: readonly SchemaVariant[] = [
  {
    name: 'usage-log',
    change:
      'the schema as migrated, the store with COLLECTOR_USAGE_LOG=true: a flush appends one row per key to api_key_usage_log, then one fold applies it (fold timed apart, after the flush)',
    statements: [],
    usageLog: 'true',
  },
  {
    name: 'direct',
    change:
      'the schema as migrated, the store with COLLECTOR_USAGE_LOG=false: every flush writes the usage tables (the default writes so only below COLLECTOR_USAGE_LOG_MIN_KEYS keys)',
    statements: [],
    usageLog: 'false',
  },
  {
    name: 'hourly-plain-pk',
    change: 'migration 20261201000070 undone: the hourly primary key without INCLUDE (request_count), so an hourly update can be HOT',
    statements: [
      'alter table api_key_usage_hourly drop constraint api_key_usage_hourly_pkey',
      `alter table api_key_usage_hourly add constraint api_key_usage_hourly_pkey ${PRIMARY_KEY.plain}`,
    ],
  },
  {
    name: 'current-hours-not-hot',
    change:
      "migration 20261202000100's HOT made undone: the current hours' table indexed as api_key_usage_hourly (covering primary key, an index on hour, fillfactor 70), so the flush's bucket updates write index entries, as before it",
    statements: [
      'alter table api_key_usage_current_hours drop constraint api_key_usage_current_hours_pkey',
      `alter table api_key_usage_current_hours add constraint api_key_usage_current_hours_pkey ${PRIMARY_KEY.covering}`,
      'create index api_key_usage_current_hours_hour_idx on api_key_usage_current_hours (hour)',
      'alter table api_key_usage_current_hours set (fillfactor = 70)',
    ],
  },
  {
    name: 'fk-checks',
    change: 'migration 20261201000080 undone: the hourly, IP, IP-history and event tables keep their foreign keys (a check per inserted row)',
    statements: RESTORE_FOREIGN_KEYS,
  },
  {
    name: 'outbox-insert-always',
    change: 'migration 20261201000090 undone: the outbox trigger runs its INSERT … SELECT for every event, webhook or not',
    statements: [ENQUEUE_ALWAYS],
  },
  {
    name: 'before-080',
    change: 'migrations 20261201000080 and 090 undone: the schema of before (foreign key checks per row, the outbox insert for every event)',
    statements: [...RESTORE_FOREIGN_KEYS, ENQUEUE_ALWAYS],
  },
  {
    name: 'ip-fillfactor-50',
    change: 'recent and failed IP tables at fillfactor 50 (migrated: 85)',
    statements: ['alter table api_key_recent_ips set (fillfactor = 50)', 'alter table api_key_failed_ips set (fillfactor = 50)'],
  },
  {
    name: 'current-hours-fillfactor-70',
    change: "the current hours' table at fillfactor 70 (migrated: 50)",
    statements: ['alter table api_key_usage_current_hours set (fillfactor = 70)'],
  },
  {
    // A superuser setting (the throwaway cluster's role is one), taken by every new connection to
    // the variant's database: the flushes that write full-page images compressed, beside the rest.
    name: 'wal-compression',
    change: 'wal_compression = pglz for the connections to this database (server default: off)',
    statements: [`do $$ begin execute format('alter database %I set wal_compression = pglz', current_database()); end $$`],
  },
];

export interface VariantDatabase {
  name: string;
  usageLog: UsageLogSetting | undefined;
  /** Setup, statistics and checks. */
  db: Db;
  url: string;
  drop(): Promise<void>;
}

/** Names from BENCH_FLUSH_VARIANTS, checked against the catalog. */
export function selectedVariants(value: string | undefined): SchemaVariant[] {
  const names = (value ?? '').split(',').filter(Boolean);
  return names.map((name) => {
    const variant = SCHEMA_VARIANTS.find((v) => v.name === name);
    if (!variant) throw new Error(`BENCH_FLUSH_VARIANTS: unknown variant "${name}"; known: ${SCHEMA_VARIANTS.map((v) => v.name).join(', ')}`);
    return variant;
  });
}

/** A migrated database beside the benchmark's, changed by `variant`; dropped by drop(). */
export async function openVariantDatabase(benchUrl: string, variant: SchemaVariant): Promise<VariantDatabase> {
  const benchName = new URL(benchUrl).pathname.slice(1);
  const scratch: ScratchDatabase = await createScratchDatabase(benchUrl, `${benchName}_${variant.name.replace(/\W/g, '_')}`);
  const db = createDb(scratch.url, { poolMax: 2, applicationName: 'keyusage-bench-variant' });
  await migrateLatest(db);
  for (const statement of variant.statements) await db.raw(statement);
  return {
    name: variant.name,
    usageLog: variant.usageLog,
    db,
    url: scratch.url,
    async drop() {
      await db.destroy();
      await scratch.drop();
    },
  };
}
