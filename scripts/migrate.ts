import { loadConfig } from '../shared/config';
import { createDb, describeDatabaseError, migrateLatest } from '../shared/db';
import { exitWhenDone } from './lib/commandExit';

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

/** 0 when the database is up to date; 1, with `error: …` on stderr, for any failure. */
export async function migrate(env: NodeJS.ProcessEnv, io: MigrateIo = stdio): Promise<number> {
  let config;
  try {
    config = loadConfig(env);
  } catch (error) {
    // A ConfigError names the variable at fault.
    io.err(`error: ${(error as Error).message}`);
    return 1;
  }
  if (!config.database.url) {
    io.err('error: DATABASE_URL is not set. Set it to the PostgreSQL to migrate ' + '(npm start runs the migrations itself on its embedded database).');
    return 1;
  }
  const db = createDb(config.database.url, { poolMax: 1, connectTimeoutMs: config.database.connectTimeoutMs, applicationName: 'keyusage-migrate' });
  try {
    const applied = await migrateLatest(db);
    if (applied.length === 0) io.out('Database is already up to date.');
    else io.out(`Applied ${applied.length} migration(s):\n${applied.map((name) => `  ${name}`).join('\n')}`);
    return 0;
  } catch (error) {
    io.err(`error: migration failed: ${describeDatabaseError(error, config.database.url)}`);
    return 1;
  } finally {
    await db.destroy();
  }
}

if (require.main === module) exitWhenDone(migrate(process.env), stdio.err);
