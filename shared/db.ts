import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import knex, { type Knex } from 'knex';
import pg from 'pg';
import { DEFAULT_DATABASE_CONNECT_TIMEOUT_MS } from './config';
import type { Logger } from './logger';

export type Db = Knex;

/**
 * The rows of a raw statement, typed as the caller maps them. knex types every raw result as any;
 * repositories name the row shape here, at their boundary, instead of reading fields of `any`.
 */
export async function rawRows<Row>(db: Db, sql: string, bindings: Knex.RawBinding[] | Knex.ValueDict = []): Promise<Row[]> {
  const result = await db.raw(sql, bindings);
  return result.rows as Row[];
}

// An exact integer count: a number while it is a safe integer, its decimal string beyond
// (counters saturate at the bigint maximum, which a double would round).
/**
 * A created_at for a row of a Citus reference table (organizations, api_keys): now() written in the
 * statement, which Citus evaluates once on the coordinator. The column's default (CURRENT_TIMESTAMP)
 * is evaluated by each node's copy at its own transaction's start, and the copies differed by up to
 * 70 ms for one key: a reply's createdAt, and a never-used key's dormancy, depended on the copy read.
 */
export const referenceRowNow = (db: Db): Knex.Raw => db.raw('now()');

export type Count = number | string;

export function exactCount(value: string | number): Count {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : String(value);
}

