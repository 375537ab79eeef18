import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { acquireDataFolderLock, DataFolderBusyError, type DataFolderLock } from '../scripts/lib/dataFolderLock';
import { freeTcpPorts, freeUdpPort } from '../scripts/lib/freePort';
import { parseProcfile, type ProcfileEntry } from '../scripts/lib/procfile';
import { fetchCollectorMetrics, type CollectorMetrics } from './collectorProcess';
import { isRunning, REPO_ROOT, spawnTsx, stopChild, type Child } from './processes';
import { httpStatus, waitFor } from './wait';

// The whole system as `npm start` runs it, for the benchmarks: the launcher (scripts/start.ts)
// with the repository's Procfile, so the API and the collector run as the separate processes, with
// the node options, that production gets. PostgreSQL is the one at `databaseUrl` (the launcher's
// DATABASE_URL path) rather than the embedded one, and the Procfile commands run either compiled,
// from a dist/ brought up to date first as `npm start` does, or from source under tsx (`compiled`
// unset: nothing is built). Everything listens on free ports on 127.0.0.1.

export interface SystemProcess {
  /** The launcher; stopping it stops web, then the collector (final flush), as Ctrl-C does. */
  launcher: Child;
  /** The collector process the launcher started (with COLLECTOR_RECEIVERS > 1, the cluster primary). */
  collectorPid: number;
  udpPort: number;
  metricsPort: number;
  apiPort: number;
  metrics(): Promise<CollectorMetrics>;
  /** SIGTERM to the launcher; resolves with its exit code (0: every process stopped cleanly). */
  stop(): Promise<number | null>;
}

export interface SystemOptions {
  /** Added to (and overriding) the parent's environment of every process; LOG_LEVEL is warn unless given. */
  env?: Record<string, string>;
  /** Node options added to the collector's command, such as a probe (`--import`) or heap flags. */
  collectorNodeArgs?: string[];
  /**
   * Run the compiled dist/ as production does, after `npm run build`'s incremental compile (so a
   * stale dist/ is never measured), rather than the sources under tsx. Node options such as a
   * probe still reach the collector.
   */
  compiled?: boolean;
}

function procfileNodeCommand(entry: ProcfileEntry): { options: string; file: string; rest: string } {
  const match = /^node\s+(.*?)\s*dist\/(\S+)\.js(.*)$/.exec(entry.command);
  if (!match) throw new Error(`Procfile "${entry.name}" is not "node [options] dist/<file>.js": ${entry.command}`);
  const [, options, file, rest] = match;
  return { options, file, rest };
}

/** A Procfile command as run from source: `node [opts] dist/x.js` → `node --import tsx [opts] x.ts`. */
export function fromSource(entry: ProcfileEntry, extraNodeArgs: string[] = []): ProcfileEntry {
  const { options, file, rest } = procfileNodeCommand(entry);
  const args = ['--import', 'tsx', ...extraNodeArgs, options].filter(Boolean).join(' ');
  return { name: entry.name, command: `node ${args} ${file}.ts${rest}` };
}

/** A Procfile command as it is, compiled, with node options added: `node [extra] [opts] dist/x.js`. */
export function compiledWith(entry: ProcfileEntry, extraNodeArgs: string[] = []): ProcfileEntry {
  const { options, file, rest } = procfileNodeCommand(entry);
  return { name: entry.name, command: ['node', ...extraNodeArgs, options, `dist/${file}.js${rest}`].filter(Boolean).join(' ') };
}

// Beside the system's temporary folders, named for this checkout: one build of its dist/ at a time.
export const BUILD_LOCK = path.join(os.tmpdir(), `keyusage-build-${createHash('sha256').update(REPO_ROOT).digest('hex').slice(0, 12)}`);

function tryBuildLock(): DataFolderLock | undefined {
  try {
    return acquireDataFolderLock(BUILD_LOCK);
  } catch (error) {
    if (error instanceof DataFolderBusyError) return undefined;
    throw error;
  }
}

/**
 * `npm run build`: dist/ brought up to date with the sources (incremental, ≈ 0.5 s when nothing
 * changed). Two test files, or a benchmark beside the tests, may build at once: tsc rewrites files
 * another process is about to run, so builds take turns.
 */
export async function buildDist(): Promise<void> {
  const lock = await waitFor('another build of dist/ to finish', tryBuildLock, 180_000, 100);
  try {
    const build = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build.js')], { cwd: REPO_ROOT, encoding: 'utf8' });
    if (build.status !== 0) throw new Error(`npm run build failed (${build.status ?? build.signal}):\n${build.stdout}${build.stderr}`);
  } finally {
    lock.release();
  }
}

export async function startSystem(databaseUrl: string, options: SystemOptions = {}): Promise<SystemProcess> {
  if (options.compiled) await buildDist();
  const command = options.compiled ? compiledWith : fromSource;
  const entries = parseProcfile(fs.readFileSync(path.join(REPO_ROOT, 'Procfile'), 'utf8')).map((entry) =>
    command(entry, entry.name === 'collector' ? options.collectorNodeArgs : []),
  );
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-system-'));
  const procfile = path.join(folder, 'Procfile');
  fs.writeFileSync(procfile, entries.map((entry) => `${entry.name}: ${entry.command}\n`).join(''));
  const [apiPort, apiMetricsPort, collectorMetricsPort] = await freeTcpPorts(3);
  const ports = {
    PORT: apiPort,
    API_METRICS_PORT: apiMetricsPort,
    COLLECTOR_PORT: await freeUdpPort(),
    COLLECTOR_METRICS_PORT: collectorMetricsPort,
  };
  const launcher = spawnTsx('npm-start', 'scripts/start.ts', {
    keepOutput: true,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PROCFILE: procfile,
      HOST: '127.0.0.1',
      COLLECTOR_HOST: '127.0.0.1',
      COLLECTOR_METRICS_HOST: '127.0.0.1',
      API_METRICS_HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      ...Object.fromEntries(Object.entries(ports).map(([name, port]) => [name, String(port)])),
      ...options.env,
    },
  });
  void launcher.exited.then(() => fs.rmSync(folder, { recursive: true, force: true }));
  try {
    const collectorPid = await untilServing(launcher, ports.PORT);
    return {
      launcher,
      collectorPid,
      udpPort: ports.COLLECTOR_PORT,
      metricsPort: ports.COLLECTOR_METRICS_PORT,
      apiPort: ports.PORT,
      metrics: () => fetchCollectorMetrics(ports.COLLECTOR_METRICS_PORT),
      stop: () => stopChild(launcher, 30_000),
    };
  } catch (error) {
    await stopChild(launcher, 5000);
    throw error;
  }
}

// The launcher starts the API last, once the collector answers, so a healthy API means both run;
// the collector's pid is in the launcher's "collector started (pid N)" line.
async function untilServing(launcher: Child, apiPort: number): Promise<number> {
  await waitFor(
    'npm start to serve',
    async () => {
      if (!isRunning(launcher)) throw new Error(`npm start exited (${launcher.proc.exitCode}) before serving:\n${launcher.output()}`);
      return (await httpStatus(`http://127.0.0.1:${apiPort}/healthz`)) === 200 ? true : undefined;
    },
    // Under tsx, two processes compile their sources, on a machine that may be busy.
    90_000,
    100,
  );
  const started = launcher.lines.map((line) => /\| collector started \(pid (\d+)\)/.exec(line)).find(Boolean);
  if (!started) throw new Error(`npm start did not say the collector's pid:\n${launcher.output()}`);
  return Number(started[1]);
}
