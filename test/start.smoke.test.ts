import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freeTcpPort, freeUdpPort } from '../scripts/lib/freePort';
import t, { type Test } from 'tap';
import { findApiKeyById } from '../api/keys/apiKeys.repository';
import { parsePresentedKey, secretMatches } from '../api/keys/keyMaterial';
import { commandSettings, demoBanner, ensureDemoOrg } from '../scripts/lib/firstRunDemo';
import { portProblems } from '../scripts/lib/ports';
import { parseProcfile, startOrder } from '../scripts/lib/procfile';
import { loadConfig } from '../shared/config';
import { createDb } from '../shared/db';
import { freshDatabase } from './helpers/database';
import { sleep, waitFor } from '../harness/wait';
import { processAlive } from '../scripts/lib/processAlive';

// The newcomer's path, run for real: `npm start` from the checkout with no DATABASE_URL (so the
// embedded PostgreSQL, in a temporary folder), the printed demo key, its use visible in the usage
// endpoint within the staleness bound, demo-traffic (scripts/demoTraffic.ts) counted exactly, then
// SIGTERM and nothing left. Also: a taken port, a process that dies, an external DATABASE_URL.

const ROOT = path.resolve(__dirname, '..');
const KEY_PATTERN = /ku_[0-9a-f]{32}_[0-9A-Za-z]{49}/;
const STALENESS_BOUND_MS = 2000;
// How long a start may take (a first build, initdb, 27 migrations, two processes): at a load
// average of 8–14 on these 2 cores a start took over 60 s twice, and passed alone.
const STARTED_WITHIN_MS = 120_000;
// The file's starts and stops, each within that bound, fit in tap's limit for the file no longer.
t.setTimeout(600_000);

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-start-'));
fs.chmodSync(scratch, 0o711); // the launcher opens only folders it creates; this one is ours
const pgDir = path.join(scratch, 'pg');
t.teardown(() => fs.rmSync(scratch, { recursive: true, force: true }));

async function freePorts() {
  const ports = new Set<number>();
  const take = async (next: () => Promise<number>) => {
    for (;;) {
      const port = await next();
      if (!ports.has(port)) return (ports.add(port), port);
    }
  };
  return {
    PORT: await take(freeTcpPort),
    API_METRICS_PORT: await take(freeTcpPort),
    EMBEDDED_PG_PORT: await take(freeTcpPort),
    COLLECTOR_PORT: await take(freeUdpPort),
    COLLECTOR_METRICS_PORT: await take(freeTcpPort),
  };
}

type Ports = Awaited<ReturnType<typeof freePorts>>;

function postmasterPid(dataDir: string): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]) || undefined;
  } catch {
    return undefined;
  }
}

function launcherEnv(ports: Ports, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  // npm start runs under tsx, whose transpiled code does not map onto tap's coverage of the same
  // files; recording it would corrupt the merged report.
  const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'info', _TAPJS_PROCESSINFO_COVERAGE_: '0' };
  delete env.DATABASE_URL;
  delete env.PROCFILE;
  Object.assign(env, { EMBEDDED_PG_DIR: pgDir }, extra);
  for (const [name, port] of Object.entries(ports)) env[name] = String(port);
  return env;
}

