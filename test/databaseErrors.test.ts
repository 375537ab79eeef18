import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { startApi } from '../api/main';
import { startCollector } from '../collector/main';
import { migrate } from '../scripts/migrate';
import { loadConfig } from '../shared/config';
import { createDb, databaseUnavailable, describeDatabaseError, poolState } from '../shared/db';
import { createLogger } from '../shared/logger';
import { seedOrg, startTestApi, type TestResponse } from './helpers/api';
import { adminDatabaseUrl, freshDatabase } from './helpers/database';
import { PgProxy } from './helpers/faults';
import { sleep } from '../harness/wait';
import { within } from '../shared/within';

// What an operator sees when the database is unreachable or refuses DATABASE_URL, tried against
// the real throwaway PostgreSQL (initdb --auth=scram-sha-256: every role must give a password).

const logger = createLogger({ level: 'silent', name: 'test' });
const NO_PASSWORD = /the server asked for a password; DATABASE_URL has none/;

// A role with a password, and the URLs that name it without one, with a wrong one and the right one.
async function roleWithPassword(t: Test) {
  const { url } = await freshDatabase(t);
  const role = `kt_role_${randomBytes(4).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  const admin = createDb(adminDatabaseUrl(), { poolMax: 1 });
  await admin.raw(`create role ${role} login password '${password}'`);
  t.teardown(async () => {
    await admin.raw(`drop role if exists ${role}`);
    await admin.destroy();
  });
  const as = (secret: string) => {
    const withRole = new URL(url);
    withRole.username = role;
    withRole.password = secret;
    return withRole.toString();
  };
  return { role, noPassword: as(''), wrongPassword: as('wrong'), rightPassword: as(password) };
}

function captured() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (line: string) => void out.push(line), err: (line: string) => void err.push(line) } };
}

// `npm run migrate` as a process: the whole run, exit included, is what the operator waits for.
// `signal` is set when it did not exit on its own and was killed (after 30 s).
function migrateProcess(env: Record<string, string>) {
  const tsx = path.resolve(__dirname, '..', 'node_modules', '.bin', 'tsx');
  return new Promise<{ code: number; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    execFile(
      tsx,
      [path.resolve(__dirname, '..', 'scripts', 'migrate.ts')],
      // Opt out of tap's coverage in the tsx child (see test/cli.test.ts); killed after 30 s.
      { env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', ...env }, timeout: 30_000 },
      (error, _stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, signal: error?.signal ?? null, stderr }),
    );
  });
}

t.test('DATABASE_URL without a password: fails within seconds and says so', async (t) => {
  const { role, noPassword, wrongPassword, rightPassword } = await roleWithPassword(t);

  const run = await migrateProcess({ DATABASE_URL: noPassword });
  t.equal(run.code, 1);
  t.match(run.stderr, NO_PASSWORD);
  t.equal(run.signal, null, 'npm run migrate exits on its own, not killed with the socket still held (the server would hold it for 60 s)');

  const wrong = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: wrongPassword }, wrong.io), 1);
  t.match(wrong.err.join('\n'), `error: migration failed: the server refused DATABASE_URL's credentials: password authentication failed for user "${role}"`);

  await t.rejects(startApi(loadConfig({ NODE_ENV: 'test', PORT: '0', USAGE_TRACKING: 'false' }), logger, noPassword), { message: NO_PASSWORD });
  await t.rejects(startCollector(loadConfig({ NODE_ENV: 'test', COLLECTOR_PORT: '0', COLLECTOR_METRICS_PORT: '0' }), logger, wrongPassword), {
    message: /the server refused DATABASE_URL's credentials/,
  });

  const right = createDb(rightPassword, { poolMax: 1 });
  t.same((await right.raw('select current_user as who')).rows, [{ who: role }], 'the right password is accepted');
  await right.destroy();
});

t.test('a server that never answers: the attempt ends after DATABASE_CONNECT_TIMEOUT_MS', async (t) => {
  const accepted: net.Socket[] = [];
  const silent = net.createServer((socket) => void accepted.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const socket of accepted) socket.destroy();
    silent.close();
  });
  const url = `postgres://u:p@127.0.0.1:${(silent.address() as net.AddressInfo).port}/db`;

  const result = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url, DATABASE_CONNECT_TIMEOUT_MS: '500' }, result.io), 1);
  // The message says the connect timeout ended the attempt: without one it never ends.
  t.match(result.err.join('\n'), /cannot reach the database at 127\.0\.0\.1:\d+ named by DATABASE_URL: .*no answer within DATABASE_CONNECT_TIMEOUT_MS/);
});