/** SQL for a timestamptz as text in the form toISOString() gives (`2026-12-06T03:40:37.000Z`), whatever the session's zone. */
export const isoTimeSql = (time: string) => `to_char((${time}) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

pg.types.setTypeParser(pg.types.builtins.INT8, exactCount);
// cidr[] (api_keys.expected_networks) as an array of strings, like text[].
type TypeId = Parameters<typeof pg.types.setTypeParser>[0];
const CIDR_ARRAY_OID = 651 as TypeId;
const TEXT_ARRAY_OID = 1009 as TypeId;
pg.types.setTypeParser(CIDR_ARRAY_OID, pg.types.getTypeParser(TEXT_ARRAY_OID));

export const MIGRATIONS_DIRECTORY = path.resolve(__dirname, '..', 'migrations');

/** The connection settings knex hands each new client: pg's own, and ours. */
interface ClientSettings extends pg.ClientConfig {
  replyTimeoutMs?: number;
}

// pg's fields behind the reply timeout: its socket and the statements it waits on.
interface PgClientInternals {
  connection: { stream: net.Socket };
  _getActiveQuery(): unknown;
  _queryQueue: unknown[];
}

// pg leaves the socket of a failed connection attempt open. When the client gave up (no password
// to answer the server's challenge) the server holds it until its authentication_timeout (60 s),
// keeping a process that is done from exiting and the API from releasing it. knex calls connect()
// without a callback.
// A network that goes silent (a NAT's state dropped, a host gone without a FIN or RST) left a
// statement waiting for its reply for as long as the kernel kept retransmitting, about 15 minutes:
// the collector's flush in progress held every later one, with /healthz green. pg's own
// query_timeout fails the statement but keeps the connection, with the statement still on it, so
// the transaction's ROLLBACK queued behind it and the pool took the connection back. Here a
// statement with no byte from the server for replyTimeoutMs closes its connection: everything on it
// fails, and knex discards it.
class ClosingPgClient extends pg.Client {
  readonly #replyTimeoutMs: number;

  constructor(settings: ClientSettings) {
    super(settings);
    this.#replyTimeoutMs = settings.replyTimeoutMs ?? 0;
  }

  override async connect(): Promise<pg.Client> {
    try {
      const connected = await super.connect();
      if (this.#replyTimeoutMs > 0) this.#closeWhenSilent(this.#replyTimeoutMs);
      return connected;
    } catch (error) {
      this.end().catch(() => {});
      throw error;
    }
  }

  // The socket's timeout counts from its last byte either way; it fires on an idle connection
  // too, which waits on nothing and is left alone.
  #closeWhenSilent(timeoutMs: number): void {
    const internals = this as unknown as PgClientInternals;
    const socket = internals.connection.stream;
    socket.setTimeout(timeoutMs);
    socket.on('timeout', () => {
      if (internals._getActiveQuery() == null && internals._queryQueue.length === 0) return;
      const silence = new Error(`PostgreSQL sent nothing for ${timeoutMs} ms while a statement waited (DATABASE_REPLY_TIMEOUT_MS): connection closed`);
      // The code of a connection that timed out: the API answers 503, as for any database unreachable.
      socket.destroy(Object.assign(silence, { code: 'ETIMEDOUT' }));
    });
  }
}

// knex's own pg dialect, handed the client above as its driver.
const KnexPg: typeof Knex.Client = require('knex/lib/dialects/postgres');
class PgDialect extends KnexPg {
  _driver() {
    return { Client: ClosingPgClient };
  }
}

// From source (tsx) the migrations are the .ts files; from dist/ the compiled .js files beside
// this module's own compiled copy. knex_migrations records each migration by name, so both name it
// by its source file: a database migrated from a checkout stays up to date for the build.
const LOADED_EXTENSION = path.extname(__filename);

const MIGRATION_SOURCE = {
  getMigrations: async () => (await fs.promises.readdir(MIGRATIONS_DIRECTORY)).filter((file) => path.extname(file) === LOADED_EXTENSION).sort(),
  getMigrationName: (file: string) => `${path.basename(file, LOADED_EXTENSION)}.ts`,
  getMigration: (file: string) => Promise.resolve(require(path.join(MIGRATIONS_DIRECTORY, file))),
};

export const MIGRATION_CONFIG: Knex.MigratorConfig = { migrationSource: MIGRATION_SOURCE };

export interface DbOptions {
  poolMax?: number;
  /** The sessions' lock_timeout; the server's own unless given (0 too). */
  lockTimeoutMs?: number;
  /** The sessions' statement_timeout; the server's own unless given (0 too). */
  statementTimeoutMs?: number;
  applicationName?: string;
  connectTimeoutMs?: number;
  /** How long a statement waits for a byte from the server before its connection is closed; 0 or unset: no limit. */
  replyTimeoutMs?: number;
  /**
   * The sessions' idle_in_transaction_session_timeout (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS):
   * DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS unless given; 0: the server's own.
   */
  idleInTransactionTimeoutMs?: number;
}

// A session whose client vanished without a word (a NAT that dropped the connection's state: the
// client's close never reached the server) stayed idle in its transaction, holding its locks, until
// TCP keep-alive gave up, about 2 hours: an API change's org audit lock, so every key and webhook
// change of the org failed meanwhile. The server now ends such a session. No transaction of ours
// waits this long between two statements.
export const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;

const sessionSettings =
  ({
    lockTimeoutMs = 0,
    statementTimeoutMs = 0,
    idleInTransactionTimeoutMs = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  }: Pick<DbOptions, 'lockTimeoutMs' | 'statementTimeoutMs' | 'idleInTransactionTimeoutMs'>) =>
  (connection: pg.Client, done: (error: Error | undefined, connection: pg.Client) => void): void => {
    const timeout = (name: string, ms: number) => (ms > 0 ? `; set ${name} = ${Math.trunc(ms)}` : '');
    const settings =
      timeout('lock_timeout', lockTimeoutMs) +
      timeout('statement_timeout', statementTimeoutMs) +
      timeout('idle_in_transaction_session_timeout', idleInTransactionTimeoutMs);
    connection.query(`set time zone 'UTC'${settings}`).then(
      () => done(undefined, connection),
      (error: Error) => done(error, connection),
    );
  };

export function createDb(url: string, options: DbOptions = {}): Db {
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_DATABASE_CONNECT_TIMEOUT_MS;
  return knex({
    client: PgDialect,
    connection: {
      connectionString: url,
      application_name: options.applicationName ?? 'keyusage',
      connectionTimeoutMillis: connectTimeoutMs,
      replyTimeoutMs: options.replyTimeoutMs,
      // A server that is gone is found by the kernel even on an idle pooled connection.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    } satisfies ClientSettings as Knex.PgConnectionConfig,
    // Every day and interval here is a UTC one: in a session time zone with daylight saving (a
    // database initialised on a laptop in Berlin takes its zone), a day added to a timestamp is
    // 23 or 25 hours, and the daily series' buckets after a change matched no hour (all zero).
    pool: { min: 0, max: options.poolMax ?? 10, afterCreate: sessionSettings(options) },
    // Longer than pg's own limit, so a connection attempt that fails reports its cause rather than
    // knex's "Timeout acquiring a connection".
    acquireConnectionTimeout: connectTimeoutMs + 1000,
    // knex would print connection errors to stderr itself; callers log them once, structured.
    log: { warn() {}, error() {}, deprecate() {}, debug() {} },
  });
}

/** A pool's connections in use and the queries waiting for one, read when asked. */
export interface PoolState {
  used(): number;
  pendingAcquires(): number;
}

/** The PoolState of `db` (knex's pool is tarn's). */
export function poolState(db: Db): PoolState {
  const pool = () => (db.client as { pool?: { numUsed(): number; numPendingAcquires(): number } }).pool;
  return { used: () => pool()?.numUsed() ?? 0, pendingAcquires: () => pool()?.numPendingAcquires() ?? 0 };
}

// Any bigint, the same for every release: the advisory lock that one migration run holds.
const MIGRATION_RUN_LOCK = '7318420561';
const MIGRATION_WAIT_POLL_MS = 250;
const MIGRATION_WAIT_MAX_MS = 10 * 60_000;

// The session holding the run lock, as "pid 1234, keyusage-migrate": a run waiting up to
// MIGRATION_WAIT_MAX_MS without a word looked hung to a deploy pipeline. A bigint advisory key
// shows in pg_locks as its high (classid) and low (objid) 32 bits, objsubid 1.
async function migrationRunHolder(guard: pg.Client): Promise<string> {
  const { rows } = await guard
    .query<{ pid: number; application_name: string | null }>(
      `select a.pid, a.application_name from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.granted and l.objsubid = 1 and l.database = (select oid from pg_database where datname = current_database())
          and ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint`,
      [MIGRATION_RUN_LOCK],
    )
    .catch(() => ({ rows: [] }));
  const holder = rows[0];
  if (!holder) return 'its session is not visible';
  return `pid ${holder.pid}${holder.application_name ? `, ${holder.application_name}` : ''}`;
}

// Tried, not waited for in one statement: a waiting statement holds a snapshot, and the other
// run's CREATE INDEX CONCURRENTLY waits for every such snapshot to end (a deadlock no one detects).
async function takeMigrationRunLock(guard: pg.Client, onWait?: (holder: string) => void): Promise<void> {
  let holder: string | undefined;
  for (let waited = 0; ; waited += MIGRATION_WAIT_POLL_MS) {
    const { rows } = await guard.query<{ locked: boolean }>('select pg_try_advisory_lock($1) as locked', [MIGRATION_RUN_LOCK]);
    if (rows[0].locked) return;
    if (holder === undefined) {
      holder = await migrationRunHolder(guard);
      onWait?.(holder);
    }
    if (waited >= MIGRATION_WAIT_MAX_MS) {
      throw new Error(`another migration run (${await migrationRunHolder(guard)}) has held the database for ${MIGRATION_WAIT_MAX_MS / 60_000} minutes`);
    }
    await new Promise((resolve) => setTimeout(resolve, MIGRATION_WAIT_POLL_MS));
  }
}

/** A migration that gave up waiting for a lock (lock_timeout), about to be tried again. */
export interface LockRetry {
  migration: string;
  /** The try that gave up, from 1. */
  attempt: number;
  pauseMs: number;
}

export interface MigrateOptions {
  /** Told once, with the holder, when another run holds the lock. */
  onWait?: (holder: string) => void;
  /**
   * The sessions' lock_timeout (not 0): a migration that gives up waiting for a lock is tried
   * again, up to MIGRATION_LOCK_TRIES tries, `onLockRetry` told before each pause.
   */
  lockTimeoutMs?: number;
  onLockRetry?: (retry: LockRetry) => void;
}

/**
 * Applies the pending migrations, one run at a time. knex's own lock is a row
 * (knex_migrations_lock.is_locked) that a batch with a migration outside a transaction commits
 * apart: a run killed then (Ctrl-C during a CREATE INDEX CONCURRENTLY) left it set, and every run
 * after failed with "Migration table is already locked". So each run holds a session advisory
 * lock, which dies with its session, on a connection of its own; under it no other run can be
 * between knex's lock and its release, and a lock row still set is a dead run's, freed.
 *
 * `upTo`: stop once that migration (a file name) is applied, as the Citus runner's upgrade path does.
 */
export async function migrateLatest(db: Db, upTo?: string, options: MigrateOptions = {}): Promise<string[]> {
  const guard = new ClosingPgClient((db.client as { connectionSettings: pg.ClientConfig }).connectionSettings);
  // An idle client whose session ends (a server restart) emits 'error': with no listener that
  // crashed the run mid-migration. The guard idles for the whole run, so idle_session_timeout
  // (PostgreSQL 14+) is turned off for its session: ended, it let a second run in, whose
  // forceFreeMigrationsLock freed this run's knex lock too.
  guard.on('error', () => {});
  await guard.connect();
  try {
    await guard.query(`do $$ begin set idle_session_timeout = 0; exception when undefined_object then null; end $$`);
    await takeMigrationRunLock(guard, options.onWait);
    await db.migrate.forceFreeMigrationsLock(MIGRATION_CONFIG);
    return await applyOneByOne(db, upTo, options);
  } finally {
    await guard.end();
  }
}

// One migration at a time: in a batch holding a migration that runs outside a transaction (…120),
// knex records each migration after it commits, so a run cut between the two left one applied but
// not recorded, and every later run failed applying it again ("already exists"). Alone, a
// transactional migration and its record commit together.
async function applyOneByOne(db: Db, upTo: string | undefined, options: MigrateOptions): Promise<string[]> {
  const applied: string[] = [];
  for (;;) {
    const names = await applyNext(db, options);
    applied.push(...names);
    if (names.length === 0 || (upTo !== undefined && names.includes(upTo))) return applied;
  }
}

export const MIGRATION_LOCK_TRIES = 5;
const LOCK_NOT_AVAILABLE = '55P03';

// PostgreSQL queues every later lock request on a table behind a waiting ACCESS EXCLUSIVE one: an
// ALTER TABLE waiting behind a backup's read held the running API's reads of that table as long
// (10 s each, measured). So each try waits only lock_timeout, and the pause after it, doubling,
// lets the queued queries run and the holder finish. A try that gave up rolled back (a migration
// outside a transaction is written to be run again), and knex freed its lock row.
async function applyNext(db: Db, { lockTimeoutMs, onLockRetry }: MigrateOptions): Promise<string[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      const [, names] = (await db.migrate.up(MIGRATION_CONFIG)) as [number, string[]];
      return names;
    } catch (error) {
      if ((error as { code?: unknown }).code !== LOCK_NOT_AVAILABLE || !lockTimeoutMs) throw error;
      const migration = await firstPending(db);
      if (attempt === MIGRATION_LOCK_TRIES) throw namedFor(migration, error as Error);
      const pauseMs = lockTimeoutMs * 2 ** (attempt - 1);
      onLockRetry?.({ migration, attempt, pauseMs });
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }
}

// The failed statement alone did not say which migration to look at.
const namedFor = (migration: string, error: Error) =>
  Object.assign(new Error(`${migration}: ${error.message}`, { cause: error }), { code: LOCK_NOT_AVAILABLE });

async function firstPending(db: Db): Promise<string> {
  const [, pending] = (await db.migrate.list(MIGRATION_CONFIG)) as [unknown, string[]];
  return MIGRATION_SOURCE.getMigrationName(pending[0]);
}

/**
 * The migrations a database lacks, read without changing it (knex's own list creates its table);
 * undefined when this role may not read the record (the app role of docs/deployment.md).
 */
export async function unappliedMigrations(db: Db): Promise<string[] | undefined> {
  const names = (await MIGRATION_SOURCE.getMigrations()).map(MIGRATION_SOURCE.getMigrationName);
  try {
    const applied = new Set<string>(await db('knex_migrations').pluck('name'));
    return names.filter((name) => !applied.has(name));
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    // 42P01: no such table (nothing applied); 42501: insufficient privilege.
    if (code === '42P01') return names;
    if (code === '42501') return undefined;
    throw error;
  }
}

export async function databaseAnswers(db: Db): Promise<boolean> {
  try {
    await db.raw('select 1');
    return true;
  } catch {
    return false;
  }
}

const UNREACHABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN']);
// A Unix socket (?host=/run/postgresql) whose server is stopped has no socket file: ENOENT from
// connect(). Not from anything else: a missing sslrootcert file is a configuration error.
const missingSocket = (code: unknown, syscall: unknown) => code === 'ENOENT' && syscall === 'connect';
// SQLSTATE class 08 (connection exception), 57P01-03 (shut down, crashed, starting up), 53300 (too
// many connections).
const UNREACHABLE_STATES = /^(08\w{3}|57P0[123]|53300)$/;
// pg's own words for a connection that died or never answered; knex puts the query before them.
const UNREACHABLE_MESSAGES = /(^| - )(Connection terminated|timeout expired|Client has encountered a connection error)/;

/** The database cannot be reached (or will not take a connection) now; worth retrying later. */
export function databaseUnavailable(error: unknown): boolean {
  const { code, syscall, name, message } = (error ?? {}) as { code?: unknown; syscall?: unknown; name?: unknown; message?: unknown };
  if (typeof code === 'string' && (UNREACHABLE_ERRNOS.has(code) || UNREACHABLE_STATES.test(code) || missingSocket(code, syscall))) return true;
  return name === 'KnexTimeoutError' || (typeof message === 'string' && UNREACHABLE_MESSAGES.test(message));
}

type CredentialsProblem = 'no_password' | 'refused';

function credentialsProblem(error: unknown, url: string): CredentialsProblem | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  // 28P01: invalid_password; 28000: invalid_authorization_specification (no pg_hba entry, …).
  const refused = code === '28P01' || code === '28000';
  if (!refused && !(typeof message === 'string' && /client password must be a string/.test(message))) return undefined;
  return urlParts(url).password === '' ? 'no_password' : 'refused';
}

// pg takes forms the URL class refuses (a socket folder: postgres://user:pw@/db?host=/run/postgresql),
// whose error carried the whole URL, password included, and replaced the real cause.
function urlParts(url: string): { host: string; password: string } {
  try {
    const { host, password } = new URL(url);
    return { host, password };
  } catch {
    const userInfo = /^[^:/]+:\/\/([^@/]*)@/.exec(url)?.[1] ?? '';
    const host = /[?&]host=([^&]*)/.exec(url)?.[1] ?? '';
    return { host: decoded(host), password: userInfo.includes(':') ? userInfo.slice(userInfo.indexOf(':') + 1) : '' };
  }
}

function decoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** A database error in words an operator can act on, naming the variable that holds the URL. */
export function describeDatabaseError(error: unknown, url: string, variable = 'DATABASE_URL'): string {
  const message = error instanceof Error ? error.message : String(error);
  const { host } = urlParts(url);
  const problem = credentialsProblem(error, url);
  if (problem === 'no_password') return `the server asked for a password; ${variable} has none (postgres://user:password@${host}/…)`;
  if (problem === 'refused') return `the server refused ${variable}'s credentials: ${message}`;
  if (databaseUnavailable(error)) {
    const timedOut = /timeout/i.test(message) ? ` (no answer within DATABASE_CONNECT_TIMEOUT_MS)` : '';
    return `cannot reach the database at ${host || 'localhost'} named by ${variable}: ${message}${timedOut}`;
  }
  return message;
}