// `npm start` in its own process group, its output collected; a teardown that leaves nothing
// running whatever the test saw.
class Launch {
  readonly child: ChildProcess;
  output = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(tt: Test, env: NodeJS.ProcessEnv) {
    this.child = spawn('npm', ['start'], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (chunk) => (this.output += chunk));
    this.child.stderr!.on('data', (chunk) => (this.output += chunk));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve((this.exit = { code, signal }))));
    tt.teardown(() => this.forceStop());
  }

  async waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.output);
      if (match) return match;
      if (this.exit || Date.now() > deadline) {
        throw new Error(
          `${this.exit ? `npm start exited (${JSON.stringify(this.exit)})` : `timed out after ${timeoutMs} ms`} before printing ${pattern}; output:\n${this.output.slice(-4000)}`,
        );
      }
      await sleep(50);
    }
  }

  async waitForExit(timeoutMs: number) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs)));
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  // The pids the launcher printed: the processes it started and the postmaster.
  printedPids(): number[] {
    return [...this.output.matchAll(/\((?:postmaster )?pid (\d+)\)/g)].map((match) => Number(match[1]));
  }

  // Everything from this run still alive: npm's process group, the printed pids, anything
  // naming the scratch folder (postgres -D <dir>).
  leftovers(): string[] {
    const pids = new Set(this.printedPids());
    const ps = spawnSync('ps', ['-eo', 'pid=,pgid=,stat=,args='], { encoding: 'utf8' }).stdout;
    return ps
      .split('\n')
      .map((line) => line.trim())
      .filter(Boolean)
      .filter((line) => {
        const [pid, pgid, stat] = line.split(/\s+/);
        if (stat.startsWith('Z')) return false;
        return Number(pgid) === this.child.pid || pids.has(Number(pid)) || line.includes(scratch);
      });
  }

  // npm may be gone while its process group (the launcher) lives on, so signal the group: the
  // launcher stops its processes and PostgreSQL in order; SIGKILL whatever is still there later.
  async forceStop() {
    const signalAll = (signal: NodeJS.Signals) => {
      for (const pid of [-this.child.pid!, ...this.printedPids()]) {
        try {
          process.kill(pid, signal);
        } catch {
          // already gone
        }
      }
    };
    if (this.leftovers().length === 0) return;
    try {
      process.kill(-this.child.pid!, 'SIGTERM');
    } catch {
      // already gone
    }
    for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(200)) {
      if (this.leftovers().length === 0) return;
    }
    signalAll('SIGKILL');
  }
}

// Who the API and the collector are connected as, asked as the superuser of the embedded cluster.
// A query on the launched system's embedded database, as its owner.
async function asOwner<T>(ports: Ports, query: (owner: ReturnType<typeof createDb>) => Promise<T>): Promise<T> {
  const password = fs.readFileSync(`${pgDir}.password`, 'utf8').trim();
  const owner = createDb(`postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${ports.EMBEDDED_PG_PORT}/postgres`, { poolMax: 1 });
  try {
    return await query(owner);
  } finally {
    await owner.destroy();
  }
}

const connectedRoles = (ports: Ports): Promise<string[]> =>
  asOwner(ports, async (owner) => {
    const { rows } = await owner.raw(`select distinct usename from pg_stat_activity where application_name in ('keyusage-api', 'keyusage-collector')`);
    return rows.map((row: { usename: string }) => row.usename);
  });

async function api(port: number, pathname: string, key?: string) {
  const response = await fetch(`http://127.0.0.1:${port}${pathname}`, {
    headers: key ? { authorization: `Bearer ${key}` } : {},
    signal: AbortSignal.timeout(5000),
  });
  return { status: response.status, body: (await response.json()) as any };
}

function bindable(port: number, protocol: 'tcp' | 'udp'): Promise<boolean> {
  return new Promise((resolve) => {
    if (protocol === 'udp') {
      const socket = dgram.createSocket('udp4');
      socket.once('error', () => resolve(false));
      socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)));
    } else {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    }
  });
}

async function assertNothingLeft(tt: Test, launch: Launch, ports: Ports) {
  // The processes the launcher stopped were its children and are gone with it; give the kernel
  // a moment to reap anything that was reparented.
  let left = launch.leftovers();
  for (let i = 0; i < 20 && left.length > 0; i += 1) {
    await sleep(100);
    left = launch.leftovers();
  }
  tt.same(left, [], 'no npm, launcher, api, collector or postgres process from this run is left');
  tt.notOk(fs.existsSync(path.join(pgDir, 'postmaster.pid')), 'PostgreSQL was shut down (no postmaster.pid)');
  for (const [name, port] of Object.entries(ports)) {
    tt.ok(await bindable(port, name === 'COLLECTOR_PORT' ? 'udp' : 'tcp'), `${name} ${port} is free again`);
  }
}

// --- The launcher's pure parts, in process ------------------------------------------------

