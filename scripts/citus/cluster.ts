import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createDb } from '../../shared/db';
import { freeTcpPorts } from '../lib/freePort';
import { runAsIds } from '../lib/localPostgres';
import { runEvery, stopOnSignal } from '../lib/stopOnSignal';

// A throwaway Citus cluster on 127.0.0.1: a coordinator and two workers, each a Debian
// PostgreSQL 15 with citus preloaded (scripts/citus/build.sh installs it), in a temporary folder,
// trusting local TCP connections (the nodes talk to each other as postgres, without passwords).

const BIN = '/usr/lib/postgresql/15/bin';
const REPO = path.resolve(__dirname, '..', '..');
// What build.sh installs, from citus-13.2.2.tar.gz.
const CITUS_VERSION = '13.2.2';

export interface CitusCluster {
  /** The coordinator, database `postgres`. */
  readonly adminUrl: string;
  /** Creates `name` on every node, with the citus extension, and registers the workers in it. */
  createDatabase(name: string): Promise<string>;
  /** Stops every node, even after one fails to stop, and removes the folder; then throws what failed. */
  stop(): void;
}

export function buildCitus(): void {
  const result = spawnSync('bash', [path.join(__dirname, 'build.sh')], { stdio: 'inherit', cwd: REPO });
  if (result.status !== 0) throw new Error(`building Citus failed (exit ${result.status}); see .citus/build.log`);
}

function run(binary: string, args: string[], ids: ReturnType<typeof runAsIds>) {
  const result = spawnSync(path.join(BIN, binary), args, { ...ids, encoding: 'utf8', env: { PATH: process.env.PATH, LC_ALL: 'C' } });
  if (result.status !== 0) throw new Error(`${binary} ${args.join(' ')} failed: ${result.stderr || result.stdout}`);
}

function startNode(dataDir: string, port: number, ids: ReturnType<typeof runAsIds>) {
  fs.mkdirSync(dataDir, { mode: 0o700 });
  if (ids) fs.chownSync(dataDir, ids.uid, ids.gid);
  run('initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-instructions'], ids);
  fs.appendFileSync(
    path.join(dataDir, 'postgresql.conf'),
    [
      `shared_preload_libraries = 'citus'`,
      `listen_addresses = '127.0.0.1'`,
      `port = ${port}`,
      `unix_socket_directories = ''`,
      'max_connections = 300',
      '',
    ].join('\n'),
  );
  run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', `${dataDir}.log`], ids);
}

// build.sh rebuilds when the tarball changes; this catches a citus.so that another build put
// there (another checkout's, a package's). It checks the library's version: the extension's own
// (pg_extension.extversion) is its SQL schema's, 13.2-1 for every 13.2.x.
export function assertCitusVersion(port: number, version: string) {
  if (!version.startsWith(`Citus ${CITUS_VERSION} `)) {
    throw new Error(
      `the node on port ${port} runs ${version.split(' on ')[0]}, not Citus ${CITUS_VERSION}: /usr/lib/postgresql/15/lib/citus.so is not ` +
        'the build of scripts/citus/build.sh; remove .citus/installed-13.2.2 and run again to rebuild and reinstall it',
    );
  }
}

export async function startCitusCluster(): Promise<CitusCluster> {
  const ids = runAsIds();
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-citus-'));
  fs.chmodSync(scratch, 0o711);
  if (ids) fs.chownSync(scratch, ids.uid, ids.gid);
  const ports = await freeTcpPorts(3);
  const dataDirs = ports.map((_, i) => path.join(scratch, i === 0 ? 'coordinator' : `worker${i}`));
  const stopNodes = () =>
    runEvery('stopping the Citus cluster', [
      ...dataDirs
        .filter((dir) => fs.existsSync(path.join(dir, 'postmaster.pid')))
        .map((dataDir) => () => run('pg_ctl', ['stop', '-D', dataDir, '-m', 'fast', '-w', '-t', '60'], ids)),
      () => fs.rmSync(scratch, { recursive: true, force: true }),
    ]);
  // From the first node on: trust-auth superusers must not outlive an interrupted run.
  const stop = stopOnSignal(stopNodes);
  try {
    dataDirs.forEach((dataDir, i) => startNode(dataDir, ports[i], ids));
  } catch (error) {
    stop();
    throw error;
  }
  const url = (port: number, database: string) => `postgres://postgres@127.0.0.1:${port}/${database}`;
  // One statement on a connection of its own, closed whatever the outcome.
  const runOnce = async (port: number, database: string, sql: string) => {
    const db = createDb(url(port, database), { poolMax: 1 });
    try {
      return (await db.raw(sql)).rows;
    } finally {
      await db.destroy();
    }
  };
  return {
    adminUrl: url(ports[0], 'postgres'),
    async createDatabase(name) {
      for (const port of ports) {
        await runOnce(port, 'postgres', `create database ${name}`);
        await runOnce(port, name, 'create extension citus');
        assertCitusVersion(port, (await runOnce(port, name, 'select citus_version() as version'))[0].version);
      }
      const coordinator = createDb(url(ports[0], name), { poolMax: 1 });
      try {
        await coordinator.raw('select citus_set_coordinator_host(?, ?)', ['127.0.0.1', ports[0]]);
        for (const port of ports.slice(1)) await coordinator.raw('select citus_add_node(?, ?)', ['127.0.0.1', port]);
      } finally {
        await coordinator.destroy();
      }
      return url(ports[0], name);
    },
    stop,
  };
}
