import { freeTcpPort } from '../scripts/lib/freePort';
import { startThrowawayPostgres } from '../scripts/lib/localPostgres';
import { createDb } from '../shared/db';

// PostgreSQL for the test runner and the benchmarks: the server given by DATABASE_URL or a
// throwaway local cluster, and scratch databases on it that are dropped at the end.

export interface PostgresServer {
  /** A URL with the rights to create and drop databases. */
  adminUrl: string;
  /** True when the server is a throwaway cluster started here. */
  local: boolean;
  /** Stops the throwaway cluster and removes its files (nothing for DATABASE_URL's server); idempotent. */
  stop(): void;
}

export async function openPostgresServer(scratchPrefix: string, log: (line: string) => void): Promise<PostgresServer> {
  const given = process.env.DATABASE_URL;
  if (given) return { adminUrl: given, local: false, stop: () => undefined };
  const cluster = startThrowawayPostgres(scratchPrefix, await freeTcpPort());
  log(`throwaway PostgreSQL at 127.0.0.1:${new URL(cluster.url).port} (${cluster.scratch})`);
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    cluster.stop();
  };
  return { adminUrl: cluster.url, local: true, stop };
}

/** The URL of database `name` on the server of `serverUrl`. */
export function databaseUrl(serverUrl: string, name: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export interface ScratchDatabase {
  url: string;
  /** Drops the database, whoever is still connected to it. */
  drop(): Promise<void>;
}

/** Creates database `name` (empty, or a copy of `template`) on the server of `adminUrl`. */
export async function createScratchDatabase(adminUrl: string, name: string, options: { template?: string } = {}): Promise<ScratchDatabase> {
  const admin = createDb(adminUrl, { poolMax: 1 });
  try {
    await admin.raw(`create database ${name}${options.template ? ` template ${options.template}` : ''}`);
  } catch (error) {
    await admin.destroy();
    throw error;
  }
  return {
    url: databaseUrl(adminUrl, name),
    async drop() {
      try {
        await admin.raw(`drop database if exists ${name} with (force)`);
      } finally {
        await admin.destroy();
      }
    },
  };
}
