import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createDb, migrateLatest } from '../../shared/db';
import { runTap, tapArguments } from '../../test/runTap';
import { buildCitus, startCitusCluster } from './cluster';
import { distributeTables } from './distribute';

// `npm run test:citus` (opt-in): builds Citus once, starts a coordinator and two workers,
// migrates and distributes one database, and runs the usage suite's end-to-end cases against it.
// Every test shares that database (test/helpers/database.ts) and keeps to its own orgs.

export const FILES = [
  'test/apiKeys.usageAnalytics.test.ts',
  'test/keyDeletion.test.ts',
  'test/hourMove.test.ts',
  'test/usageLog.test.ts',
  'test/lockTimeout.test.ts',
  'test/idempotencyKeys.test.ts',
  'test/webhookDeleteChunks.test.ts',
  'test/ipPrivacy.test.ts',
  'test/keyCreator.test.ts',
  'test/keyRenewal.test.ts',
  'test/keyRestore.test.ts',
  'test/orgUsageSeries.test.ts',
  'test/keyOwner.test.ts',
  'test/usageCsv.test.ts',
  'test/usagePagingCursor.test.ts',
  'test/usage.busiestFirst.test.ts',
  'test/citus/distributed.citus.ts',
];
const DATABASE = 'keyusage_citus_test';

/**
 * tap's arguments for `npm run test:citus -- <args>`: options alone (`--bail`, `--reporter terse`)
 * keep the default files; a file or folder that exists replaces them (an option's value is not one).
 */
export function citusTapArguments(args: readonly string[], exists: (path: string) => boolean = fs.existsSync): string[] {
  const namesFiles = args.some((arg) => !arg.startsWith('-') && exists(arg));
  return tapArguments([...(namesFiles ? [] : FILES), ...args, '--jobs=1']);
}

/** The migration the cluster is laid out at before the last ones run on it. */
const UPGRADED_FROM = '20261205000160_webhook_deliveries_due_per_org.ts';

async function main(): Promise<number> {
  const started = performance.now();
  buildCitus();
  const cluster = await startCitusCluster();
  try {
    const url = await cluster.createDatabase(DATABASE);
    const db = createDb(url, { poolMax: 1 });
    try {
      // An upgrade, as docs/scaling.md runs it: a cluster laid out before the last migration,
      // which then runs on it, and distributeTables after it. The tables of every migration
      // before take the path of a new install.
      await migrateLatest(db, UPGRADED_FROM);
      console.log(`# citus: laid out ${(await distributeTables(db)).join(', ')}`);
      await migrateLatest(db);
      console.log(`# citus: after the upgrade, laid out ${(await distributeTables(db)).join(', ')}`);
    } finally {
      await db.destroy();
    }
    return await runTap(citusTapArguments(process.argv.slice(2)), {
      TEST_ADMIN_DATABASE_URL: cluster.adminUrl,
      TEST_SHARED_DATABASE_URL: url,
    });
  } finally {
    cluster.stop();
    console.log(`# test:citus wall time ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (error) => {
      console.error(error);
      process.exit(1);
    },
  );
}
