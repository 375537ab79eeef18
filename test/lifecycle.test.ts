import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import http from 'node:http';
import t from 'tap';
import { startApi } from '../api/main';
import { startCollector } from '../collector/main';
import { createUsageStore } from '../collector/usageLog';
import { loadConfig } from '../shared/config';
import { closeServer, listen } from '../shared/process';
import { createLogger } from '../shared/logger';
import { freshDatabase, someoneWaitsOnLock } from './helpers/database';
import { sleep, waitFor } from '../harness/wait';
import { untilQuiet } from '../collector/receiver';
import { encodeUsageLine } from '../shared/usageWire';
import { createOrg, insertKeys } from '../bench/lib/database';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { seedKeys } from './helpers/faults';
import { insertOrganization } from '../api/orgs/orgs.repository';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { KILL_AFTER_MS } from '../shared/stopBudget';
import { TABLE } from '../shared/tables';
import { within } from '../shared/within';

const logger = createLogger({ level: 'silent', name: 'test' });

t.test('the api starts, serves, drains its usage and stops', async (t) => {
  const { url } = await freshDatabase(t);
  const sniffer = dgram.createSocket('udp4');
  const datagrams: string[] = [];
  sniffer.on('message', (m) => datagrams.push(m.toString()));
  await new Promise<void>((resolve) => sniffer.bind(0, '127.0.0.1', () => resolve()));
  t.teardown(() => sniffer.close());
  const config = loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    API_METRICS_PORT: '0',
    COLLECTOR_PORT: String(sniffer.address().port),
    USAGE_DRAIN_INTERVAL_MS: '60000',
  });
  const api = await startApi(config, logger, url);
  const health = await fetch(`http://127.0.0.1:${api.port}/healthz`);
  t.equal(health.status, 200);
  api.recorder!.record('0b7c6a39-2f11-4c55-9d7e-2f0c8e7a1b01', '5d1f0f5e-8a47-4b53-8a0e-9c1d2e3f4a5b', '192.0.2.1', 'ok');
  await api.stop();
  for (let i = 0; i < 50 && datagrams.length === 0; i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
  t.equal(datagrams.length, 1, 'stop drains the pending uses before closing the socket');
  t.equal(api.server.listening, false);
});

// A request still reading its key when the stop came records its use once the read ends: its
// client may have left, and the server's close no longer waits for it. That use came after the
// last drain, into a recorder whose socket was closed, and was lost without a trace.
t.test('the api stop waits for a use still being authorized, and sends it', async (t) => {
  const { db, url } = await freshDatabase(t, { poolMax: 2 });
  const sniffer = dgram.createSocket('udp4');
  const datagrams: string[] = [];
  sniffer.on('message', (m) => datagrams.push(m.toString()));
  await new Promise<void>((resolve) => sniffer.bind(0, '127.0.0.1', () => resolve()));
  t.teardown(() => sniffer.close());
  const config = loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: '0', COLLECTOR_PORT: String(sniffer.address().port) });
  const api = await startApi(config, logger, url);
  const { orgId, keys } = await seedKeys(db, 'acme', 1);
  const [{ id: keyId, plaintext }] = keys;
  const held = await db.transaction();
  await held.raw('lock table api_keys in access exclusive mode');
  const request = http.get({ host: '127.0.0.1', port: api.port, path: '/api/whoami', headers: { authorization: `Bearer ${plaintext}` } });
  request.on('error', () => {});
  await waitFor(
    'the key read to wait on the lock',
    async () => (await db.raw(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()`)).rows[0],
  );
  request.destroy(); // the client leaves: the server's close does not wait for the request
  const stopping = api.stop();
  await sleep(100);
  await held.rollback();
  await stopping;
  await waitFor('the datagram', () => (datagrams.length > 0 ? true : undefined));
  t.match(datagrams.join('\n'), new RegExp(`key:${keyId},org:${orgId},ip:127\\.0\\.0\\.1,outcome:ok`), 'the use was sent');
  t.match(api.recorder!.stats, { failedUses: 0 });
});

// server.close() waits for every connection to end. A request in flight at the stop left its
// kept-alive connection open after its answer, and a client that kept using it (a proxy's upstream
// pool, a dashboard refreshing) was served on it for as long as it went on: the stop waited for
// the supervisor's SIGKILL, and the last drain was lost.
t.test('the api stops while a kept-alive client keeps sending', async (t) => {
  const { url } = await freshDatabase(t);
  const api = await startApi(loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: '0', USAGE_TRACKING: 'false' }), logger, url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  let served = 0;
  // Each request's body comes 200 ms after its headers, so the stop finds one in flight. Bounded:
  // 40 requests, 250 ms apart; it ends early once the API refuses it.
  const post = () =>
    new Promise<boolean>((resolve) => {
      const request = http.request({ method: 'POST', host: '127.0.0.1', port: api.port, path: '/healthz', agent, headers: { 'content-length': '2' } }, (res) =>
        res.resume().on('end', () => resolve(true)),
      );
      request.on('error', () => resolve(false)).write('{');
      setTimeout(() => request.end('}'), 200);
    });
  const client = (async () => {
    for (let i = 0; i < 40 && (await post()); i += 1) {
      served += 1;
      await sleep(250);
    }
  })();
  await waitFor('a request served', () => (served >= 1 ? true : undefined));
  await new Promise((resolve) => api.server.once('request', resolve));
  await api.stop();
  // Read at once: the client, refused, ends soon after the stop; before the fix the stop waited
  // for all 40 of its requests.
  t.ok(served < 40, `the stop ended while the client was still sending (${served} of 40 served)`);
  await client;
});

// The query of a request whose connection the server's grace cut goes on, here waiting on a lock
// up to API_STATEMENT_TIMEOUT_MS (30 s): the stop waited for it in the pool's destroy(), and under
// `npm start` the launcher's SIGKILL ended it (exit 1).
t.test('the api stop keeps its budget while a request’s query waits on a lock', async (t) => {
  const { db, url } = await freshDatabase(t);
  const org = await insertOrganization(db, 'acme');
  const service = createApiKeysService({ db, pepper: loadConfig({ NODE_ENV: 'test' }).api.keyPepper, defaultGraceSeconds: 60, now: Date.now });
  const { plaintext } = await service.create(org.id, { name: 'writer', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  const api = await startApi(loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: '0', USAGE_TRACKING: 'false' }), logger, url);
  const held = await db.transaction();
  t.teardown(() => held.rollback().catch(() => undefined));
  await held.raw(`lock table ${TABLE.auditLog} in share mode`);
  const answer = fetch(`http://127.0.0.1:${api.port}/api/orgs/${org.id}/api-keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${plaintext}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'blocked', scopes: ['keys:read'] }),
  }).then(
    (response) => response.status,
    () => 'cut',
  );
  await someoneWaitsOnLock(db);
  t.equal(
    await within(
      api.stop().then(() => 'stopped'),
      KILL_AFTER_MS,
    ),
    'stopped',
    'the stop ended before the launcher’s SIGKILL',
  );
  t.equal(await answer, 'cut', 'the request, still waiting, had its connection cut');
});

