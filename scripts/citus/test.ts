import { performance } from 'node:perf_hooks';
import { createDb, migrateLatest } from '../../shared/db';
import { runTap, tapArguments } from '../../test/runTap';
import { buildCitus, startCitusCluster } from './cluster';
import { distributeTables } from './distribute';

// `npm run test:citus` (opt-in): builds Citus once, starts a coordinator and two workers,
// migrates and distributes one database, and runs the usage suite's end-to-end cases against it.
// Every test shares that database (test/helpers/database.ts) and keeps to its own orgs.

const FILES = [
  'test/apiKeys.usageAnalytics.test.ts',
  'test/keyDeletion.test.ts',
  'test/hourMove.test.ts',
  'test/usageLog.test.ts',
  'test/lockTimeout.test.ts',
  'test/citus/distributed.citus.ts',
];
const DATABASE = 'keyusage_citus_test';

async function main(): Promise<number> {
  const started = performance.now();
  buildCitus();
  const cluster = await startCitusCluster();
  try {
    const url = await cluster.createDatabase(DATABASE);
    const db = createDb(url, { poolMax: 1 });
    try {
      await migrateLatest(db);
      console.log(`# citus: laid out ${(await distributeTables(db)).join(', ')}`);
    } finally {
      await db.destroy();
    }
    const args = process.argv.length > 2 ? process.argv.slice(2) : FILES;
    return await runTap(tapArguments([...args, '--jobs=1']), {
      TEST_ADMIN_DATABASE_URL: cluster.adminUrl,
      TEST_SHARED_DATABASE_URL: url,
    });
  } finally {
    cluster.stop();
    console.log(`# test:citus wall time ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
