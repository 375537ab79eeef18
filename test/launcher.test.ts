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
import { emptyDatabase, freshDatabase } from './helpers/database';

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

async function setup(t: Test, port?: number, database?: { db: Db; url: string }) {
  const { db, url } = database ?? (await freshDatabase(t));
  const config = await launchEnv(t, {
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