t.test('parseProcfile reads `name: command` lines and rejects anything else', async (t) => {
  t.same(parseProcfile('web: node --import tsx api/main.ts\ncollector: node --import tsx collector/main.ts\n'), [
    { name: 'web', command: 'node --import tsx api/main.ts' },
    { name: 'collector', command: 'node --import tsx collector/main.ts' },
  ]);
  t.same(
    parseProcfile('# comment\r\n\r\n  \nweb:   node a.js  \r\nworker_2: node "b c.js" $PORT\n'),
    [
      { name: 'web', command: 'node a.js' },
      { name: 'worker_2', command: 'node "b c.js" $PORT' },
    ],
    'comments, blank lines, CRLF and surrounding spaces',
  );
  const invalid: Array<[string, RegExp]> = [
    ['web node a.js', /line 1 is not "name: command"/],
    ['web:', /line 1 is not "name: command"/],
    ['web:   ', /line 1 is not "name: command"/],
    ['we b: node a.js', /line 1/],
    [': node a.js', /line 1/],
    ['web: a\nweb: b', /names "web" twice/],
  ];
  for (const [text, message] of invalid) t.throws(() => parseProcfile(text), { message }, JSON.stringify(text));
});

t.test('startOrder: collector first, web last, both required', async (t) => {
  const entries = parseProcfile('web: w\nclock: c\ncollector: k\n');
  t.same(
    startOrder(entries).map((entry) => entry.name),
    ['collector', 'clock', 'web'],
  );
  t.throws(() => startOrder(parseProcfile('web: w\n')), { message: 'The Procfile has no "collector:" line' });
  t.throws(() => startOrder(parseProcfile('collector: k\n')), { message: 'The Procfile has no "web:" line' });
});

t.test('portProblems names each taken, zero or clashing port with its variable', async (t) => {
  const tcp = net.createServer();
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  t.teardown(() => {
    tcp.close();
    udp.close();
  });
  const tcpPort = (tcp.address() as net.AddressInfo).port;
  const udpPort = udp.address().port;
  const free = await freeTcpPort();

  t.same(await portProblems([{ variable: 'PORT', host: '127.0.0.1', port: free, protocol: 'tcp' }]), [], 'a free port');
  const taken = await portProblems([
    { variable: 'PORT', host: '127.0.0.1', port: tcpPort, protocol: 'tcp' },
    { variable: 'COLLECTOR_PORT', host: '127.0.0.1', port: udpPort, protocol: 'udp' },
    // The next port after the taken TCP one is npm start's own: the example must not give it.
    { variable: 'API_METRICS_PORT', host: '127.0.0.1', port: tcpPort + 1, protocol: 'tcp' },
  ]);
  const example = (variable: string, port: number, protocol: string) =>
    new RegExp(`^Port ${port} \\(${protocol} on 127\\.0\\.0\\.1\\) is already in use; set ${variable} to a free port, e\\.g\\. ${variable}=(\\d+) npm start$`);
  const spareIn = (pattern: RegExp) => Number(taken.map((problem) => pattern.exec(problem)?.[1]).find(Boolean));
  const tcpSpare = spareIn(example('PORT', tcpPort, 'TCP'));
  const udpSpare = spareIn(example('COLLECTOR_PORT', udpPort, 'UDP'));
  t.ok(tcpSpare > tcpPort + 1 && udpSpare > udpPort, 'each taken port named with its variable, and an example: a later port, not one npm start itself needs');
  t.same(await portProblems([{ variable: 'PORT', host: '127.0.0.1', port: tcpSpare, protocol: 'tcp' }]), [], 'and the example is free');
  t.match(await portProblems([{ variable: 'PORT', host: '192.0.2.1', port: free, protocol: 'tcp' }]), [/cannot be bound \(EADDRNOTAVAIL\); set PORT/]);
  t.same(
    await portProblems([
      { variable: 'PORT', host: '127.0.0.1', port: 0, protocol: 'tcp' },
      { variable: 'COLLECTOR_METRICS_PORT', host: '127.0.0.1', port: free, protocol: 'tcp' },
      { variable: 'EMBEDDED_PG_PORT', host: '127.0.0.1', port: free, protocol: 'tcp' },
    ]),
    [
      'PORT is 0: npm start needs a fixed port, so set PORT to a free port',
      `COLLECTOR_METRICS_PORT and EMBEDDED_PG_PORT are both ${free}; set EMBEDDED_PG_PORT to another port`,
    ],
    'configuration problems are reported without probing',
  );
});

