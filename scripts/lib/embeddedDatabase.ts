import path from 'node:path';
import type { Config } from '../../shared/config';
import { acquireDataFolderLock, DataFolderBusyError, type DataFolderLock } from './dataFolderLock';
import { say } from './launcherOutput';
import { postmasterPid, runningPort, startLocalPostgres, type LocalPostgres } from './localPostgres';

// The database `npm start` runs against: DATABASE_URL as given, or the embedded cluster in the
// data folder, which one launcher owns at a time (dataFolderLock.ts). The embedded one is migrated
// as its owner, while the processes connect as the app role, which may only read and write rows
// (appRole.ts).

const DATABASE_WATCH_MS = 500;

export interface DatabaseTarget {
  /** Migrations and administration. */
  ownerUrl: string;
  /** What the Procfile's processes get as DATABASE_URL. */
  processUrl: string;
  /** Where the data lives, for people: a folder for the embedded database, else host:port/db. */
  dataLocation: string;
  /** How to start from scratch, when the launcher owns the data. */
  resetHint?: string;
}

function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return 'DATABASE_URL';
  }
}

export const externalDatabase = (url: string): DatabaseTarget => ({
  ownerUrl: url,
  processUrl: url,
  dataLocation: `the database at ${redactUrl(url)} (DATABASE_URL)`,
});

export class EmbeddedDatabase {
  readonly dataDir: string;
  private cluster: LocalPostgres | undefined;
  private lock: DataFolderLock | undefined;
  private watch: NodeJS.Timeout | undefined;

  constructor(private readonly settings: Pick<Config['database'], 'embeddedDir' | 'embeddedPort'>) {
    this.dataDir = path.resolve(settings.embeddedDir);
  }

  /** The app role the processes connect as, once started. */
  get app(): LocalPostgres['app'] | undefined {
    return this.cluster?.app;
  }

  /** A cluster left running by a killed launcher holds its port and is reused, not restarted. */
  get leftRunning(): boolean {
    return postmasterPid(this.dataDir) !== undefined;
  }

  // False (having said why) when another launcher holds the folder: it is left untouched.
  lockFolder(): boolean {
    try {
      this.lock = acquireDataFolderLock(this.dataDir);
      return true;
    } catch (error) {
      if (!(error instanceof DataFolderBusyError)) throw error;
      const holder = error.pid > 0 ? `another npm start (pid ${error.pid})` : 'another npm start that is starting';
      say(`${this.dataDir} is in use by ${holder}. Stop that one first, or give this one its own folder: EMBEDDED_PG_DIR=<another folder> npm start`);
      if (error.pid > 0) say(`(If no launcher runs as pid ${error.pid}, remove ${error.lockFile}.)`);
      return false;
    }
  }

  /** Starts (or reuses) the cluster; `onDied` hears when its server stops underneath the launcher. */
  start(onDied: (why: string) => void): DatabaseTarget {
    const { dataDir } = this;
    const relative = path.relative(process.cwd(), dataDir);
    const shown = relative && !relative.startsWith('..') ? relative : dataDir;
    const leftOver = runningPort(dataDir);
    say(
      leftOver
        ? `reusing the PostgreSQL left running in ${shown} on 127.0.0.1:${leftOver}`
        : `starting the embedded PostgreSQL in ${shown} on 127.0.0.1:${this.settings.embeddedPort}`,
    );
    const cluster = startLocalPostgres({ dataDir, port: this.settings.embeddedPort });
    this.cluster = cluster;
    say(`PostgreSQL is up (postmaster pid ${postmasterPid(dataDir) ?? 'unknown'}); the API and the collector connect as ${cluster.app.role}`);
    this.watchServer(onDied);
    const isDefault = dataDir === path.resolve('.data/postgres');
    return {
      ownerUrl: cluster.url,
      processUrl: cluster.app.url,
      dataLocation: `${shown} (embedded PostgreSQL on 127.0.0.1:${cluster.port})`,
      resetHint: `To reset: stop with Ctrl-C, then \`rm -rf ${isDefault ? '.data' : `${shown} ${shown}.password ${shown}.log`}\` and \`npm start\` again.`,
    };
  }

  // pg_ctl daemonises the server, so its death reaches no handler of ours: poll its pid file.
  private watchServer(onDied: (why: string) => void) {
    const pid = postmasterPid(this.dataDir);
    this.watch = setInterval(() => {
      if (!this.cluster || postmasterPid(this.dataDir) !== undefined) return;
      this.cluster = undefined; // nothing left to stop
      clearInterval(this.watch);
      onDied(`PostgreSQL (postmaster pid ${pid ?? 'unknown'}) stopped underneath the launcher; see ${this.dataDir}.log. Stopping the rest`);
    }, DATABASE_WATCH_MS);
    this.watch.unref();
  }

  /** Stops the server (if this launcher started or reused it); synchronous, so it also runs on exit. */
  stop() {
    clearInterval(this.watch);
    const cluster = this.cluster;
    if (!cluster) return;
    this.cluster = undefined;
    try {
      say('stopping PostgreSQL');
      cluster.stop();
    } catch (error) {
      say(`PostgreSQL did not stop cleanly: ${(error as Error).message}`);
    }
  }

  releaseFolder() {
    this.lock?.release();
  }
}
