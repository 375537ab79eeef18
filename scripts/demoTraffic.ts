import http from 'node:http';
import { parseArgs } from 'node:util';
import { formatKey, parsePresentedKey } from '../api/keys/keyMaterial';
import { ConfigError, loadConfig, type Config } from '../shared/config';
import { redactKeyMaterial } from '../shared/logger';
import { within } from '../shared/within';
import { DEMO_TRAFFIC_ADMIN, mintDemoTrafficKey } from './lib/demoTrafficKey';
import { commandSettings } from './lib/firstRunDemo';

// `npm run demo-traffic`: bounded traffic against the system `npm start` runs, so that the usage
// endpoint has something to show in every field. With the demo key (DEMO_KEY or --key) it creates
// a few keys named demo-traffic-*, each playing one part, sends requests from them, waits for the
// collector to flush, and prints what GET /api/orgs/:id/api-keys/usage says next to what this
// script saw. Only http://127.0.0.1:$PORT is ever contacted; no key is printed. Without a key it
// mints a short-lived one in the demo organization of the `npm start` that owns the embedded data
// folder (scripts/lib/demoTrafficKey.ts).

const MAX_REQUESTS = 2000;
const MAX_SECONDS = 30;
const CONCURRENCY = 8;
const EXPIRES_AFTER_MS = 2000;
const SETTLE_MS = 2000;
const SETTLE_RETRY_MS = 3000;
// A second client network on this machine: all of 127.0.0.0/8 is loopback on Linux. Not 127.0.0.2:
// a key's networks are /24s, and 127.0.0.2 shares 127.0.0.1's.
const SECOND_ADDRESS = '127.0.1.1';
const NEW_IP_REQUESTS = 3;
// The API throttles failed authentications (AUTH_THROTTLE_MAX_FAILURES_PER_KEY, 20, and _PER_IP,
// 100, a minute by default): past them it answers 429, and past the per-address one it refuses
// every key from this address. The wrong-secret key stays well below both.
const WRONG_SECRET_ATTEMPTS = 10;

type Outcome = 'ok' | 'forbidden' | 'expired' | 'revoked' | 'bad_secret';
type Role = 'ci' | 'readonly' | 'revoked' | 'expiring' | 'wrong-secret' | 'unused';

interface DemoKey {
  role: Role;
  id: string;
  name: string;
  plaintext: string;
  seen: Record<Outcome, number>;
  /** Requests this key may still send; unlimited when undefined. */
  budget?: number;
}

interface Options {
  /** DEMO_KEY or --key; undefined to mint one. */
  key: string | undefined;
  requests: number;
  seconds: number;
}

class UsageError extends Error {}