t.test('ensureDemoOrg creates the demo org and an every-scope key once, and finds it afterwards', async (t) => {
  const { db } = await freshDatabase(t);
  const pepper = 'p'.repeat(32);
  const [first, concurrent] = await Promise.all([ensureDemoOrg(db, { pepper }), ensureDemoOrg(db, { pepper })]);
  const created = first.created ? first : concurrent;
  const found = first.created ? concurrent : first;
  t.ok(created.created && !found.created, 'two launchers at once make one demo org');
  t.equal(found.org.id, created.org.id);
  t.equal((await db('organizations').where({ name: 'demo' }).count<{ count: number }[]>({ count: '*' }))[0].count, 1);
  if (!created.created) return;
  const presented = parsePresentedKey(created.key.plaintext)!;
  const stored = await findApiKeyById(db, created.key.id);
  t.equal(presented.keyId, created.key.id);
  t.same(stored?.scopes, ['keys:read', 'keys:write'], 'the key has every scope');
  t.ok(stored && secretMatches(presented.secret, stored.secretHash, pepper), 'only the hash is stored, and it matches');

  const later = await ensureDemoOrg(db, { pepper });
  t.same(later, { created: false, org: created.org }, 'a later run reuses the org and has no key to show');
  t.equal((await db('api_keys').where({ org_id: created.org.id }).count<{ count: number }[]>({ count: '*' }))[0].count, 1);

  const context = {
    baseUrl: 'http://127.0.0.1:3000',
    dataLocation: '.data/postgres',
    resetHint: 'To reset: rm -rf .data',
    settings: { prefix: '', secrets: [] },
  };
  const firstBanner = demoBanner(created, context);
  t.match(firstBanner, `curl -H "Authorization: Bearer ${created.key.plaintext}" http://127.0.0.1:3000/api/whoami`);
  t.match(firstBanner, `curl -H "Authorization: Bearer ${created.key.plaintext}" http://127.0.0.1:3000/api/orgs/${created.org.id}/api-keys/usage`);
  t.match(firstBanner, 'Dashboard: open http://127.0.0.1:3000/ in a browser');
  t.match(firstBanner, 'To reset: rm -rf .data');
  const laterBanner = demoBanner(later, { ...context, resetHint: undefined });
  t.notMatch(laterBanner, KEY_PATTERN, 'the later banner holds no key');
  t.match(laterBanner, `npm run cli -- key create ${created.org.id} --name demo --scopes keys:read,keys:write`);
  t.match(laterBanner, 'Bearer <your-key>');
  t.notMatch(laterBanner, 'To reset');

  const settings = commandSettings(loadConfig({ NODE_ENV: 'development', PORT: '3100', EMBEDDED_PG_DIR: "/tmp/it's here", EMBEDDED_PG_PORT: '54329' }), {
    KEY_PEPPER: 'x',
  });
  t.same(
    settings,
    { prefix: `PORT=3100 EMBEDDED_PG_DIR='/tmp/it'\\''s here' `, secrets: ['KEY_PEPPER'] },
    'only non-default settings, shell-quoted; secrets by name only',
  );
  const pasted = demoBanner(created, { ...context, settings });
  t.match(pasted, `\n    PORT=3100 EMBEDDED_PG_DIR='/tmp/it'\\''s here' npm run demo-traffic\n`);
  t.match(pasted, 'export the same KEY_PEPPER as this one');
  t.same(commandSettings(loadConfig({ NODE_ENV: 'development' }), {}), { prefix: '', secrets: [] }, 'defaults need no prefix');
  t.same(
    commandSettings(loadConfig({ NODE_ENV: 'development' }), { KEY_PEPPER_PREVIOUS: 'x', KEY_PEPPER_NEXT: 'y' }).secrets,
    ['KEY_PEPPER_PREVIOUS', 'KEY_PEPPER_NEXT'],
    "a pepper rotation's other peppers are named too: without them the CLI cannot verify every key",
  );
});

