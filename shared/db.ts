import fs from 'node:fs';
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

export const MIGRATIONS_DIRECTORY = path.resolve(__dirname, '..', 'migrations');

// From source (tsx) the migrations are the .ts files; from dist/ the compiled .js files beside
// this module's own compiled copy. knex_migrations records each migration by name, so both name it
// by its source file: a database migrated from a checkout stays up to date for the build.
const LOADED_EXTENSION = path.extname(__filename);

export const MIGRATION_CONFIG: Knex.MigratorConfig = {
  migrationSource: {
    getMigrations: async () => (await fs.promises.readdir(MIGRATIONS_DIRECTORY)).filter((file) => path.extname(file) === LOADED_EXTENSION).sort(),
    getMigrationName: (file: string) => `${path.basename(file, LOADED_EXTENSION)}.ts`,
    getMigration: async (file: string) => require(path.join(MIGRATIONS_DIRECTORY, file)),
  },
};

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
  const [, applied] = await db.migrate.latest(MIGRATION_CONFIG);
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