function parseOptions(argv: string[], env: NodeJS.ProcessEnv): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { key: { type: 'string' }, requests: { type: 'string' }, seconds: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (error) {
    // parseArgs quotes the argument: a key given without --key reached the terminal and any CI log.
    throw new UsageError(redactKeyMaterial((error as Error).message));
  }
  if (values.help) throw new UsageError('');
  const key = values.key ?? (env.DEMO_KEY || undefined);
  const bounded = (raw: string | undefined, fallback: number, max: number, what: string) => {
    const value = raw === undefined ? fallback : Number(raw);
    if (!Number.isInteger(value) || value < 1 || value > max) throw new UsageError(`--${what} must be a whole number from 1 to ${max}`);
    return value;
  };
  return {
    key,
    requests: bounded(values.requests, 600, MAX_REQUESTS, 'requests'),
    seconds: bounded(values.seconds, 20, MAX_SECONDS, 'seconds'),
  };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const noOutcomes = (): Record<Outcome, number> => ({ ok: 0, forbidden: 0, expired: 0, revoked: 0, bad_secret: 0 });

// A key of the right shape and with a valid checksum, whose secret is not the key's: the server
// must look it up and count a bad_secret (a bad checksum would be refused unread, uncounted).
function wrongSecret(plaintext: string): string {
  const { keyId, secret } = parsePresentedKey(plaintext)!;
  return formatKey(keyId, secret.slice(0, -1) + (secret.endsWith('A') ? 'B' : 'A'));
}

class Client {
  requestsSent = 0;
  failures = 0;

  constructor(
    private readonly baseUrl: string,
    private readonly budget: number,
    private readonly deadline: number,
  ) {}

  get exhausted(): boolean {
    return this.requestsSent >= this.budget || Date.now() >= this.deadline;
  }

  async call(method: string, path: string, key: string, body?: unknown): Promise<{ status: number; body: any }> {
    this.requestsSent += 1;
    const response = await fetch(this.baseUrl + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: response.status, body: parsed };
  }

  /** A GET sent from another local address, so the API sees a second client network without a proxy. */
  getFrom(localAddress: string, path: string, key: string): Promise<number> {
    this.requestsSent += 1;
    const url = new URL(this.baseUrl + path);
    return new Promise((resolve, reject) => {
      const request = http.get(
        { host: url.hostname, port: url.port, path, localAddress, headers: { authorization: `Bearer ${key}` }, timeout: 5000 },
        (response) => {
          response.resume().on('end', () => resolve(response.statusCode ?? 0));
        },
      );
      request.on('timeout', () => request.destroy(new Error('timed out'))).on('error', reject);
    });
  }

  async expect(method: string, path: string, key: string, status: number, body?: unknown) {
    const response = await this.call(method, path, key, body);
    if (response.status !== status) {
      const message = response.body?.error?.message ?? `HTTP ${response.status}`;
      throw new Error(`${method} ${path} answered ${response.status}, expected ${status}: ${message}`);
    }
    return response.body;
  }
}

// What each role sends, and the outcome the API records for each answer.
function requestFor(
  key: DemoKey,
  orgId: string,
  turn: number,
): { method: string; path: string; key: string; body?: unknown; outcomeOf: (status: number) => Outcome | undefined } {
  const keys = `/api/orgs/${orgId}/api-keys`;
  const okOr = (failure: Outcome) => (status: number) => (status < 300 ? 'ok' : status === 401 ? failure : undefined);
  switch (key.role) {
    case 'ci': {
      const paths = ['/api/whoami', keys, `${keys}/usage`, `${keys}/${key.id}`];
      return { method: 'GET', path: paths[turn % paths.length], key: key.plaintext, outcomeOf: okOr('bad_secret') };
    }
    case 'readonly':
      // Every third request tries to create a key, which needs keys:write.
      return turn % 3 === 2
        ? {
            method: 'POST',
            path: keys,
            key: key.plaintext,
            body: { name: 'demo-traffic-never-created', scopes: ['keys:read'] },
            outcomeOf: (s) => (s === 403 ? 'forbidden' : undefined),
          }
        : { method: 'GET', path: keys, key: key.plaintext, outcomeOf: okOr('bad_secret') };
    case 'revoked':
      return { method: 'GET', path: '/api/whoami', key: key.plaintext, outcomeOf: okOr('revoked') };
    case 'expiring':
      return { method: 'GET', path: '/api/whoami', key: key.plaintext, outcomeOf: okOr('expired') };
    case 'wrong-secret':
      return { method: 'GET', path: '/api/whoami', key: wrongSecret(key.plaintext), outcomeOf: (s) => (s === 401 ? 'bad_secret' : undefined) };
    case 'unused':
      throw new Error('the unused key sends nothing');
  }
}

// Sends up to `count` requests from `senders`, round robin, CONCURRENCY at a time, tallying the
// outcome of every answer on the key that sent it.
async function sendTraffic(client: Client, orgId: string, senders: DemoKey[], count: number, until: number) {
  let next = 0;
  const worker = async () => {
    while (next < count && !client.exhausted && Date.now() < until) {
      const turn = next++;
      // A key whose budget is spent passes its turn to the next one that has some left.
      const sender = [...senders.slice(turn % senders.length), ...senders].find((key) => key.budget === undefined || key.budget > 0)!;
      if (sender.budget !== undefined) sender.budget -= 1;
      const request = requestFor(sender, orgId, Math.floor(turn / senders.length));
      try {
        const response = await client.call(request.method, request.path, request.key, request.body);
        const outcome = request.outcomeOf(response.status);
        if (outcome) sender.seen[outcome] += 1;
        else client.failures += 1;
      } catch {
        client.failures += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

interface UsageRow {
  id: string;
  name: string;
  scopes: string[];
  status: string;
  requestCount: number;
  failedAttempts: number;
  outcomes: Record<string, number>;
  requests: { last24h: number | string; last7d: number | string; last30d: number | string };
  lastUsedAt: string | null;
  lastUsedIp: string | null;
  recentIps: unknown[];
  dormant: boolean;
}

async function readUsage(client: Client, orgId: string, adminKey: string, wanted: Set<string>): Promise<Map<string, UsageRow>> {
  const found = new Map<string, UsageRow>();
  for (let offset = 0, page = 0; page < 20; page += 1) {
    const body = await client.expect('GET', `/api/orgs/${orgId}/api-keys/usage?limit=200&offset=${offset}`, adminKey, 200);
    for (const row of body.data as UsageRow[]) if (wanted.has(row.id)) found.set(row.id, row);
    offset += body.data.length;
    if (found.size === wanted.size || body.data.length === 0 || offset >= body.page.total) break;
  }
  return found;
}

// A use is an answer to the right secret; a wrong secret is a failed attempt, counted apart.
const matches = (key: DemoKey, row: UsageRow | undefined) =>
  row !== undefined &&
  row.requestCount === (Object.keys(key.seen) as Outcome[]).reduce((sum, outcome) => sum + (outcome === 'bad_secret' ? 0 : key.seen[outcome]), 0) &&
  row.failedAttempts === key.seen.bad_secret &&
  (Object.keys(key.seen) as Outcome[]).every((outcome) => row.outcomes[outcome] === key.seen[outcome]);

function table(rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]) : cell.padStart(widths[column]))).join('  ')).join('\n');
}