// --- The whole system, as a newcomer runs it -------------------------------------------------

t.test('npm start: embedded database, demo key, one use persisted and shown, clean SIGTERM', async (t) => {
  const ports = await freePorts();
  const launch = new Launch(t, launcherEnv(ports));

  await launch.waitFor(/Stop with Ctrl-C/, STARTED_WITHIN_MS);
  const key = launch.output.match(KEY_PATTERN)?.[0];
  t.ok(key, 'the first run prints a demo key');
  t.match(launch.output, /rm -rf/, 'the banner says how to reset');
  t.match(launch.output, new RegExp(`curl -H "Authorization: Bearer ${key}" http://127\\.0\\.0\\.1:${ports.PORT}/api/whoami`), 'a copy-paste curl line');
  t.match(launch.output, /^collector \| \{/m, "the collector's lines are prefixed with its name");
  t.match(launch.output, /^web {7}\| \{/m, "the API's lines are prefixed with its name");
  t.ok(postmasterPid(pgDir), 'the embedded PostgreSQL runs from the temporary folder');
  t.same(await connectedRoles(ports), ['keyusage_app'], 'the API and the collector connect as the app role, not the superuser');

  t.equal((await api(ports.PORT, '/healthz')).status, 200, '/healthz answers');
  const whoami = await api(ports.PORT, '/api/whoami', key);
  t.equal(whoami.status, 200, 'the printed key authenticates');
  const { orgId, keyId } = whoami.body;

  // The use must reach PostgreSQL through the API's drain, UDP and the collector's flush. Watched
  // in the database, not with the key: every request of the key is a use of its own.
  const usedAt = Date.now();
  const persisted = await asOwner(ports, (owner) =>
    waitFor('the whoami use in PostgreSQL', async () => (await owner('api_key_usage').where({ key_id: keyId }).first()) ?? undefined, 30_000, 100),
  );
  t.comment(`use persisted after ${Date.now() - usedAt} ms (documented bound ${STALENESS_BOUND_MS} ms; benchmarks measure it)`);
  t.equal(Number(persisted.request_count), 1, 'the one whoami, persisted once');
  const usage = await api(ports.PORT, `/api/orgs/${orgId}/api-keys/usage`, key);
  const row = usage.body.data?.find((entry: { id: string }) => entry.id === keyId);
  t.equal(row?.requestCount, 1, 'the usage endpoint shows it');
  t.not(row?.lastUsedAt, null, 'with when it was used');

  // The demo-traffic line exactly as printed, in a terminal that has none of npm start's settings
  // and no key: it finds the database from the data folder and mints its own key there.
  const printed = launch.output.match(/^ {4}(\S.*npm run demo-traffic)$/m)?.[1];
  t.match(
    printed,
    new RegExp(`PORT=${ports.PORT} EMBEDDED_PG_DIR=${pgDir} EMBEDDED_PG_PORT=${ports.EMBEDDED_PG_PORT} npm run demo-traffic$`),
    'the printed line carries every non-default setting',
  );
  const bareEnv = launcherEnv(ports);
  for (const name of [...Object.keys(ports), 'EMBEDDED_PG_DIR']) delete bareEnv[name];
  const traffic = spawnSync('/bin/sh', ['-c', `${printed} -- --requests 200 --seconds 15`], { cwd: ROOT, env: bareEnv, encoding: 'utf8', timeout: 40_000 });
  t.equal(traffic.status, 0, 'demo-traffic succeeds', { stdout: traffic.stdout, stderr: traffic.stderr });
  t.match(traffic.stdout, /Every count matches/, 'the usage endpoint counts exactly what demo-traffic received');
  t.match(traffic.stdout, /demo-traffic-unused +active +0 /, 'the never-used key shows no requests');
  t.notMatch(traffic.stdout, KEY_PATTERN, 'demo-traffic prints no key');
  const mintedId = /Minted a key for this run \(demo-traffic-admin, id ([0-9a-f-]{36})/.exec(traffic.stdout)?.[1];
  t.ok(mintedId, 'without DEMO_KEY it minted its own');
  t.match(
    traffic.stdout,
    new RegExp(
      `<a key: (NODE_ENV=\\S+ )?PORT=${ports.PORT} EMBEDDED_PG_DIR=${pgDir} EMBEDDED_PG_PORT=${ports.EMBEDDED_PG_PORT} npm run cli -- key create [0-9a-f-]{36} --name demo`,
    ),
    'its closing lines say how to make a key in this database and org',
  );
  const minted = await asOwner(ports, (owner) => owner('api_keys').where({ id: mintedId }).first());
  t.ok(minted?.revoked_at, 'and revoked it at the end');
  // Interrupted, as a newcomer stops it with Ctrl-C (the terminal signals its whole group).
  const interrupted = spawn('/bin/sh', ['-c', `${printed} -- --requests 2000 --seconds 30`], {
    cwd: ROOT,
    env: bareEnv,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let interruptedOut = '';
  interrupted.stdout.on('data', (chunk) => (interruptedOut += chunk));
  const interruptedId = await waitFor(
    'the interrupted run to mint its key',
    () => /Minted a key for this run \(demo-traffic-admin, id ([0-9a-f-]{36})/.exec(interruptedOut)?.[1],
    30_000,
    50,
  );
  process.kill(-interrupted.pid!, 'SIGINT');
  await once(interrupted, 'exit');
  const left = await asOwner(ports, (owner) => owner('api_keys').where({ id: interruptedId }).first());
  t.ok(left?.revoked_at, 'an interrupted run revokes its key too');
  // With the printed key instead, as before: DEMO_KEY wins over minting.
  const withKey = spawnSync('/bin/sh', ['-c', `DEMO_KEY=${key} ${printed} -- --requests 60 --seconds 10`], {
    cwd: ROOT,
    env: bareEnv,
    encoding: 'utf8',
    timeout: 40_000,
  });
  t.equal(withKey.status, 0, 'demo-traffic with DEMO_KEY succeeds', { stdout: withKey.stdout, stderr: withKey.stderr });
  t.notMatch(withKey.stdout, /Minted/, 'and mints nothing');

  process.kill(launch.child.pid!, 'SIGTERM');
  const exit = await launch.waitForExit(45_000);
  // npm forwards SIGTERM to its script's shell; unless the script `exec`s the launcher, the shell
  // dies at once, npm re-raises SIGTERM on itself, and the launcher never hears of it.
  t.same(exit, { code: 0, signal: null }, 'npm start exits 0 after SIGTERM (package.json "start" must exec the launcher)');
  const order = ['stopping web', 'stopping collector', 'stopping PostgreSQL'].map((line) => launch.output.indexOf(line));
  t.ok(
    order.every((index, i) => index >= 0 && (i === 0 || index > order[i - 1])),
    'stops the API, then the collector, then PostgreSQL',
  );
  const banner = /\nDemo organization[\s\S]*?Stop with Ctrl-C/.exec(launch.output)![0];
  t.ok(banner.includes(key!) && !launch.output.replace(banner, '').includes(key!), 'the key appears in the banner and nowhere else');
  await assertNothingLeft(t, launch, ports);

  // A later run reuses the demo org and never prints a key again.
  const again = new Launch(t, launcherEnv(ports, { PORT: String(await freeTcpPort()) }));
  await again.waitFor(/Stop with Ctrl-C/, STARTED_WITHIN_MS);
  t.notMatch(again.output, KEY_PATTERN, 'a later run prints no key');
  t.match(again.output, new RegExp(`Demo organization "demo": ${orgId}`), 'a later run names the existing demo org');
  t.match(again.output, new RegExp(`npm run cli -- key create ${orgId} --name demo`), 'and says how to mint a fresh key');
  process.kill(again.child.pid!, 'SIGTERM');
  t.same(await again.waitForExit(45_000), { code: 0, signal: null });
});

t.test('one launcher per data folder; the CLI finds its database from the folder; a database that dies stops the launcher', async (t) => {
  const folder = path.join(scratch, 'pg-owned');
  const ports = await freePorts();
  const first = new Launch(t, launcherEnv(ports, { EMBEDDED_PG_DIR: folder }));
  await first.waitFor(/Stop with Ctrl-C/, STARTED_WITHIN_MS);
  const key = first.output.match(KEY_PATTERN)![0];
  const holder = Number(fs.readFileSync(`${folder}.lock`, 'utf8'));
  const postgres = postmasterPid(folder);

  // Other ports, the same folder and EMBEDDED_PG_PORT.
  const otherPorts = { ...(await freePorts()), EMBEDDED_PG_PORT: ports.EMBEDDED_PG_PORT };
  const second = new Launch(t, launcherEnv(otherPorts, { EMBEDDED_PG_DIR: folder }));
  const exit = await second.waitForExit(30_000);
  t.ok(exit && exit.code !== 0, `the second npm start exits non-zero (${JSON.stringify(exit)})`);
  t.match(second.output, `${folder} is in use by another npm start (pid ${holder})`, 'it names the pid that holds the folder');
  t.notMatch(second.output, /stopping PostgreSQL|starting the embedded/, 'and touches no database');
  t.equal(postmasterPid(folder), postgres, "the first one's PostgreSQL runs on");
  t.equal((await api(ports.PORT, '/api/whoami', key)).status, 200, 'the first one keeps serving');
  t.equal(Number(fs.readFileSync(`${folder}.lock`, 'utf8')), holder, 'and keeps its lock');

  // A second terminal that knows only the folder: the port comes from postmaster.pid.
  const cliEnv = launcherEnv(ports, { EMBEDDED_PG_DIR: folder, EMBEDDED_PG_PORT: String(await freeTcpPort()) });
  const cli = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/cli.ts', 'org', 'list', '--json'], {
    cwd: ROOT,
    env: cliEnv,
    encoding: 'utf8',
    timeout: 30_000,
  });
  t.equal(cli.status, 0, 'npm run cli reaches the running database', { stderr: cli.stderr });
  t.match(JSON.parse(cli.stdout), [{ name: 'demo' }]);
  t.equal(postmasterPid(folder), postgres, 'and leaves it running');

  process.kill(postgres!, 'SIGKILL');
  const died = await first.waitForExit(30_000);
  t.ok(died && died.code !== 0, `a launcher whose database dies exits non-zero (${JSON.stringify(died)})`);
  t.match(first.output, `PostgreSQL (postmaster pid ${postgres}) stopped underneath the launcher`, 'and says so');
  t.match(first.output, /stopping web[\s\S]*stopping collector/, 'after stopping its processes');
  t.notOk(fs.existsSync(`${folder}.lock`), 'its lock is released');
  for (let i = 0; i < 50 && first.leftovers().length > 0; i += 1) await sleep(100);
  t.same(first.leftovers(), [], 'nothing is left running');
});

t.test('a taken PORT stops npm start before anything starts, naming the port and PORT', async (t) => {
  const ports = await freePorts();
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(ports.PORT, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const emptyDir = path.join(scratch, 'never-created');

  const launch = new Launch(t, { ...launcherEnv(ports), EMBEDDED_PG_DIR: emptyDir });
  const exit = await launch.waitForExit(30_000);
  t.ok(exit && exit.code !== 0, `npm start exits non-zero (${JSON.stringify(exit)})`);
  t.match(launch.output, new RegExp(`Port ${ports.PORT} .*already in use; set PORT to a free port`), 'the message names the port and PORT');
  t.notOk(fs.existsSync(emptyDir), 'no database was started');
  t.same(launch.leftovers(), [], 'nothing is left running');
});

t.test('a process that dies stops the others and the database, and fails the launcher', async (t) => {
  const ports = await freePorts();
  const stubs = path.join(scratch, 'stubs');
  fs.mkdirSync(stubs, { recursive: true });
  // A collector that is ready (its metrics port answers) and an API that dies soon after start.
  fs.writeFileSync(
    path.join(stubs, 'collector.js'),
    `require('node:http').createServer((req, res) => res.end('ok')).listen(Number(process.env.COLLECTOR_METRICS_PORT), '127.0.0.1');
process.on('SIGTERM', () => { console.log('stub collector got SIGTERM'); process.exit(0); });`,
  );
  fs.writeFileSync(path.join(stubs, 'web.js'), `console.log('stub web exiting'); setTimeout(() => process.exit(3), 200);`);
  const procfile = path.join(stubs, 'Procfile');
  fs.writeFileSync(procfile, `# stand-ins\nweb: node ${path.join(stubs, 'web.js')}\ncollector: node ${path.join(stubs, 'collector.js')}\n`);

  const launch = new Launch(t, { ...launcherEnv(ports), PROCFILE: procfile });
  const exit = await launch.waitForExit(60_000);
  t.ok(exit && exit.code !== 0, `npm start exits non-zero (${JSON.stringify(exit)})`);
  t.match(launch.output, /web exited with code 3; stopping the rest/, 'says which process died and why');
  t.match(launch.output, /stub collector got SIGTERM/, 'stops the other process');
  t.match(launch.output, /stopping PostgreSQL/, 'stops the database it started');
  await assertNothingLeft(t, launch, ports);
});

t.test('with DATABASE_URL, npm start uses that database, starts none of its own and makes no demo org', async (t) => {
  const { db, url } = await freshDatabase(t);
  const ports = await freePorts();
  const neverCreated = path.join(scratch, 'not-used');
  const launch = new Launch(t, launcherEnv(ports, { DATABASE_URL: url, EMBEDDED_PG_DIR: neverCreated }));
  await launch.waitFor(/Stop with Ctrl-C/, STARTED_WITHIN_MS);
  t.notMatch(launch.output, /embedded PostgreSQL/, 'no embedded database is started');
  t.notOk(fs.existsSync(neverCreated), 'the embedded data folder is not created');
  t.match(
    launch.output,
    new RegExp(`Data lives in the database at 127\\.0\\.0\\.1:\\d+${new URL(url).pathname} \\(DATABASE_URL\\)`),
    'the banner names the database, without its password',
  );
  t.notMatch(launch.output, new RegExp(new URL(url).password), 'the password is not printed');
  t.notMatch(launch.output, /rm -rf/, 'and offers no reset that would delete it');
  t.notMatch(launch.output, KEY_PATTERN, 'no demo key is made in an external database');
  t.match(launch.output, /No demo organization is made there/);
  t.same(await db('organizations').select('id'), [], 'nor a demo org');
  t.equal((await api(ports.PORT, '/healthz')).status, 200, 'the API runs on it');
  process.kill(launch.child.pid!, 'SIGTERM');
  t.same(await launch.waitForExit(45_000), { code: 0, signal: null }, 'npm start exits 0 after SIGTERM');
  t.notMatch(launch.output, /stopping PostgreSQL/, 'and leaves the external database alone');
  t.same(launch.leftovers(), [], 'nothing is left running');
});

t.test('a launcher killed outright (SIGKILL): the API and the collector it started stop themselves', async (t) => {
  const { url } = await freshDatabase(t);
  const ports = await freePorts();
  const launch = new Launch(t, launcherEnv(ports, { DATABASE_URL: url }));
  await launch.waitFor(/Stop with Ctrl-C/, STARTED_WITHIN_MS);
  const started = launch.printedPids();
  t.equal(started.length, 2, 'web and collector were started');
  t.equal((await api(ports.PORT, '/healthz')).status, 200);
  process.kill(-launch.child.pid!, 'SIGKILL'); // npm and the launcher; the two run in groups of their own
  await launch.exited;
  await waitFor('web and collector to stop', () => (started.some(processAlive) ? undefined : true), 30_000, 100);
  t.strictSame(started.filter(processAlive), [], 'neither is left running');
  t.ok(await bindable(ports.PORT, 'tcp'), 'the API port is free again');
  t.ok(await bindable(ports.COLLECTOR_PORT, 'udp'), 'the collector port is free again');
});
