import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { ConfigError, loadConfig, withDevelopmentDefault, type Config } from '../shared/config';
import { ensureAppRole } from './lib/appRole';
import { createDb, migrateLatest } from '../shared/db';
import { acquireDataFolderLock, DataFolderBusyError, type DataFolderLock } from './lib/dataFolderLock';
import { postmasterPid, runningPort, startLocalPostgres, type LocalPostgres } from './lib/localPostgres';
import { commandSettings, demoBanner, ensureDemoOrg, externalDatabaseBanner } from './demo';

// `npm start`: one launcher for the whole system.
//   1. check that every port it will need is free (before anything is started);
//   2. start the embedded PostgreSQL unless DATABASE_URL is set, and run the migrations;
//   3. start the Procfile's processes, `collector` first and `web` last, each line of their
//      output prefixed with its name, waiting for each to be ready;
//   4. on the embedded database only, make sure the demo organization exists and print how to
//      try it (with its key on the first run only: the key is never stored or printed again);
//   5. run until a signal (stop web, then collector, then the database; exit 0) or until a process
//      or the embedded database dies (say which and why, stop the rest, exit 1).
// One launcher owns an embedded data folder at a time (scripts/lib/dataFolderLock.ts): a second one on
// the same folder names the first one's pid and exits 1 before touching anything.
// PROCFILE names another Procfile (the tests use it to stand in for a process).

const STOP_TIMEOUT_MS = 15_000;
const READY_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 100;
const LABEL_WIDTH = 9;
const DATABASE_WATCH_MS = 500;

// ---------------------------------------------------------------------------------------------
// Procfile

export interface ProcfileEntry {
  name: string;
  command: string;
}

// The Procfile format every runner agrees on: `name: command`, one per line; blank lines and
// `#` comments are ignored.
export function parseProcfile(text: string): ProcfileEntry[] {
  const entries: ProcfileEntry[] = [];
  text.split(/\r?\n/).forEach((line, index) => {
    if (/^\s*(#|$)/.test(line)) return;
    const match = /^([A-Za-z0-9_-]+):\s*(.*?)\s*$/.exec(line);
    if (!match || match[2] === '') throw new Error(`Procfile line ${index + 1} is not "name: command": ${line}`);
    if (entries.some((entry) => entry.name === match[1])) throw new Error(`Procfile names "${match[1]}" twice`);
    entries.push({ name: match[1], command: match[2] });
  });
  return entries;
}

// collector first (the API sends it datagrams from its first request), web last.
export function startOrder(entries: ProcfileEntry[]): ProcfileEntry[] {
  for (const required of ['collector', 'web']) {
    if (!entries.some((entry) => entry.name === required)) throw new Error(`The Procfile has no "${required}:" line`);
  }
  const rank = (name: string) => (name === 'collector' ? 0 : name === 'web' ? 2 : 1);
  return [...entries].sort((a, b) => rank(a.name) - rank(b.name));
}

// ---------------------------------------------------------------------------------------------
// Ports

export interface PortNeed {
  variable: string;
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
}

function probe(need: PortNeed): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    if (need.protocol === 'udp') {
      const socket = dgram.createSocket(net.isIPv6(need.host) ? 'udp6' : 'udp4');
      socket.once('error', (error) => {
        socket.close();
        resolve(error);
      });
      socket.bind(need.port, need.host, () => socket.close(() => resolve(undefined)));
    } else {
      const server = net.createServer();
      server.once('error', (error) => resolve(error));
      server.listen({ port: need.port, host: need.host, exclusive: true }, () => server.close(() => resolve(undefined)));
    }
  });
}

