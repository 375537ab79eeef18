import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import type { ProcfileEntry } from '../scripts/lib/procfile';
import { Launcher } from '../scripts/start';
import { loadConfig } from '../shared/config';
import { freeTcpPort, freeUdpPort } from '../scripts/lib/freePort';
import { createDb, type Db } from '../shared/db';
import { createUsageStore } from '../collector/usageLog';
import { FOLD_WORKER } from '../collector/foldWorker';
import { TABLE } from '../shared/tables';
import { encodeUsageLine } from '../shared/usageWire';
import { createOrg, insertKeys } from '../bench/lib/database';
import { waitFor } from '../harness/wait';
import { sendDatagrams } from './helpers/collector';
import { emptyDatabase, freshDatabase, someoneWaitsOnLock } from './helpers/database';

// The launcher in process, with stand-in processes, so its orchestration is measured by coverage;
// test/start.smoke.test.ts runs the real `npm start` with the real Procfile.

const stubs = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-launcher-'));
t.teardown(() => fs.rmSync(stubs, { recursive: true, force: true }));

function stub(name: string, source: string): ProcfileEntry {
  const file = path.join(stubs, `${name}.js`);
  fs.writeFileSync(file, source);
  // Stand-ins are not project code: they record no coverage.
  return { name, command: `env _TAPJS_PROCESSINFO_COVERAGE_=0 node ${file}` };
}

const serveOn = (variable: string) =>
  `require('node:http').createServer((req, res) => res.end('{}')).listen(Number(process.env.${variable}), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));`;

// The launcher's children read their settings from the environment it inherits, as in
// production; the test sets them for the duration of one test.
async function launchEnv(t: Test, values: Record<string, string>) {
  const previous = Object.fromEntries(Object.keys(values).map((name) => [name, process.env[name]]));
  Object.assign(process.env, values);
  t.teardown(() => {
    for (const [name, value] of Object.entries(previous)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });
  return loadConfig(process.env);
}

async function setup(t: Test, port?: number, database?: { db: Db; url: string }, env: Record<string, string> = {}) {
  const { db, url } = database ?? (await freshDatabase(t));
  const config = await launchEnv(t, {
    ...env,
    DATABASE_URL: url,
    PORT: String(port ?? (await freeTcpPort())),
    API_METRICS_PORT: String(await freeTcpPort()),
    COLLECTOR_PORT: String(await freeUdpPort()),
    COLLECTOR_METRICS_PORT: String(await freeTcpPort()),
  });
  let resolveExit: (code: number) => void = () => {};
  const exited = new Promise<number>((resolve) => (resolveExit = resolve));
  const launcher = new Launcher(config, (code) => resolveExit(code));
  return { config, launcher, exited, db };
}

t.test('starts the collector then the web process, and stops cleanly; an external database gets no demo org', async (t) => {
  const { config, launcher, exited, db } = await setup(t);
  await launcher.run([stub('web', serveOn('PORT')), stub('collector', serveOn('COLLECTOR_METRICS_PORT'))]);
  const health = await fetch(`http://127.0.0.1:${config.api.port}/healthz`);
  t.equal(health.status, 200, 'the web stand-in answers, so the launcher waited for it');
  t.same(await db('organizations').select('name'), [], 'DATABASE_URL may be a real database: no demo org or key is made in it');
  t.same(await db('api_keys').select('id'), []);
  await launcher.shutdown();
  t.equal(await exited, 0, 'a requested stop exits 0');
  await t.rejects(fetch(`http://127.0.0.1:${config.api.port}/healthz`), 'the processes are stopped');
});

// A DATABASE_URL may be a real database, migrated at a planned step: npm start applied a release's
// migrations to it, under collectors of the version before.
t.test('an external database not migrated: refused before anything starts, naming npm run migrate, and left as it is', async (t) => {
  const url = await emptyDatabase(t);
  const db = createDb(url, { poolMax: 1 });
  t.teardown(() => db.destroy());
  const { launcher } = await setup(t, undefined, { db, url });
  await t.rejects(
    launcher.run([stub('web', serveOn('PORT')), stub('collector', serveOn('COLLECTOR_METRICS_PORT'))]),
    /lacks \d+ migration\(s\), from \d+_\w+\.ts: run `npm run migrate` with the schema owner's DATABASE_URL first/,
  );
  t.equal((await db.raw(`select to_regclass('knex_migrations') as t`)).rows[0].t, null, 'no migration table made');
  await launcher.shutdown();
});

// The real collector, its fold waiting on a lock at the stop: the stop waited for it until the
// final flush's deadline (10 s), then up to 5 s more for the fold thread, and the launcher's
// SIGKILL came first ("collector was killed by SIGKILL while stopping", exit 1). A fold cut at the
// stop rolls back: its rows stay in the log, and the next fold applies them once.
t.test('a collector whose fold waits on a lock stops before the SIGKILL, its uses kept in the log', async (t) => {
  const database = await freshDatabase(t);
  const { db } = database;
  const orgId = await createOrg(db, 'acme');
  const [keyId] = await insertKeys(db, orgId, 1, 'k');
  const { config, launcher, exited } = await setup(t, undefined, database, { COLLECTOR_USAGE_LOG: 'true', COLLECTOR_FLUSH_INTERVAL_MS: '100' });
  // Under tsx, whose transpiled code does not map onto tap's coverage of the same files.
  const collector = { name: 'collector', command: 'env _TAPJS_PROCESSINFO_COVERAGE_=0 node --import tsx collector/main.ts' };
  await launcher.run([stub('web', serveOn('PORT')), collector]);
  const held = await db.transaction();
  t.teardown(() => held.rollback().catch(() => undefined));
  await held.raw(`lock table ${TABLE.usage} in share mode`);
  await sendDatagrams(config.collector.port, [encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 3 })]);
  await someoneWaitsOnLock(db);
  await launcher.shutdown();
  t.equal(await exited, 0, 'every process stopped cleanly');

  await held.rollback();
  const foldConnections = async () =>
    (await db.raw(`select 1 from pg_stat_activity where application_name = ? and datname = current_database()`, [FOLD_WORKER])).rows.length;
  // PostgreSQL notices the closed connection once the lock is granted.
  await waitFor('the cut fold’s connection to end', async () => ((await foldConnections()) === 0 ? true : undefined), 10_000);
  await createUsageStore(db, { logMinKeys: 1 }).fold();
  const usage = await db(TABLE.usage).where({ key_id: keyId }).sum({ n: 'request_count' }).first();
  t.equal(Number(usage?.n), 3, 'the uses, folded once from the log');
});

t.test('a process that dies stops the rest and exits 1', async (t) => {
  const { launcher, exited } = await setup(t);
  await launcher.run([stub('web', `setTimeout(() => process.exit(3), 100);`), stub('collector', serveOn('COLLECTOR_METRICS_PORT'))]);
  t.equal(await exited, 1);
});

t.test('a taken port exits 1 before anything starts', async (t) => {
  const blocker = http.createServer();
  const port = await freeTcpPort();
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', () => resolve()));
  t.teardown(() => blocker.close());
  const { launcher, exited } = await setup(t, port);
  await launcher.run([stub('web', ''), stub('collector', '')]);
  t.equal(await exited, 1);
});