// Connections the server lets ordinary roles open (PostgreSQL 16 adds reserved_connections; 15
// has no such setting, hence the missing_ok), and how many client connections are open now.
const CONNECTION_ROOM = `select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
                              - coalesce(current_setting('reserved_connections', true), '0')::int as allowed,
                              (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as open`;

/**
 * Says at the start when `need` connections (pools fill under load, not at start) exceed what the
 * server allows at all: otherwise the shortfall shows only under load, as "Timeout acquiring a
 * connection" or "too many clients", long after the setting that caused it. `need` names the
 * variables it comes from. Silent if the server does not answer (createCheckedDb said so).
 */
export async function warnIfServerAllowsFewer(db: Db, need: { connections: number; from: string }, logger: Logger): Promise<void> {
  let room: { allowed: number; open: number };
  try {
    room = (await db.raw(CONNECTION_ROOM)).rows[0];
  } catch {
    return;
  }
  if (need.connections <= room.allowed) return;
  logger.warn(
    { connectionsNeeded: need.connections, serverAllows: room.allowed, openNow: room.open },
    `${need.from} = ${need.connections} connections under load, but the server allows ${room.allowed} ` +
      `(max_connections less superuser_reserved_connections, ${room.open} open now): lower them or raise max_connections`,
  );
}

