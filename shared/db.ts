import path from 'node:path';
import knex, { type Knex } from 'knex';
import pg from 'pg';

export type Db = Knex;

// An exact integer count: a number while it is a safe integer, its decimal string beyond
// (counters saturate at the bigint maximum, which a double would round).
export type Count = number | string;

export function exactCount(value: string | number): Count {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : String(value);
}

pg.types.setTypeParser(pg.types.builtins.INT8, exactCount);
// cidr[] (api_keys.expected_networks) as an array of strings, like text[].
type TypeId = Parameters<typeof pg.types.setTypeParser>[0];
const CIDR_ARRAY_OID = 651 as TypeId;
const TEXT_ARRAY_OID = 1009 as TypeId;
pg.types.setTypeParser(CIDR_ARRAY_OID, pg.types.getTypeParser(TEXT_ARRAY_OID));

export const MIGRATIONS_DIRECTORY = path.resolve(__dirname, '..', 'migrations');

export function createDb(url: string, options: { poolMax?: number; applicationName?: string } = {}): Db {
  return knex({
    client: 'pg',
    connection: { connectionString: url, application_name: options.applicationName ?? 'keyusage' },
    pool: { min: 0, max: options.poolMax ?? 10 },
    acquireConnectionTimeout: 10_000,
    // knex would print connection errors to stderr itself; callers log them once, structured.
    log: { warn() {}, error() {}, deprecate() {}, debug() {} },
  });
}

export async function migrateLatest(db: Db): Promise<string[]> {
  const [, applied] = await db.migrate.latest({ directory: MIGRATIONS_DIRECTORY, loadExtensions: ['.ts'] });
  return applied as string[];
}

export async function databaseAnswers(db: Db): Promise<boolean> {
  try {
    await db.raw('select 1');
    return true;
  } catch {
    return false;
  }
}