// Every problem at once, each naming the port and the variable that changes it.
export async function portProblems(needs: PortNeed[]): Promise<string[]> {
  const problems: string[] = [];
  for (const need of needs) {
    if (need.port === 0) {
      problems.push(`${need.variable} is 0: npm start needs a fixed port, so set ${need.variable} to a free port`);
    }
  }
  for (const [index, need] of needs.entries()) {
    const clash = needs.slice(0, index).find((other) => other.port === need.port && other.protocol === need.protocol && need.port !== 0);
    if (clash) problems.push(`${clash.variable} and ${need.variable} are both ${need.port}; set ${need.variable} to another port`);
  }
  if (problems.length > 0) return problems;
  for (const need of needs) {
    const error = await probe(need);
    if (!error) continue;
    const why = error.code === 'EADDRINUSE' ? 'is already in use' : error.code === 'EACCES' ? 'needs privileges' : `cannot be bound (${error.code ?? error.message})`;
    problems.push(`Port ${need.port} (${need.protocol.toUpperCase()} on ${need.host}) ${why}; set ${need.variable} to a free port, e.g. ${need.variable}=${need.port + 1} npm start`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Output

const label = (name: string) => `${name.padEnd(LABEL_WIDTH)} | `;

// Output must never stop a shutdown: when the terminal or pipe goes away (EPIPE, EIO after a
// hangup) the launcher keeps stopping things, silently.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
function print(text: string) {
  try {
    if (process.stdout.writable) process.stdout.write(text);
  } catch {
    // nowhere left to write
  }
}
const say = (message: string) => print(`${label('launcher')}${message}\n`);

function prefixLines(name: string, stream: NodeJS.ReadableStream) {
  const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
  lines.on('line', (line) => print(`${label(name)}${line}\n`));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// Settles with `promise`, or with `fallback` after `ms`; the timer never outlives the race.
async function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<F>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// Processes

interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const describeExit = ({ code, signal }: ExitInfo) => (signal ? `was killed by ${signal}` : `exited with code ${code}`);
const cleanExit = ({ code, signal }: ExitInfo) => code === 0 || signal === 'SIGTERM' || signal === 'SIGINT';

class Managed {
  readonly child: ChildProcess;
  readonly exited: Promise<ExitInfo>;
  private readonly outputClosed: Promise<void>;
  exit: ExitInfo | undefined;

  constructor(
    readonly name: string,
    command: string,
    env: NodeJS.ProcessEnv,
  ) {
    // `exec` makes the command itself the child (no shell in between to swallow signals), and
    // its own process group keeps a terminal's Ctrl-C from reaching it before the launcher
    // decides the order in which things stop.
    this.child = spawn('/bin/sh', ['-c', `exec ${command}`], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    prefixLines(name, this.child.stdout!);
    prefixLines(name, this.child.stderr!);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.child.once('error', (error) => {
        say(`${name} could not be started: ${error.message}`);
        this.exit = { code: 127, signal: null };
        resolve(this.exit);
      });
    });
    this.outputClosed = new Promise((resolve) => this.child.once('close', () => resolve()));
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  signal(signal: NodeJS.Signals) {
    if (!this.alive || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      this.child.kill(signal);
    }
  }

  // SIGTERM, a bounded wait, then SIGKILL.
  async stop(): Promise<ExitInfo> {
    if (this.exit) return this.exit;
    say(`stopping ${this.name} (pid ${this.child.pid})`);
    this.signal('SIGTERM');
    const result = await within(this.exited, STOP_TIMEOUT_MS, undefined);
    if (result) return result;
    say(`${this.name} did not stop within ${STOP_TIMEOUT_MS / 1000} s; sending SIGKILL`);
    this.signal('SIGKILL');
    return this.exited;
  }

  // The last lines a process wrote may still be in its pipe when it exits.
  flushOutput(): Promise<void> {
    return within(this.outputClosed, 1000, undefined);
  }
}

// Polls `check` until it answers true, the deadline passes, or the process dies.
async function waitUntilReady(managed: Managed, what: string, check: () => Promise<boolean>, stopRequested: () => boolean) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!managed.alive || stopRequested()) return;
    if (await check()) return;
    await sleep(READY_POLL_MS);
  }
  throw new Error(`${managed.name} did not answer ${what} within ${READY_TIMEOUT_MS / 1000} s`);
}

function httpAnswers(url: string, accept: (status: number) => boolean): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(url, { timeout: 1000 }, (response) => {
      response.resume();
      resolve(accept(response.statusCode ?? 0));
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

// ---------------------------------------------------------------------------------------------
// The launcher

const urlHost = (host: string) => {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return net.isIPv6(reachable) ? `[${reachable}]` : reachable;
};

function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return 'DATABASE_URL';
  }
}

// `exit` ends the launcher; the tests pass their own to run it in process.
export class Launcher {
  private readonly processes: Managed[] = [];
  private database: LocalPostgres | undefined;
  private lock: DataFolderLock | undefined;
  private databaseWatch: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  private stopRequestedFlag = false;

  constructor(
    private readonly config: Config,
    private readonly exit: (code: number) => void = (code) => process.exit(code),
  ) {
    // Whatever happens, leave nothing behind: a last, synchronous sweep on exit.
    process.on('exit', () => {
      for (const managed of this.processes) managed.signal('SIGKILL');
      this.stopDatabase();
      this.lock?.release();
    });
  }

  get stopRequested() {
    return this.stopRequestedFlag;
  }

  onSignals() {
    let firstSignalAt = 0;
    const handler = (signal: NodeJS.Signals) => {
      if (this.stopRequested) {
        // A terminal's Ctrl-C reaches npm and the launcher at once, and npm forwards it again.
        if (Date.now() - firstSignalAt > 1000) say(`${signal} received; already stopping`);
        return;
      }
      firstSignalAt = Date.now();
      say(`${signal} received; stopping`);
      void this.shutdown();
    };
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
    process.on('SIGHUP', handler);
  }

  private stopDatabase() {
    clearInterval(this.databaseWatch);
    const database = this.database;
    if (!database) return;
    this.database = undefined;
    try {
      say('stopping PostgreSQL');
      database.stop();
    } catch (error) {
      say(`PostgreSQL did not stop cleanly: ${(error as Error).message}`);
    }
  }

  // Stops everything in the reverse of start order (web, then collector), then the database.
  // The exit code is 0 only when asked to stop and every process stopped cleanly.
  shutdown(failure?: string): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopRequestedFlag = true;
    this.stopping = (async () => {
      if (failure) say(failure);
      let clean = failure === undefined;
      for (const managed of [...this.processes].reverse()) {
        const wasAlive = managed.alive;
        const exit = await managed.stop();
        if (wasAlive && !cleanExit(exit)) {
          say(`${managed.name} ${describeExit(exit)} while stopping`);
          clean = false;
        } else if (wasAlive) {
          say(`${managed.name} stopped`);
        }
      }
      await Promise.all(this.processes.map((managed) => managed.flushOutput()));
      this.stopDatabase();
      this.lock?.release();
      say(clean ? 'stopped' : 'stopped after a failure');
      this.exit(clean ? 0 : 1);
    })();
    return this.stopping;
  }

  private portNeeds(embedded: boolean): PortNeed[] {
    const { api, collector, database } = this.config;
    const needs: PortNeed[] = [
      { variable: 'PORT', host: api.host, port: api.port, protocol: 'tcp' },
      { variable: 'API_METRICS_PORT', host: api.metricsHost, port: api.metricsPort, protocol: 'tcp' },
      { variable: 'COLLECTOR_PORT', host: collector.host, port: collector.port, protocol: 'udp' },
      { variable: 'COLLECTOR_METRICS_PORT', host: collector.metricsHost, port: collector.metricsPort, protocol: 'tcp' },
    ];
    // A cluster left running by a killed launcher holds its port and is reused, not restarted.
    const leftOver = postmasterPid(database.embeddedDir) !== undefined;
    if (embedded && !leftOver) needs.push({ variable: 'EMBEDDED_PG_PORT', host: '127.0.0.1', port: database.embeddedPort, protocol: 'tcp' });
    return needs;
  }

  async run(entries: ProcfileEntry[]) {
    const { config } = this;
    if (!config.database.url && !this.lockDataFolder()) return this.exit(1);
    const problems = await portProblems(this.portNeeds(!config.database.url));
    if (problems.length > 0) {
      for (const problem of problems) say(problem);
      this.lock?.release();
      this.exit(1);
      return;
    }

    const database = this.openDatabase();
    if (this.stopRequested) return;

    const db = createDb(database.ownerUrl, { poolMax: 2, connectTimeoutMs: config.database.connectTimeoutMs, applicationName: 'keyusage-start' });
    try {
      const applied = await migrateLatest(db);
      say(applied.length > 0 ? `applied ${applied.length} migration(s)` : 'migrations are up to date');
      if (this.database) await ensureAppRole(db, this.database.app.role, this.database.app.password);
      if (this.stopRequested) return;
      if (!(await this.startProcesses(entries, database.processUrl))) return;
      const context = { baseUrl: `http://${urlHost(config.api.host)}:${config.api.port}`, settings: commandSettings(config), ...database };
      // An external database may be a real one: no demo org or key is ever made there.
      if (!this.database) return print(externalDatabaseBanner(context) + '\n');
      // Only once everything answers, so that a first-run key is never made and then not shown.
      const demo = await ensureDemoOrg(db, { pepper: config.api.keyPepper });
      if (this.stopRequested) return;
      print(demoBanner(demo, context) + '\n');
    } finally {
      await db.destroy();
    }
  }

  // False (having said why) when another launcher holds the folder: it is left untouched.
  private lockDataFolder(): boolean {
    const dataDir = path.resolve(this.config.database.embeddedDir);
    try {
      this.lock = acquireDataFolderLock(dataDir);
      return true;
    } catch (error) {
      if (!(error instanceof DataFolderBusyError)) throw error;
      const holder = error.pid > 0 ? `another npm start (pid ${error.pid})` : 'another npm start that is starting';
      say(`${dataDir} is in use by ${holder}. Stop that one first, or give this one its own folder: EMBEDDED_PG_DIR=<another folder> npm start`);
      if (error.pid > 0) say(`(If no launcher runs as pid ${error.pid}, remove ${error.lockFile}.)`);
      return false;
    }
  }

  // pg_ctl daemonises the server, so its death reaches no handler of ours: poll its pid file.
  private watchDatabase(dataDir: string) {
    const pid = postmasterPid(dataDir);
    this.databaseWatch = setInterval(() => {
      if (this.stopRequested || postmasterPid(dataDir) !== undefined) return;
      this.database = undefined; // nothing left to stop
      void this.shutdown(`PostgreSQL (postmaster pid ${pid ?? 'unknown'}) stopped underneath the launcher; see ${dataDir}.log. Stopping the rest`);
    }, DATABASE_WATCH_MS);
    this.databaseWatch.unref();
  }

  // DATABASE_URL as given, or the embedded cluster: migrated as its owner, while the processes
  // connect as the app role, which may only read and write rows (scripts/lib/appRole.ts).
  private openDatabase(): { ownerUrl: string; processUrl: string; dataLocation: string; resetHint?: string } {
    const { database } = this.config;
    if (database.url) {
      return { ownerUrl: database.url, processUrl: database.url, dataLocation: `the database at ${redactUrl(database.url)} (DATABASE_URL)` };
    }
    const dataDir = path.resolve(database.embeddedDir);
    const relative = path.relative(process.cwd(), dataDir);
    const shown = relative && !relative.startsWith('..') ? relative : dataDir;
    const leftOver = runningPort(dataDir);
    say(leftOver ? `reusing the PostgreSQL left running in ${shown} on 127.0.0.1:${leftOver}` : `starting the embedded PostgreSQL in ${shown} on 127.0.0.1:${database.embeddedPort}`);
    this.database = startLocalPostgres({ dataDir, port: database.embeddedPort });
    say(`PostgreSQL is up (postmaster pid ${postmasterPid(dataDir) ?? 'unknown'}); the API and the collector connect as ${this.database.app.role}`);
    this.watchDatabase(dataDir);
    const isDefault = dataDir === path.resolve('.data/postgres');
    return {
      ownerUrl: this.database.url,
      processUrl: this.database.app.url,
      dataLocation: `${shown} (embedded PostgreSQL on 127.0.0.1:${this.database.port})`,
      resetHint: `To reset: stop with Ctrl-C, then \`rm -rf ${isDefault ? '.data' : `${shown} ${shown}.password ${shown}.log`}\` and \`npm start\` again.`,
    };
  }

  // Starts the Procfile's processes in order, each once the one before is ready; false when a
  // process died or a stop was asked for meanwhile.
  private async startProcesses(entries: ProcfileEntry[], databaseUrl: string): Promise<boolean> {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATABASE_URL: databaseUrl,
      // The children run under the same node as the launcher, whatever `node` is on PATH.
      PATH: [path.dirname(process.execPath), process.env.PATH].filter(Boolean).join(path.delimiter),
    };
    for (const entry of startOrder(entries)) {
      if (this.stopRequested) return false;
      const managed = new Managed(entry.name, entry.command, env);
      this.processes.push(managed);
      say(`${entry.name} started (pid ${managed.child.pid}): ${entry.command}`);
      void managed.exited.then((exit) => {
        if (!this.stopRequested) void this.shutdown(`${entry.name} ${describeExit(exit)}; stopping the rest`);
      });
      await this.waitForReady(managed);
      if (!managed.alive) return false;
    }
    return !this.stopRequested;
  }

  // The collector is ready when its metrics port answers (it opens it after binding UDP); the
  // API when /healthz says 200, which means it reaches the database too.
  private async waitForReady(managed: Managed) {
    const { api, collector } = this.config;
    const stopRequested = () => this.stopRequested;
    if (managed.name === 'collector') {
      const url = `http://${urlHost(collector.metricsHost)}:${collector.metricsPort}/healthz`;
      await waitUntilReady(managed, `on ${url} (COLLECTOR_METRICS_PORT)`, () => httpAnswers(url, () => true), stopRequested);
    } else if (managed.name === 'web') {
      const url = `http://${urlHost(api.host)}:${api.port}/healthz`;
      await waitUntilReady(managed, `${url} with 200`, () => httpAnswers(url, (status) => status === 200), stopRequested);
      if (managed.alive && !this.stopRequested) say(`web is healthy: ${url}`);
    }
  }
}

function main() {
  let config: Config;
  let entries: ProcfileEntry[];
  try {
    // The processes inherit this environment, so they run under the NODE_ENV decided here.
    Object.assign(process.env, withDevelopmentDefault(process.env));
    config = loadConfig();
    const procfile = process.env.PROCFILE || 'Procfile';
    entries = parseProcfile(fs.readFileSync(procfile, 'utf8'));
    startOrder(entries);
  } catch (error) {
    const problems = error instanceof ConfigError ? error.problems : [(error as Error).message];
    for (const problem of problems) say(problem);
    process.exit(1);
  }
  const launcher = new Launcher(config);
  launcher.onSignals();
  launcher.run(entries).catch((error: Error) => launcher.shutdown(`failed to start: ${error.message}`));
}

if (require.main === module) main();