function assertUnavailable(t: Test, response: TestResponse, label: string) {
  t.equal(response.status, 503, `${label}: 503`);
  t.equal(response.headers.get('retry-after'), '5', `${label}: Retry-After`);
  t.same(Object.keys(response.body?.error ?? {}).sort(), ['code', 'message', 'requestId'], `${label}: the one error shape`);
  t.equal(response.body?.error?.code, 'service_unavailable', `${label}: service_unavailable`);
}

t.test('database unreachable: requests answer 503 service_unavailable with Retry-After, and recover', async (t) => {
  const { db, url } = await freshDatabase(t);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const viaProxy = createDb(proxy.url, { poolMax: 2 });
  t.teardown(() => viaProxy.destroy());
  const api = await startTestApi(t, viaProxy);
  const { org, adminKey } = await seedOrg(api, db);
  const other = await api.services.apiKeys.create(org.id, { name: 'never used', scopes: ['keys:read'], expiresAt: null });
  const list = `/api/orgs/${org.id}/api-keys`;
  t.equal((await api.request('GET', list, { key: adminKey })).status, 200, 'up: 200');

  const cut = proxy.cutAt(/api_keys/, 'before-forward');
  assertUnavailable(t, await api.request('GET', list, { key: adminKey }), 'a connection cut during the query');
  await cut;

  await proxy.down();
  assertUnavailable(t, await api.request('GET', list, { key: adminKey }), 'port closed, key verified from cache');
  assertUnavailable(t, await api.request('GET', '/api/whoami', { key: other.plaintext }), 'port closed, key verification needs the database');
  t.notOk(
    api.evidence.logLines.some((line) => line.includes('"level":50')),
    'an outage is not logged as an unhandled error',
  );
  t.ok(
    api.evidence.logLines.some((line) => line.includes('ECONNREFUSED')),
    'the cause is logged',
  );

  await proxy.up();
  t.equal((await api.request('GET', list, { key: adminKey })).status, 200, 'back up: 200');
});

t.test('a network gone silent during a statement: the connection is closed after DATABASE_REPLY_TIMEOUT_MS, 503, and the pool recovers', async (t) => {
  const { db, url } = await freshDatabase(t);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const viaProxy = createDb(proxy.url, { poolMax: 1, replyTimeoutMs: 500 });
  t.teardown(() => viaProxy.destroy());
  const api = await startTestApi(t, viaProxy);
  const { org, adminKey } = await seedOrg(api, db);
  const list = `/api/orgs/${org.id}/api-keys`;
  t.equal((await api.request('GET', list, { key: adminKey })).status, 200, 'up: 200');

  const silenced = proxy.cutAt(/api_keys/, 'silence');
  const answer = await within(api.request('GET', list, { key: adminKey }), 15_000);
  await silenced;
  t.ok(answer, 'the request is answered, not left waiting on the silent connection');
  if (answer) assertUnavailable(t, answer, 'a statement whose reply never comes');
  t.ok(
    api.evidence.logLines.some((line) => line.includes('DATABASE_REPLY_TIMEOUT_MS')),
    'the log says which limit closed the connection',
  );
  t.equal((await api.request('GET', list, { key: adminKey })).status, 200, 'the next request gets a fresh connection: 200');
  t.equal(proxy.stats.connections, 2, 'the silent connection was discarded, not handed back to the pool');
});

t.test('the reply timeout counts silence while a statement waits: an idle connection is left alone, a statement silent for longer is cut', async (t) => {
  const { url } = await freshDatabase(t);
  const db = createDb(url, { poolMax: 1, replyTimeoutMs: 400 });
  t.teardown(() => db.destroy());
  const backendPid = async () => (await db.raw('select pg_backend_pid() as pid')).rows[0].pid as number;
  const before = await backendPid();
  await sleep(900);
  t.equal(await backendPid(), before, 'idle for twice the timeout, the connection still serves');
  await t.rejects(db.raw('select pg_sleep(1.2)'), /DATABASE_REPLY_TIMEOUT_MS/, 'a statement the server is silent on for longer is cut');
  t.not(await backendPid(), before, 'and its connection replaced');
});