interface EventRow {
  keyId: string;
  type: string;
  occurredAt: string;
  details: Record<string, unknown>;
}

// The events the demo keys raised (first uses, the new network, the revoked key's use, the burst
// of wrong secrets), newest first, once the collector has recorded the two this demo is about.
async function showEvents(client: Client, orgId: string, adminKey: string, keys: DemoKey[]) {
  const names = new Map(keys.map((key) => [key.id, key.name]));
  const path = `/api/orgs/${orgId}/api-keys/events?limit=100`;
  let events: EventRow[];
  for (const until = Date.now() + SETTLE_RETRY_MS; ; await sleep(500)) {
    events = ((await client.expect('GET', path, adminKey, 200)).data as EventRow[]).filter((event) => names.has(event.keyId));
    const seen = new Set(events.map((event) => event.type));
    if ((seen.has('key.new_ip') && seen.has('key.revoked_used')) || Date.now() > until) break;
  }
  console.log(`Events of these keys (GET ${path.split('?')[0]}):`);
  console.log(table([['occurredAt', 'key', 'type', 'details'], ...events.map((e) => [e.occurredAt, names.get(e.keyId)!, e.type, JSON.stringify(e.details)])]));
  console.log('');
}

// The org the key administers; a clear word when nothing answers or the key will not do.
async function adminOrg(client: Client, baseUrl: string, admin: string): Promise<string> {
  let whoami: { orgId: string; scopes: string[]; name: string };
  try {
    whoami = await client.expect('GET', '/api/whoami', admin, 200);
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    if (cause === 'ECONNREFUSED') throw new UsageError(`Nothing answers on ${baseUrl}: start the system with \`npm start\` (or set PORT to its port)`);
    throw new UsageError(
      `The key was refused (${(error as Error).message}); use the key \`npm start\` printed, or mint one with \`npm run cli -- key create <orgId> --name demo --scopes keys:read,keys:write\``,
    );
  }
  for (const scope of ['keys:read', 'keys:write']) {
    if (!whoami.scopes.includes(scope)) throw new UsageError(`The key lacks the ${scope} scope; use a key with keys:read and keys:write`);
  }
  return whoami.orgId;
}

// One key per role; the expiring one expires EXPIRES_AFTER_MS from now.
async function createDemoKeys(client: Client, keysPath: string, admin: string) {
  const create = async (role: Role, scopes: string[], expiresAt?: string): Promise<DemoKey> => {
    const body = await client.expect('POST', keysPath, admin, 201, { name: `demo-traffic-${role}`, scopes, expiresAt });
    return { role, id: body.id, name: body.name, plaintext: body.key, seen: noOutcomes() };
  };
  const ci = await create('ci', ['keys:read', 'keys:write']);
  const readonly = await create('readonly', ['keys:read']);
  const revoked = await create('revoked', ['keys:read']);
  const expiresAt = Date.now() + EXPIRES_AFTER_MS;
  const expiring = await create('expiring', ['keys:read'], new Date(expiresAt).toISOString());
  const wrong = { ...(await create('wrong-secret', ['keys:read'])), budget: WRONG_SECRET_ATTEMPTS };
  const unused = await create('unused', ['keys:read']);
  return { ci, readonly, revoked, expiring, wrong, unused, expiresAt };
}

type DemoKeys = Awaited<ReturnType<typeof createDemoKeys>>;

