import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { freeTcpPort } from '../scripts/lib/freePort';
import { postmasterPid, startLocalPostgres } from '../scripts/lib/localPostgres';

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
