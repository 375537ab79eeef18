import path from 'node:path';
import { loadConfig, withDevelopmentDefault, type Config } from '../shared/config';
import { createDb, migrateLatest, unappliedMigrations, type Db } from '../shared/db';
import { setupOrExit } from '../shared/process';
import { ensureAppRole } from './lib/appRole';
import { EmbeddedDatabase, externalDatabase, type DatabaseTarget } from './lib/embeddedDatabase';
import { firstRunBanner } from './lib/firstRunDemo';
import { ignoreOutputErrors, print, say } from './lib/launcherOutput';
import { portProblems, urlHost, type PortNeed } from './lib/ports';
import { COLLECTOR, readProcfile, startOrder, WEB, type ProcfileEntry } from './lib/procfile';
import { describeExit, httpAnswers, Supervisor, type Readiness } from './lib/supervisor';

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

function portNeeds(config: Config, embedded: EmbeddedDatabase | undefined): PortNeed[] {
  const { api, collector, database } = config;
  const needs: PortNeed[] = [
    { variable: 'PORT', host: api.host, port: api.port, protocol: 'tcp' },
    { variable: 'API_METRICS_PORT', host: api.metricsHost, port: api.metricsPort, protocol: 'tcp' },
    { variable: 'COLLECTOR_PORT', host: collector.host, port: collector.port, protocol: 'udp' },
    { variable: 'COLLECTOR_METRICS_PORT', host: collector.metricsHost, port: collector.metricsPort, protocol: 'tcp' },
  ];
  if (embedded && !embedded.leftRunning) needs.push({ variable: 'EMBEDDED_PG_PORT', host: '127.0.0.1', port: database.embeddedPort, protocol: 'tcp' });
  return needs;
}

// The collector is ready when its metrics port answers (it opens it after binding UDP); the
// API when /healthz says 200, which means it reaches the database too.
function readiness(config: Config): Record<string, Readiness> {
  const collectorUrl = `http://${urlHost(config.collector.metricsHost)}:${config.collector.metricsPort}/healthz`;
  const webUrl = `http://${urlHost(config.api.host)}:${config.api.port}/healthz`;
  return {
    [COLLECTOR]: { what: `on ${collectorUrl} (COLLECTOR_METRICS_PORT)`, check: () => httpAnswers(collectorUrl, () => true) },
    [WEB]: { what: `${webUrl} with 200`, check: () => httpAnswers(webUrl, (status) => status === 200), readyMessage: `web is healthy: ${webUrl}` },
  };
}

// The environment of every process: the database chosen here, and the same node as the launcher,
// whatever `node` is on PATH.
const processEnv = (databaseUrl: string): NodeJS.ProcessEnv => ({
  ...process.env,
  DATABASE_URL: databaseUrl,
  PATH: [path.dirname(process.execPath), process.env.PATH].filter(Boolean).join(path.delimiter),
});

// `exit` ends the launcher; the tests pass their own to run it in process.
export class Launcher {
  private readonly embedded: EmbeddedDatabase | undefined;
  private supervisor: Supervisor | undefined;
  private stopping: Promise<void> | undefined;
  private stopRequestedFlag = false;

  constructor(
    private readonly config: Config,
    private readonly exit: (code: number) => void = (code) => process.exit(code),
  ) {
    ignoreOutputErrors();
    this.embedded = config.database.url ? undefined : new EmbeddedDatabase(config.database);
    // Whatever happens, leave nothing behind: a last, synchronous sweep on exit.
    process.on('exit', () => {
      this.supervisor?.killAll();
      this.embedded?.stop();
      this.embedded?.releaseFolder();
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

  // Stops every process in the reverse of start order (web, then collector), then the database.
  // The exit code is 0 only when asked to stop and every process stopped cleanly.
  shutdown(failure?: string): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopRequestedFlag = true;
    this.stopping = (async () => {
      if (failure) say(failure);
      const stoppedCleanly = (await this.supervisor?.stopAll()) ?? true;
      const clean = failure === undefined && stoppedCleanly;
      this.embedded?.stop();
      this.embedded?.releaseFolder();
      say(clean ? 'stopped' : 'stopped after a failure');
      this.exit(clean ? 0 : 1);
    })();
    return this.stopping;
  }

  async run(entries: ProcfileEntry[]) {
    const { config, embedded } = this;
    if (embedded && !embedded.lockFolder()) return this.exit(1);
    const problems = await portProblems(portNeeds(config, embedded));
    if (problems.length > 0) {
      for (const problem of problems) say(problem);
      embedded?.releaseFolder();
      return this.exit(1);
    }
    const target = this.openDatabase();
    if (this.stopRequested) return;
    const db = createDb(target.ownerUrl, { poolMax: 2, connectTimeoutMs: config.database.connectTimeoutMs, applicationName: 'keyusage-start' });
    try {
      if (embedded) {
        const applied = await migrateLatest(db);
        say(applied.length > 0 ? `applied ${applied.length} migration(s)` : 'migrations are up to date');
        if (embedded.app) await ensureAppRole(db, embedded.app.role, embedded.app.password);
      } else {
        await requireMigrated(db);
      }
      if (this.stopRequested) return;
      if (!(await this.startProcesses(entries, target.processUrl))) return;
      const banner = await firstRunBanner(db, config, { ...target, embedded: embedded !== undefined }, () => this.stopRequested);
      if (banner !== undefined) print(banner + '\n');
    } finally {
      await db.destroy();
    }
  }

  private openDatabase(): DatabaseTarget {
    if (!this.embedded) return externalDatabase(this.config.database.url!);
    return this.embedded.start((why) => {
      if (!this.stopRequested) void this.shutdown(why);
    });
  }

  // False when a process died or a stop was asked for meanwhile.
  private startProcesses(entries: ProcfileEntry[], databaseUrl: string): Promise<boolean> {
    this.supervisor = new Supervisor({
      env: processEnv(databaseUrl),
      readiness: readiness(this.config),
      stopRequested: () => this.stopRequested,
      onUnexpectedExit: (name, exit) => void this.shutdown(`${name} ${describeExit(exit)}; stopping the rest`),
    });
    return this.supervisor.startAll(startOrder(entries));
  }
}

// Only the embedded database is ours to migrate, as in the CLI: a DATABASE_URL may be a real
// database, whose schema changes with `npm run migrate` at a planned step (a release's migrations
// applied under older collectors still running broke them), and the app role's URL failed here
// with "permission denied for schema public".
async function requireMigrated(db: Db): Promise<void> {
  const missing = await unappliedMigrations(db);
  if (missing === undefined) say('migrations not checked: this role may not read knex_migrations');
  else if (missing.length === 0) say('migrations are up to date');
  else {
    throw new Error(
      `the database at DATABASE_URL lacks ${missing.length} migration(s), from ${missing[0]}: run \`npm run migrate\` with the schema owner's DATABASE_URL first`,
    );
  }
}

function main() {
  const { config, entries } = setupOrExit(() => {
    // The processes inherit this environment, so they run under the NODE_ENV decided here.
    Object.assign(process.env, withDevelopmentDefault(process.env));
    return { config: loadConfig(), entries: readProcfile(process.env.PROCFILE || 'Procfile') };
  }, say);
  const launcher = new Launcher(config);
  launcher.onSignals();
  launcher.run(entries).catch((error: Error) => launcher.shutdown(`failed to start: ${error.message}`));
}

if (require.main === module) main();