t.test('a database that was never reachable: 503, not 401 or 500', async (t) => {
  const closed = createDb('postgres://u:p@127.0.0.1:1/none', { poolMax: 1 });
  t.teardown(() => closed.destroy());
  const api = await startTestApi(t, closed);
  const key = `ku_${randomBytes(16).toString('hex')}_${randomBytes(32).toString('base64url')}`;
  assertUnavailable(t, await api.request('GET', '/api/whoami', { key }), 'whoami');
});

t.test('describeDatabaseError takes the URL forms pg takes, a socket folder included, and never repeats the password', async (t) => {
  const refused = Object.assign(new Error('connect ECONNREFUSED /tmp/.s.PGSQL.5432'), { code: 'ECONNREFUSED' });
  const text = describeDatabaseError(refused, 'postgres://u:sekret@/db?host=/tmp');
  t.match(text, /^cannot reach the database at \/tmp named by DATABASE_URL: connect ECONNREFUSED/);
  t.notMatch(text, /sekret/);
  const badPassword = Object.assign(new Error('password authentication failed'), { code: '28P01' });
  t.match(describeDatabaseError(badPassword, 'postgres://u:sekret@/db?host=/tmp'), /^the server refused DATABASE_URL's credentials/);
  const noPassword = new Error('SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string');
  t.match(describeDatabaseError(noPassword, 'postgres://u@/db?host=%2Frun%2Fpostgresql'), /^the server asked for a password; DATABASE_URL has none/);
  t.match(describeDatabaseError(refused, 'postgres://u@/db?host=%2Frun%2Fpostgresql'), /^cannot reach the database at \/run\/postgresql named by/);
});

t.test('which errors mean "the database is unavailable"', async (t) => {
  const unavailable = [
    ['ECONNREFUSED', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' })],
    ['ECONNRESET', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })],
    ['ETIMEDOUT', Object.assign(new Error('connect ETIMEDOUT'), { code: 'ETIMEDOUT' })],
    ['57P01 admin_shutdown', Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' })],
    ['57P03 cannot_connect_now', Object.assign(new Error('the database system is starting up'), { code: '57P03' })],
    ['53300 too_many_connections', Object.assign(new Error('sorry, too many clients already'), { code: '53300' })],
    ['08006 connection_failure', Object.assign(new Error('connection failure'), { code: '08006' })],
    ['knex acquire timeout', Object.assign(new Error('Knex: Timeout acquiring a connection.'), { name: 'KnexTimeoutError' })],
    ['pg: Connection terminated unexpectedly', new Error('Connection terminated unexpectedly')],
    ['the same, after knex put the query before it', new Error('select 1 - Connection terminated unexpectedly')],
    ['pg: connect timeout', new Error('timeout expired')],
    // A stopped server's Unix socket file is gone (fails without the fix: a 500, and the API did not start).
    ['ENOENT (a Unix socket with no server)', Object.assign(new Error('connect ENOENT /run/postgresql/.s.PGSQL.5432'), { code: 'ENOENT', syscall: 'connect' })],
  ] as const;
  for (const [label, error] of unavailable) t.equal(databaseUnavailable(error), true, label);
  const other = [
    ['23505 unique_violation', Object.assign(new Error('duplicate key'), { code: '23505' })],
    ['28P01 invalid_password (a configuration error, not an outage)', Object.assign(new Error('password authentication failed'), { code: '28P01' })],
    ['a bug', new TypeError("Cannot read properties of undefined (reading 'id')")],
    // A missing sslrootcert is a configuration error (pg reads the file while parsing the URL), not an outage.
    ['ENOENT opening a file', Object.assign(new Error("ENOENT: no such file or directory, open '/nonexistent/ca.pem'"), { code: 'ENOENT', syscall: 'open' })],
    ['not an error', undefined],
  ] as const;
  for (const [label, error] of other) t.equal(databaseUnavailable(error), false, label);
});

t.test("poolState counts the pool's connections in use and the queries waiting for one", async (t) => {
  const { url } = await freshDatabase(t);
  const db = createDb(url, { poolMax: 1 });
  t.teardown(() => db.destroy());
  const pool = poolState(db);
  t.same([pool.used(), pool.pendingAcquires()], [0, 0]);
  const trx = await db.transaction();
  // A knex query starts when it is awaited or then'd.
  const waiting = db.raw('select 1').then(() => undefined);
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.same([pool.used(), pool.pendingAcquires()], [1, 1], 'the transaction holds the one connection; the query waits');
  await trx.commit();
  await waiting;
  t.same([pool.used(), pool.pendingAcquires()], [0, 0]);
});

// A Unix-socket database that is stopped (its socket file gone): 503 with Retry-After, as any
// unreachable database, not a 500 logged as a bug (fails without ENOENT among the unreachable errors).
t.test('a Unix socket with no server behind it is an unavailable database: 503', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { adminKey } = await seedOrg(api, db);
  const parsed = new URL(url);
  const viaSocket = createDb(`postgres://${parsed.username}:${parsed.password}@/${parsed.pathname.slice(1)}?host=/nonexistent-socket-folder`, { poolMax: 1 });
  t.teardown(() => viaSocket.destroy());
  const socketApi = await startTestApi(t, viaSocket);
  assertUnavailable(t, await socketApi.request('GET', '/api/whoami', { key: adminKey }), 'a socket file that is not there');
});