t.test('a request that never completes is cut once the grace has passed', async (t) => {
  const server = http.createServer((req, res) => req.resume().on('end', () => res.end('late')));
  const port = await listen(server, '127.0.0.1', 0, 'PORT');
  const request = http.request({ method: 'POST', host: '127.0.0.1', port, headers: { 'content-length': '10' } });
  const cut = new Promise<string>((resolve) => request.on('error', (error: NodeJS.ErrnoException) => resolve(String(error.code))));
  request.write('1');
  await new Promise((resolve) => server.once('request', resolve));
  await closeServer(server, 100);
  t.equal(await cut, 'ECONNRESET', 'its connection was cut, and the close ended');
});

t.test('with tracking off the api records nothing', async (t) => {
  const { url } = await freshDatabase(t);
  const api = await startApi(loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: '0', USAGE_TRACKING: 'false' }), logger, url);
  t.equal(api.recorder, undefined);
  await api.stop();
});

t.test('a taken port is reported with its variable', async (t) => {
  const { db, url } = await freshDatabase(t);
  const blocker = http.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => blocker.close());
  const taken = (blocker.address() as { port: number }).port;
  await t.rejects(startApi(loadConfig({ NODE_ENV: 'test', PORT: String(taken), API_METRICS_PORT: '0', USAGE_TRACKING: 'false' }), logger, url), {
    message: `Port ${taken} on 127.0.0.1 is already in use; set PORT to a free port`,
  });
  await t.rejects(startApi(loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: String(taken), USAGE_TRACKING: 'false' }), logger, url), {
    message: `Port ${taken} on 127.0.0.1 is already in use; set API_METRICS_PORT to a free port`,
  });
  await t.rejects(startCollector(loadConfig({ NODE_ENV: 'test', COLLECTOR_PORT: '0', COLLECTOR_METRICS_PORT: String(taken) }), logger, url), {
    message: /set COLLECTOR_METRICS_PORT/,
  });

  const udpBlocker = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => udpBlocker.bind(0, '127.0.0.1', () => resolve()));
  t.teardown(() => udpBlocker.close());
  await t.rejects(
    startCollector(loadConfig({ NODE_ENV: 'test', COLLECTOR_PORT: String(udpBlocker.address().port), COLLECTOR_METRICS_PORT: '0' }), logger, url),
    {
      message: /UDP port \d+ on 127.0.0.1 is already in use; set COLLECTOR_PORT/,
    },
  );
  // The failed starts closed what they had opened: the collector's pool and its fold thread's.
  const left = async () =>
    Number(
      (
        await db.raw(
          `select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name in ('keyusage-collector', 'keyusage-fold')`,
        )
      ).rows[0].n,
    );
  await waitFor('the failed starts’ connections to close', async () => ((await left()) === 0 ? true : undefined), 3_000);
});

