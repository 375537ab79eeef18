import { loadDatabaseConfig } from '../shared/config';
import { createDb, describeDatabaseError, migrateLatest, MIGRATION_LOCK_TRIES, type LockRetry } from '../shared/db';
import { exitWhenDone } from './lib/commandExit';
import { answerWithoutRunning, readNoArguments } from './lib/noArguments';

// `npm run migrate`: applies the pending knex migrations to DATABASE_URL. The embedded database
// needs no separate step: `npm start` migrates it on every start.

export interface MigrateIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

export const stdio: MigrateIo = {
  out: (line) => void process.stdout.write(`${line}\n`),
  err: (line) => void process.stderr.write(`${line}\n`),
};

export const USAGE = [
  'usage: DATABASE_URL=postgres://<owner>@<host>/keyusage npm run migrate',
  '',
  'Applies the pending migrations to the database DATABASE_URL names, as its owner (docs/deployment.md).',
  'npm start migrates its embedded database itself. It takes no arguments.',
].join('\n');

const LOCK_NOT_AVAILABLE = '55P03';
// With MIGRATE_LOCK_TIMEOUT_MS 0 the wait was the server's own lock_timeout, and there was one try.
const lockTimeoutHint = (ms: number) =>
  (ms > 0
    ? ` (a migration waited MIGRATE_LOCK_TIMEOUT_MS, ${ms} ms, for a table another session holds, on each of its ${MIGRATION_LOCK_TRIES} tries: `
    : " (a migration waited the server's lock_timeout for a table another session holds: ") +
  'a long transaction or a backup; run `npm run migrate` again once it ends)';
const lockRetryLine = (ms: number, { migration, attempt, pauseMs }: LockRetry) =>
  `${migration} waited MIGRATE_LOCK_TIMEOUT_MS, ${ms} ms, for a table another session holds; ` +
  `try ${attempt + 1} of ${MIGRATION_LOCK_TRIES} in ${pauseMs} ms…`;

/** 0 when the database is up to date; 1, with `error: …` on stderr, for any failure. */
export async function migrate(env: NodeJS.ProcessEnv, io: MigrateIo = stdio): Promise<number> {
  let database;
  try {
    database = loadDatabaseConfig(env);
  } catch (error) {
    // A ConfigError names the variable at fault.
    io.err(`error: ${(error as Error).message}`);
    return 1;
  }
  if (!database.url) {
    io.err('error: DATABASE_URL is not set. Set it to the PostgreSQL to migrate ' + '(npm start runs the migrations itself on its embedded database).');
    return 1;
  }
  const { migrateLockTimeoutMs } = database;
  const db = createDb(database.url, {
    poolMax: 1,
    connectTimeoutMs: database.connectTimeoutMs,
    applicationName: 'keyusage-migrate',
    lockTimeoutMs: migrateLockTimeoutMs,
    idleInTransactionTimeoutMs: database.idleInTransactionTimeoutMs,
  });
  try {
    const applied = await migrateLatest(db, undefined, {
      onWait: (holder) => io.err(`Waiting for another migration run (${holder}) to finish…`),
      lockTimeoutMs: migrateLockTimeoutMs,
      onLockRetry: (retry) => io.err(lockRetryLine(migrateLockTimeoutMs, retry)),
    });
    if (applied.length === 0) io.out('Database is already up to date.');
    else io.out(`Applied ${applied.length} migration(s):\n${applied.map((name) => `  ${name}`).join('\n')}`);
    return 0;
  } catch (error) {
    const waited = (error as { code?: unknown }).code === LOCK_NOT_AVAILABLE ? lockTimeoutHint(migrateLockTimeoutMs) : '';
    io.err(`error: migration failed: ${describeDatabaseError(error, database.url)}${waited}`);
    return 1;
  } finally {
    await db.destroy();
  }
}

/** `npm run migrate [-h|--help]`: 2, with the usage, for any other argument; otherwise migrate's code. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv, io: MigrateIo = stdio): Promise<number> {
  return answerWithoutRunning(readNoArguments(argv, 'migrate'), USAGE, io) ?? (await migrate(env, io));
}

if (require.main === module) exitWhenDone(main(process.argv.slice(2), process.env), stdio.err);
