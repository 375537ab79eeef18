import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { freeTcpPort } from '../scripts/lib/freePort';
import { binariesFor, postmasterPid, runAsIds, startLocalPostgres } from '../scripts/lib/localPostgres';
import { spawnSync } from 'node:child_process';

// The launcher's PostgreSQL, started for real: what it may touch on disk, and what the server
// process is given. As root the server runs as the `postgres` OS user, which is when folder
// permissions matter; as another user those checks have nothing to look at.

const asRoot = process.getuid?.() === 0;
const mode = (file: string) => fs.statSync(file).mode & 0o777;

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-localpg-'));
fs.chmodSync(base, 0o711);
t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));

t.test('never opens a folder it did not create; names the one in the way instead', { skip: !asRoot && 'only as root' }, async (t) => {
  const privateDir = path.join(base, 'private');
  fs.mkdirSync(privateDir, { mode: 0o700 });
  fs.chmodSync(privateDir, 0o700);
  const dataDir = path.join(privateDir, 'made-here', 'pg');
  t.throws(() => startLocalPostgres({ dataDir, port: 1 }), {
    message: new RegExp(`postgres OS user cannot reach .*: ${privateDir} is not searchable.*EMBEDDED_PG_DIR`),
  });
  t.equal(mode(privateDir), 0o700, 'the existing folder keeps its mode (it was opened to others before)');
  t.equal(mode(base), 0o711, 'and so does every folder above it');
  t.notOk(fs.existsSync(path.join(dataDir, 'PG_VERSION')), 'no cluster was made');
});

// A checkout the postgres OS user cannot pass through (a clone in /root, mode 700): initdb failed
// as "exit null" (EACCES) in `npm test` and `npm start`. The binaries are run from a copy it can
// reach (fails without binariesFor).
t.test('binaries in a folder the postgres OS user cannot reach are run from a copy it can', { skip: !asRoot && 'only as root' }, async (t) => {
  const ids = runAsIds()!;
  const checkout = path.join(base, 'home');
  fs.mkdirSync(checkout, { mode: 0o700 });
  fs.chmodSync(checkout, 0o700);
  // The package as npm installs it: its native folder beside its package.json.
  const native = path.dirname(binariesFor(undefined));
  const installed = path.join(checkout, 'package', 'native');
  fs.cpSync(native, installed, { recursive: true, verbatimSymlinks: true });
  fs.copyFileSync(path.join(native, '..', 'package.json'), path.join(checkout, 'package', 'package.json'));
  const version = (bin: string) => spawnSync(path.join(bin, 'pg_ctl'), ['--version'], { ...ids, cwd: '/', encoding: 'utf8' });
  t.not(version(path.join(installed, 'bin')).status, 0, 'the control: as the postgres OS user, the checkout cannot be run from');
  const temporary = process.env.TMPDIR;
  process.env.TMPDIR = base;
  t.teardown(() => (temporary === undefined ? delete process.env.TMPDIR : (process.env.TMPDIR = temporary)));
  const copied = binariesFor(ids, path.join(installed, 'bin'));
  t.ok(copied.startsWith(`${base}${path.sep}keyusage-postgres-`), `copied under the temporary folder (${copied})`);
  t.match(version(copied).stdout, /^pg_ctl \(PostgreSQL\) \d+/, 'and run from there as the postgres OS user');
  t.equal(binariesFor(ids, path.join(installed, 'bin')), copied, 'one copy, found again');
  // The temporary folder is everyone's: a copy others may write to is not run, nor deleted (another
  // process may run from it; a tree someone else owns is not root's to remove): one of its own is made.
  fs.chmodSync(path.dirname(copied), 0o777);
  const own = binariesFor(ids, path.join(installed, 'bin'));
  t.not(own, copied, 'not the copy others could write');
  t.ok(own.startsWith(`${path.dirname(copied)}.`), `one of its own beside it (${own})`);
  t.equal(mode(path.dirname(own)), 0o755);
  t.ok(fs.existsSync(path.join(copied, 'pg_ctl')), 'the other is left as it is');
  t.match(version(own).stdout, /^pg_ctl \(PostgreSQL\) \d+/);
});

// initdb refused such a folder too, but only after it had been chowned to the postgres OS user
// and a password written beside it.
t.test('refuses a folder that holds files but no cluster, before changing anything', async (t) => {
  const dataDir = path.join(base, 'someone-elses');
  fs.mkdirSync(dataDir);
  fs.writeFileSync(path.join(dataDir, 'notes.txt'), 'not a cluster');
  const owner = fs.statSync(dataDir).uid;
  const error = t.throws(() => startLocalPostgres({ dataDir, port: 1 })) as Error;
  t.match(error.message, `EMBEDDED_PG_DIR names ${dataDir}, which is not empty and holds no PostgreSQL data folder`);
  t.equal(fs.statSync(dataDir).uid, owner, 'its owner is unchanged');
  t.notOk(fs.existsSync(`${dataDir}.password`), 'no password is written beside it');
  t.same(fs.readdirSync(dataDir), ['notes.txt'], 'and nothing inside it');
});

t.test('a server with a private log and none of the project secrets in its environment', async (t) => {
  const secrets = { KEY_PEPPER: 'pepper-that-postgres-must-never-see-0123456789', USAGE_SIGNING_SECRET: 'signing-secret-postgres-must-never-see-0123' };
  const saved = { ...process.env };
  Object.assign(process.env, secrets, { DATABASE_URL: 'postgres://u:hunter2@db.example/x' });
  t.teardown(() => {
    process.env = saved;
  });
  const dataDir = path.join(base, 'created', 'by', 'launcher', 'pg');
  const cluster = startLocalPostgres({ dataDir, port: await freeTcpPort() });
  t.teardown(() => cluster.stop());

  const pid = postmasterPid(dataDir);
  t.ok(pid, 'the postmaster runs');
  const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);
  // tap's process hooks add their own variables (and NODE_OPTIONS) to every child of a test.
  const names = environ.map((entry) => entry.split('=')[0]).filter((name) => !name.startsWith('_TAPJS_') && name !== 'NODE_OPTIONS');
  const allowed = ['PATH', 'HOME', 'TZ', 'TMPDIR', 'LC_ALL', 'PWD', 'PGDATA', 'PG_GRANDPARENT_PID', 'PGSYSCONFDIR', 'PGLOCALEDIR'];
  t.same(
    names.filter((name) => !allowed.includes(name)),
    [],
    'only an allow-listed environment',
  );
  for (const value of [...Object.values(secrets), 'hunter2'])
    t.notOk(
      environ.some((entry) => entry.includes(value)),
      'no secret reaches the server',
    );

  if (asRoot) t.equal(mode(path.join(base, 'created')) & 0o001, 0o001, 'folders it created are opened to the postgres OS user');
  t.equal(mode(`${dataDir}.log`), 0o600, 'the server log is readable by its owner only');
  t.equal(mode(`${dataDir}.password`), 0o600);
  t.equal(mode(path.join(dataDir, 'keyusage_app.password')), 0o600, "the app role's password too");
  t.match(cluster.app.url, /^postgres:\/\/keyusage_app:[^@]+@127\.0\.0\.1:\d+\/postgres$/);

  // Reused on a second start (the launcher after a crash): the log is tightened again.
  fs.chmodSync(`${dataDir}.log`, 0o644);
  startLocalPostgres({ dataDir, port: Number(new URL(cluster.url).port) });
  t.equal(mode(`${dataDir}.log`), 0o600, 'a log left readable by an older version is made private');
});