t.test('a collector that fails to start leaves no flusher running', async (t) => {
  const { db, url } = await freshDatabase(t);
  const blocker = http.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => blocker.close());
  // A store whose every fold reports rows left: a running flusher folds again at each interval.
  const real = createUsageStore(db, { logMinKeys: 1 });
  let folds = 0;
  const store = { ...real, fold: async () => ({ ...(await real.fold()), logRowsLeft: (folds += 1) }) };
  const config = loadConfig({
    NODE_ENV: 'test',
    COLLECTOR_PORT: '0',
    COLLECTOR_METRICS_PORT: String((blocker.address() as { port: number }).port),
    COLLECTOR_FLUSH_INTERVAL_MS: '20',
  });
  await t.rejects(startCollector(config, logger, url, { store }), { message: /set COLLECTOR_METRICS_PORT/ });
  const foldsAtFailure = folds;
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(folds, foldsAtFailure, 'no fold after the failed start');
});

t.test('the collector binds IPv6 loopback and reports its receive buffer', async (t) => {
  const { url } = await freshDatabase(t);
  const collector = await startCollector(
    loadConfig({ NODE_ENV: 'test', COLLECTOR_HOST: '::1', COLLECTOR_PORT: '0', COLLECTOR_METRICS_PORT: '0' }),
    logger,
    url,
  );
  t.equal(collector.receiver.host, '::1');
  t.ok(collector.receiver.recvBufferBytes > 0);
  const socket = dgram.createSocket('udp6');
  await new Promise<void>((resolve) => socket.send('other.metric:1|c', collector.receiver.port, '::1', () => resolve()));
  socket.close();
  for (let i = 0; i < 100 && collector.ingest.otherLines === 0; i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
  t.equal(collector.ingest.otherLines, 1);
  t.equal(await collector.stop(), true);
});

// The processes of a Procfile get SIGTERM together: the API's last drain is sent after the
// collector's stop has begun, and was lost when the socket closed at once.
t.test('a stopping collector reads its socket until it is quiet: a use sent after stop began is written', async (t) => {
  const { db, url } = await freshDatabase(t);
  const orgId = await createOrg(db, 'acme');
  const [keyId] = await insertKeys(db, orgId, 1, 'k');
  const collector = await startTestCollector(t, url, { COLLECTOR_STOP_QUIET_MS: '1000' });
  const stopping = collector.stop();
  await sleep(100);
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 3 })]);
  t.equal(await stopping, true);
  t.equal(collector.ingest.usesReceived, 3);
  t.equal((await db('api_key_usage').where({ key_id: keyId }).first())?.request_count, 3, 'written by the final flush');
});

t.test('untilQuiet: returns after one quiet period, or after maxMs of busy ones', async (t) => {
  let reads = 0;
  await untilQuiet(() => (reads += 1) && 7, 1);
  t.equal(reads, 2, 'no datagram in the first period: done');
  let busy = 0;
  await untilQuiet(() => (busy += 1), 1, 5);
  t.equal(busy, 6, 'a datagram in every period: done after five of 1 ms');
  let never = 0;
  await untilQuiet(() => (never += 1), 0);
  t.equal(never, 1, 'COLLECTOR_STOP_QUIET_MS=0: no wait');
});

// A process under `npm start` whose launcher dies while it stops (killed during its wait for the
// children): the end of stdin must not count as a second signal, which exits at once, and cut the
// collector's final flush short.
t.test("the launcher's end during a stop already under way lets the stop finish", async (t) => {
  const script = `
    const { onShutdownSignal, stopWhenSupervisorGone } = require(${JSON.stringify(require.resolve('../shared/process'))});
    const { createLogger } = require(${JSON.stringify(require.resolve('../shared/logger'))});
    const stop = () => new Promise((resolve) => setTimeout(() => { console.log('final flush done'); resolve(); }, 500));
    stopWhenSupervisorGone(true, onShutdownSignal(createLogger({ level: 'info', name: 'child' }), stop));
    console.log('ready');
    setInterval(() => {}, 1000);`;
  // In this process (no tsx CLI in between to relay signals and stdin): TypeScript through tsx's hook.
  const child = spawn(process.execPath, ['--require', 'tsx/cjs', '-e', script], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' },
  });
  t.teardown(() => void child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await waitFor('the child to be ready', () => (output.includes('ready') ? true : undefined));
  child.kill('SIGTERM');
  await waitFor('the stop to begin', () => (output.includes('"signal":"SIGTERM"') ? true : undefined));
  child.stdin.end(); // the launcher, killed meanwhile
  t.equal(await exited, 0, 'the stop ran to its end');
  t.match(output, /final flush done/);
});