export interface ServerVersion {
  /** server_version_num: 150020 for 15.20. */
  num: number;
  /** server_version, as the server names itself. */
  version: string;
}

export async function serverVersion(db: Db): Promise<ServerVersion> {
  const { rows } = await db.raw(`select current_setting('server_version_num')::int as num, current_setting('server_version') as version`);
  return rows[0];
}

/** server_version_num of the oldest PostgreSQL keyusage runs on: the key list's refresh uses date_bin. */
export const MIN_SERVER_VERSION_NUM = 140000;

/**
 * Says at the start when the server is older than `minimum`: the collector would start, and every
 * key list refresh fail (counted, logged, retried) with "function date_bin does not exist". Silent
 * if the server does not answer (createCheckedDb said so).
 */
export async function warnIfServerOlder(db: Db, logger: Logger, minimum = MIN_SERVER_VERSION_NUM): Promise<void> {
  let server: ServerVersion;
  try {
    server = await serverVersion(db);
  } catch {
    return;
  }
  if (server.num >= minimum) return;
  logger.warn(
    { serverVersion: server.version, serverVersionNum: server.num, minimum },
    `PostgreSQL ${server.version} is older than keyusage needs (server_version_num ${minimum}): ` +
      `the collector's key list refreshes will fail until the server is upgraded`,
  );
}

/**
 * createDb for the start of a long-running process. A database that does not answer may come back,
 * so it is logged and the process starts (requests answer 503 meanwhile); anything else —
 * credentials refused, no such database — will not mend by waiting, so it stops the start.
 */
export async function createCheckedDb(url: string, options: DbOptions, logger: Logger): Promise<Db> {
  const db = createDb(url, options);
  try {
    await db.raw('select 1');
  } catch (error) {
    const description = describeDatabaseError(error, url);
    if (!databaseUnavailable(error)) {
      await db.destroy();
      throw new Error(description, { cause: error });
    }
    logger.warn(`${description}; starting anyway, retrying on use`);
  }
  return db;
}