// Phase 1 while the expiring key still works, everyone but `unused`; then one key revoked and one
// expired, the same keys again, now failing; last, the ci key from another network.
async function sendPhases(client: Client, orgId: string, keys: DemoKeys, options: Options, admin: string) {
  const { ci, readonly, revoked, expiring, wrong, expiresAt } = keys;
  const senders = [ci, readonly, revoked, expiring, wrong];
  const half = Math.max(1, Math.floor((options.requests - client.requestsSent) / 2));
  await sendTraffic(client, orgId, senders, half, expiresAt - 300);

  if (!client.exhausted) await client.expect('POST', `/api/orgs/${orgId}/api-keys/${revoked.id}/revoke`, admin, 200);
  if (Date.now() < expiresAt + 200) await sleep(expiresAt + 200 - Date.now());
  await sendTraffic(client, orgId, senders, options.requests - client.requestsSent - NEW_IP_REQUESTS, Infinity);

  // First used from 127.0.0.1 well over a flush ago, now from another network.
  for (let i = 0; i < NEW_IP_REQUESTS && !client.exhausted; i += 1) {
    const status = await client.getFrom(SECOND_ADDRESS, '/api/whoami', ci.plaintext).catch(() => 0);
    if (status === 200) ci.seen.ok += 1;
    else client.failures += 1;
  }
}

// The staleness bound is about 2 s; give it that, then a little more if the counts lag.
async function settledUsage(client: Client, orgId: string, admin: string, keys: DemoKey[]): Promise<Map<string, UsageRow>> {
  await sleep(SETTLE_MS);
  const wanted = new Set(keys.map((key) => key.id));
  let usage = await readUsage(client, orgId, admin, wanted);
  for (const retryUntil = Date.now() + SETTLE_RETRY_MS; !keys.every((key) => matches(key, usage.get(key.id))) && Date.now() < retryUntil;) {
    await sleep(500);
    usage = await readUsage(client, orgId, admin, wanted);
  }
  return usage;
}

const USAGE_HEADER = [
  'key',
  'status',
  'uses',
  'ok',
  'forbidden',
  'revoked',
  'expired',
  'bad_secret',
  'last24h',
  'lastUsedAt',
  'lastUsedIp',
  'dormant',
  'matches',
];

function usageRow(key: DemoKey, row: UsageRow | undefined): string[] {
  if (!row) return [key.name, 'missing', ...USAGE_HEADER.slice(2).map(() => '-')];
  const { outcomes } = row;
  return [
    key.name,
    row.status,
    String(row.requestCount),
    ...[outcomes.ok, outcomes.forbidden, outcomes.revoked, outcomes.expired, outcomes.bad_secret].map(String),
    String(Number(row.requests.last24h)),
    row.lastUsedAt ?? 'never',
    row.lastUsedIp ?? '-',
    String(row.dormant),
    matches(key, row) ? 'yes' : 'NO',
  ];
}

// How the closing curl lines name the key: the variable it came from, or a placeholder for one
// minted here (never shown).
async function run(options: Options & { key: string }, port: number, keyShown: string) {
  const started = Date.now();
  const baseUrl = `http://127.0.0.1:${port}`;
  const client = new Client(baseUrl, options.requests, started + options.seconds * 1000);
  const admin = options.key;
  const orgId = await adminOrg(client, baseUrl, admin);
  const keysPath = `/api/orgs/${orgId}/api-keys`;
  console.log(`Organization ${orgId}; sending at most ${options.requests} requests in at most ${options.seconds} s to ${baseUrl}`);

  const demoKeys = await createDemoKeys(client, keysPath, admin);
  await sendPhases(client, orgId, demoKeys, options, admin);
  const elapsed = ((Date.now() - started) / 1000).toFixed(1);
  console.log(
    `Sent ${client.requestsSent} requests in ${elapsed} s${client.failures > 0 ? ` (${client.failures} unexpected answers or errors)` : ''}; waiting for the collector to flush...`,
  );

  const keys = [demoKeys.ci, demoKeys.readonly, demoKeys.revoked, demoKeys.expiring, demoKeys.wrong, demoKeys.unused];
  const usage = await settledUsage(client, orgId, admin, keys);
  console.log(`\n${table([USAGE_HEADER, ...keys.map((key) => usageRow(key, usage.get(key.id)))])}\n`);
  const exact = keys.every((key) => matches(key, usage.get(key.id)));
  console.log(
    exact
      ? 'Every count matches what this script received (each answer to the right secret is one use, with its outcome; each wrong secret a failed attempt).'
      : 'Some counts do not match what this script received yet: is the collector running? (`npm start` runs it)',
  );
  await showEvents(client, orgId, admin, keys);
  console.log('The full response, with recent IPs and the 24 h / 7 d / 30 d windows:');
  console.log(`    curl -H "Authorization: Bearer ${keyShown}" "${baseUrl}${keysPath}/usage?sort=requestCount"`);
  console.log(`Dormant keys only:  curl -H "Authorization: Bearer ${keyShown}" "${baseUrl}${keysPath}/usage?dormant=true"`);
  return exact;
}