// A silent database: each probe after the first second started a query of its own, on a pool
// connection of its own, each answered only when the reply timeout cut it (fails without the fix).
t.test('/healthz runs one query at a time and answers within HEALTH_ANSWER_MS while the database is silent', async (t) => {
  const { url } = await freshDatabase(t);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  // Cut by the reply timeout after the answer bound (HEALTH_ANSWER_MS, 5 s): the answers come from the bound.
  const viaProxy = createDb(proxy.url, { poolMax: 4, replyTimeoutMs: 6_000 });
  t.teardown(() => viaProxy.destroy());
  let clock = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, viaProxy, { now: () => clock });
  t.equal((await api.request('GET', '/healthz')).status, 200);
  clock += 1000;
  const silenced = proxy.cutAt(/select 1/, 'silence');
  const first = api.request('GET', '/healthz');
  await silenced;
  clock += 1100;
  const second = api.request('GET', '/healthz');
  const answers = await Promise.all([first, second]);
  t.strictSame(
    answers.map((answer) => answer.status),
    [503, 503],
    'both answered, down, within HEALTH_ANSWER_MS',
  );
  t.equal(proxy.stats.connections, 1, 'one query in flight: no second connection taken for the probe');
  // The database is back but the first query still waits on its dead connection: once it has run
  // HEALTH_ANSWER_MS a probe starts another, which answers.
  clock += 5000;
  t.equal((await api.request('GET', '/healthz')).status, 200, 'a new query on a new connection: up again');
  t.equal(proxy.stats.connections, 2);
});

// A change whose connection went silent (a NAT that dropped the connection's state: the client's
// close never reaches the server) left its server session idle in the transaction, holding the
// org's audit lock: every key change of the org failed until TCP keep-alive gave up, about two
// hours. The server now ends it after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS (fails without it).
t.test("a change cut off mid-transaction does not hold its org's changes after the idle-in-transaction timeout", async (t) => {
  const { db, url } = await freshDatabase(t);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const viaProxy = createDb(proxy.url, { poolMax: 4, replyTimeoutMs: 1500, statementTimeoutMs: 1000, idleInTransactionTimeoutMs: 1000 });
  t.teardown(() => viaProxy.destroy());
  const api = await startTestApi(t, viaProxy);
  const { org, adminKey } = await seedOrg(api, db);
  const keys = `/api/orgs/${org.id}/api-keys`;
  const target = (await api.request('POST', keys, { key: adminKey, body: { name: 'target', scopes: ['keys:read'] } })).body.id as string;
  const silenced = proxy.cutAt(/update "api_keys"/, 'silence-after');
  const cut = await api.request('POST', `${keys}/${target}/revoke`, { key: adminKey });
  await silenced;
  assertUnavailable(t, cut, 'the revoke whose connection went silent');
  await sleep(1500);
  const next = await api.request('POST', keys, { key: adminKey, body: { name: 'after', scopes: ['keys:read'] } });
  t.equal(next.status, 201, "the org's next change goes through: the server ended the abandoned transaction");
  t.equal((await db('api_keys').where({ id: target }).first()).revoked_at, null, 'and the cut revoke was rolled back');
});
