import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { waitFor } from '../harness/wait';
import { assertCitusVersion, startCitusCluster } from '../scripts/citus/cluster';
import { postmasterPid } from '../scripts/lib/localPostgres';
import { processAlive } from '../scripts/lib/processAlive';
import { createDb } from '../shared/db';

// The cluster of `npm run test:citus` (scripts/citus/cluster.ts), started for real where
// scripts/citus/build.sh has installed Citus; CI does not build it.

const CITUS_LIBRARY = '/usr/lib/postgresql/15/lib/citus.so';

t.test(
  'stop() stops every node and removes the folder even when the first will not stop, then names it',
  { skip: !fs.existsSync(CITUS_LIBRARY) && `Citus is not installed (no ${CITUS_LIBRARY}; npm run test:citus builds it)` },
  async (t) => {
    const cluster = await startCitusCluster();
    const admin = createDb(cluster.adminUrl, { poolMax: 1 });
    const { rows } = await admin.raw(`select setting from pg_settings where name = 'data_directory'`);
    await admin.destroy();
    const scratch = path.dirname(rows[0].setting);
    const pids = ['coordinator', 'worker1', 'worker2'].map((node) => postmasterPid(path.join(scratch, node)));
    t.ok(
      pids.every((pid) => pid !== undefined),
      'three nodes run',
    );
    t.teardown(() => {
      for (const pid of pids) if (pid && processAlive(pid)) process.kill(pid, 'SIGQUIT');
      fs.rmSync(scratch, { recursive: true, force: true });
    });

    // Killed, it leaves its postmaster.pid behind: pg_ctl stop then fails on it.
    process.kill(pids[0]!, 'SIGKILL');
    await waitFor('the coordinator to die', () => (processAlive(pids[0]!) ? undefined : true));
    t.throws(() => cluster.stop(), { message: /^stopping the Citus cluster: pg_ctl stop -D \S+\/coordinator .*failed/s });
    t.same(
      pids.slice(1).map((pid) => processAlive(pid!)),
      [false, false],
      'both workers stopped',
    );
    t.notOk(fs.existsSync(scratch), 'the folder is removed');
  },
);

t.test('a node whose citus.so is not 13.2.2 stops the run, saying so', async (t) => {
  const built = 'Citus 13.2.2 on x86_64-pc-linux-gnu, compiled by gcc (Debian 12.2.0-14+deb12u1) 12.2.0, 64-bit';
  t.doesNotThrow(() => assertCitusVersion(5432, built));
  t.throws(() => assertCitusVersion(5432, built.replace('13.2.2', '13.2.1')), {
    message:
      /^the node on port 5432 runs Citus 13\.2\.1, not Citus 13\.2\.2: .*citus\.so is not the build of scripts\/citus\/build\.sh; remove \.citus\/installed-13\.2\.2/,
  });
  t.throws(() => assertCitusVersion(5432, 'Citus 13.2.20 on x86_64'), { message: /runs Citus 13\.2\.20, not/ }, 'a longer version is another one');
});