const USAGE = `Usage: npm run demo-traffic [-- --key <key> --requests N (≤ ${MAX_REQUESTS}, default 600) --seconds S (≤ ${MAX_SECONDS}, default 20)]
Without DEMO_KEY or --key, it mints a short-lived key in the demo organization of the running \`npm start\`.`;

// Options and settings, or the exit code after saying what is wrong (0 for --help).
function settings(): { options: Options; config: Config } | number {
  try {
    const options = parseOptions(process.argv.slice(2), process.env);
    // No production settings needed: it reads PORT and, to mint a key, the embedded data folder.
    const config = loadConfig({ ...process.env, NODE_ENV: process.env.NODE_ENV || 'development' });
    if (config.api.port === 0) throw new UsageError('PORT is 0; set PORT to the port `npm start` uses');
    return { options, config };
  } catch (error) {
    if (!(error instanceof UsageError || error instanceof ConfigError)) throw error;
    if (!error.message) {
      console.log(USAGE);
      return 0;
    }
    console.error(`${error.message}\n${USAGE}`);
    return 2;
  }
}

interface RunKey {
  key: string;
  /** How the closing curl lines name it. */
  shown: string;
  /** Revokes a key minted for this run; nothing for a key given. */
  release(baseUrl: string): Promise<void>;
}

// The key given, or one minted for this run and revoked by release().
async function keyFor(options: Options, config: Config): Promise<RunKey> {
  if (options.key) return { key: options.key, shown: '$DEMO_KEY', release: async () => {} };
  const minted = await mintDemoTrafficKey(config);
  if ('problem' in minted) throw new UsageError(minted.problem);
  console.log(`Minted a key for this run (${DEMO_TRAFFIC_ADMIN}, id ${minted.keyId}; not shown, revoked at the end)`);
  const release = async (baseUrl: string) => {
    const client = new Client(baseUrl, 2, Infinity);
    const { orgId } = await client.expect('GET', '/api/whoami', minted.plaintext, 200);
    await client.expect('POST', `/api/orgs/${orgId}/api-keys/${minted.keyId}/revoke`, minted.plaintext, 200);
  };
  // The command as npm start prints it: with this run's settings, a CLI pasted into another terminal
  // found the default data folder's database, not the running one.
  const create = `${commandSettings(config).prefix}npm run cli -- key create ${minted.orgId} --name demo --scopes keys:read,keys:write`;
  return { key: minted.plaintext, shown: `<a key: ${create}>`, release };
}

async function main() {
  const parsed = settings();
  if (typeof parsed === 'number') process.exit(parsed);
  const { options, config } = parsed;
  // The minted key is revoked however the run ends: interrupted (Ctrl-C, also while it is being
  // minted) or out of time, each run left an active, never-expiring keys:write key in the demo org.
  const runKey = keyFor(options, config);
  let released: Promise<void> | undefined;
  const release = () =>
    (released ??= runKey.then(
      (minted) =>
        minted
          .release(`http://127.0.0.1:${config.api.port}`)
          .catch((error: Error) => console.error(`demo-traffic: the minted key could not be revoked: ${error.message}`)),
      () => {}, // none was minted
    ));
  const stop = (code: number, why: string) => {
    console.error(why);
    void within(release(), RELEASE_DEADLINE_MS).then(() => process.exit(code));
  };
  process.once('SIGINT', () => stop(130, 'demo-traffic: interrupted'));
  process.once('SIGTERM', () => stop(143, 'demo-traffic: stopped'));
  // A hard stop, whatever the server does.
  setTimeout(() => stop(1, 'demo-traffic: giving up after the time limit'), (options.seconds + 15) * 1000).unref();
  let code = 1;
  try {
    const { key, shown } = await runKey;
    code = (await run({ ...options, key }, config.api.port, shown)) ? 0 : 1;
  } catch (error) {
    console.error(error instanceof UsageError ? error.message : `demo-traffic failed: ${(error as Error).message}`);
  }
  await release();
  process.exit(code);
}

// How long a stop waits for the minted key's revocation (a server that stopped answering).
const RELEASE_DEADLINE_MS = 5_000;

if (require.main === module) void main();
