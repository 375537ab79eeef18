import { isIP } from 'node:net';
import { z } from 'zod';
import { BASELINE_DAYS } from './keyEvents';
import { ipv4OfMapped, isLoopbackAddress, isWildcardAddress } from './loopback';

// One config for every process (api, collector, cli, launcher), read once from the environment.
// Each variable is validated on its own so a bad value fails fast with the variable's name.

// Whole decimal numbers only: z.coerce would read ' ' as 0 and accept 0x10 or 1e3.
const wholeNumber = (min: number, max: number, whyMax?: string) =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(
      z
        .number()
        .min(min, `must be at least ${min}`)
        .max(max, `must be at most ${max}${whyMax ? ` (${whyMax})` : ''}`),
    );
const port = wholeNumber(1, 65535);
const portOrZero = wholeNumber(0, 65535);
const positiveInt = (max = Number.MAX_SAFE_INTEGER) => wholeNumber(1, max);
const booleanFlag = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');
// A host name (letters, digits, '-' and '_', in dot-separated labels) or an IP address, IPv6 without
// brackets as listen() and send() take it. A stray space from an env file, or a typo, failed only
// later: as ENOTFOUND, naming no variable, or on COLLECTOR_HOST as a demand for
// USAGE_SIGNING_SECRET ('127.0.0.1 ' is no loopback address). A name whose last label is all digits
// is a mistyped IPv4 address: '10.0.0.256', or '127.1', which the resolver reads as 127.0.0.1.
const HOST_NAME = /^(?=.{1,253}\.?$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?$/i;
const isHostOrIp = (value: string) => isIP(value) !== 0 || (HOST_NAME.test(value) && !/(?:^|\.)\d+\.?$/.test(value));
// A value taken as written, where whitespace at either end (a stray space from an env file, a
// secret file's newline) is never meant and makes it another one. `why` adds what that would do.
const trimmedText = (why = '') => z.string().refine((value) => value.trim() === value, { message: `must not begin or end with whitespace${why}`, abort: true });
const host = trimmedText().refine(isHostOrIp, 'must be a host name or an IP address (IPv6 without brackets)');
// A comma-separated list of whole numbers, e.g. "7,1", sorted descending and deduplicated.
const dayList = z
  .string()
  .regex(/^\s*\d+(\s*,\s*\d+)*\s*$/, 'must be comma-separated whole numbers')
  .transform((value) => [...new Set(value.split(',').map((part) => Number(part.trim())))].sort((a, b) => b - a))
  .pipe(z.array(z.number().min(1, 'each must be at least 1').max(365, 'each must be at most 365')));

// `host:port` of a UDP upstream; an IPv6 address goes in brackets (`[::1]:8125`), as in a URL.
const hostPort = z.string().transform((value, ctx) => {
  const match = /^(?:\[([^\]]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(value);
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  if (match?.[1] !== undefined && isIP(match[1]) !== 6) {
    ctx.addIssue({ code: 'custom', message: 'an address in brackets must be IPv6' });
    return z.NEVER;
  }
  if (host === undefined || !isHostOrIp(host) || !(port >= 1 && port <= 65535)) {
    ctx.addIssue({ code: 'custom', message: 'must be host:port (a name or an IPv4 address, or [IPv6]:port), port 1-65535' });
    return z.NEVER;
  }
  return { host, port };
});

const PROXY_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal']);

// Express compiles the list with proxy-addr, which refuses a prefix of 0 and an IPv4 netmask that
// is all zeros or not a run of ones from the left (255.0.255.0): the API died at start with
// "invalid range on address", naming no variable. Its rule is repeated here, not its compile
// called: proxy-addr is Express's dependency, not this package's.
function isProxyEntry(entry: string): boolean {
  if (PROXY_NAMES.has(entry)) return true;
  const [address, prefix, ...rest] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  if (/^\d+$/.test(prefix)) return Number(prefix) >= 1 && Number(prefix) <= (family === 4 ? 32 : 128);
  return family === 4 && isIP(prefix) === 4 && isContiguousNetmask(prefix);
}

const isContiguousNetmask = (mask: string) => {
  const bits = mask.split('.').reduce((value, octet) => value * 256 + Number(octet), 0);
  return /^1+0*$/.test(bits.toString(2).padStart(32, '0'));
};

// Express's `trust proxy` accepts a boolean, a hop count, or a list of addresses/subnets. An empty
// entry (',,', a trailing comma, a blank value) was dropped, and ' ' trusted no proxy, silently; a
// hop count beyond any real chain of proxies (99999999999999999999) trusted every address a client
// put in X-Forwarded-For, as `true` does.
const MAX_PROXY_HOPS = 100;
const trustProxy = z
  .string()
  .min(1)
  .transform((value, ctx): boolean | number | string[] => {
    if (value === 'false') return false;
    if (value === 'true') return true;
    if (/^\d+$/.test(value)) {
      if (Number(value) <= MAX_PROXY_HOPS) return Number(value);
      ctx.addIssue({ code: 'custom', message: `a hop count must be at most ${MAX_PROXY_HOPS} (more trusts any address a client puts in X-Forwarded-For)` });
      return z.NEVER;
    }
    const entries = value.split(',').map((part) => part.trim());
    if (entries.includes('')) {
      ctx.addIssue({ code: 'custom', message: 'has an empty entry (a stray comma, or nothing but whitespace)' });
      return z.NEVER;
    }
    const bad = entries.find((entry) => !isProxyEntry(entry));
    if (bad !== undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `"${bad}" is not an IP, a CIDR (a prefix of 1-32, 1-128 for IPv6, or a netmask of contiguous ones such as 255.255.0.0), loopback, linklocal or uniquelocal`,
      });
      return z.NEVER;
    }
    return entries;
  });

// A secret of at least 32 characters other than whitespace: 40 spaces passed a plain length check.
// Whitespace is not refused, only not counted: KEY_PEPPER may carry a secret file's newline (see
// previousPeppers). The previous ones keep the plain check, so a weak secret can be rotated away.
const MIN_SECRET_CHARACTERS = 32;
const secret = z
  .string()
  .refine((value) => value.replace(/\s/g, '').length >= MIN_SECRET_CHARACTERS, `must be at least ${MIN_SECRET_CHARACTERS} characters, whitespace not counted`);
// The API signs each datagram with its signing secret and the collector checks it with its own: a
// secret file's newline on one side alone made every datagram a bad signature, every use dropped,
// the collector healthy. So a signing secret is refused with whitespace at either end (trimmed,
// it would be another secret than the one an older process holds). A pepper keeps it: it hashes
// every stored key, and a mismatch shows, as 401s and as webhook secrets no collector can open.
const SAME_BYTES = ' (a trailing newline from a secret file?): the API and the collector must hold the same bytes';

// DATABASE_URL is read here as pg reads it (pg-connection-string): with the URL class, or, for a
// socket folder (postgres://user:pw@/db?host=/run/postgresql, which the URL class refuses), with
// a placeholder host. Only a postgres:// prefix was checked: a port out of range loaded and failed
// at start with a bare "Invalid URL" naming no variable, a trailing space became part of the
// database's name, and a URL without a host loaded. The messages never quote the value: it may
// hold a password.
const validPort = (text: string) => /^\d{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= 65535;
function databaseUrlProblem(value: string): string | undefined {
  const scheme = /^postgres(?:ql)?:\/\//.exec(value)?.[0];
  if (scheme === undefined) return 'must be a postgres:// URL';
  if (/\s/.test(value)) return 'must not contain whitespace (percent-encode a space in a password as %20)';
  const authority = value.slice(scheme.length).split(/[/?#]/)[0];
  const port = /^(?:\[[^\]]*\]|[^:]*):(.*)$/.exec(authority.slice(authority.lastIndexOf('@') + 1))?.[1];
  if (port !== undefined && port !== '' && !validPort(port)) return 'must have a port from 1 to 65535';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    try {
      url = new URL(value.replace('@/', '@placeholder/'));
    } catch {
      return 'is not a valid URL (percent-encode any "@", ":", "/", "?" or "#" in the user name or password)';
    }
  }
  const queryPort = url.searchParams.get('port');
  // A URL without a host is pg's too: PGHOST, else localhost (postgres:///keyusage).
  if (queryPort !== null && !validPort(queryPort)) return 'must have a port (?port=) from 1 to 65535';
  return undefined;
}
const databaseUrl = z.string().superRefine((value, ctx) => {
  const problem = databaseUrlProblem(value);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
});

// Also createDb's default, for the callers (tests, benchmarks) that build no config.
export const DEFAULT_DATABASE_CONNECT_TIMEOUT_MS = 5000;

// KEY_PEPPER_PREVIOUS: comma-separated and trimmed; or a JSON array of strings taken as they are,
// for a pepper the list cannot hold (a comma in it, or whitespace at either end, such as the newline
// a secret file kept): KEY_PEPPER takes any such value, and without this it could never be rotated
// without losing its keys. The message never quotes the value.
function previousPeppers(value: string, context: z.core.$RefinementCtx<string>): string[] {
  // A comma-list pepper may begin with "[" (one from a generator with symbols): only a value
  // between brackets is read as JSON.
  const trimmed = value.trim();
  if (!(trimmed.startsWith('[') && trimmed.endsWith(']'))) {
    return value
      .split(',')
      .map((pepper) => pepper.trim())
      .filter(Boolean);
  }
  try {
    const parsed: unknown = JSON.parse(value);
    if (Array.isArray(parsed) && parsed.every((pepper) => typeof pepper === 'string')) return parsed;
  } catch {
    // Reported below, without JSON.parse's message (it quotes the text).
  }
  context.addIssue({ code: 'custom', message: 'is between "[" and "]" but is not a JSON array of strings' });
  return z.NEVER;
}

const variables = {
  // Any name (production, staging, …); only development and test relax the guards below.
  NODE_ENV: z
    .string()
    .regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be a lower-case name such as production, development or test')
    .optional(),
  DATABASE_URL: databaseUrl.optional(),
  DATABASE_POOL_MAX: positiveInt(1000).default(10),
  DATABASE_CONNECT_TIMEOUT_MS: wholeNumber(100, 120_000).default(DEFAULT_DATABASE_CONNECT_TIMEOUT_MS),
  // A statement of the API, the collector or the CLI that gets no byte from the server for this long closes
  // its connection (shared/db.ts): a network gone silent fails the flush, which is retried, instead
  // of holding it for the kernel's 15 minutes. Above the collector's lock wait, which sends nothing;
  // 0: no limit.
  DATABASE_REPLY_TIMEOUT_MS: wholeNumber(0, 86_400_000).default(300_000),
  // PostgreSQL's idle_in_transaction_session_timeout on every connection: a session whose client
  // vanished (a NAT that dropped the connection's state, so the client's close never reached the
  // server) stayed idle in its transaction holding its locks (an org's audit lock: every key change
  // of the org failed) until TCP keep-alive gave up, about 2 hours. 0 leaves the server's setting.
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: wholeNumber(0, 86_400_000).default(60_000),
  // '.data/postgres ' made a new, empty cluster beside the real one.
  EMBEDDED_PG_DIR: trimmedText().default('.data/postgres'),
  EMBEDDED_PG_PORT: port.default(54329),
  HOST: host.default('127.0.0.1'),
  PORT: portOrZero.default(3000),
  // A statement of the API running longer than this is cancelled and answered 503: one org's
  // expensive read held a pooled connection for as long as it ran. 0: the server's own limit.
  API_STATEMENT_TIMEOUT_MS: wholeNumber(0, 3_600_000).default(30_000),
  // The API's HTTP server (api/main.ts): Node's own limits let a client that sends its headers a
  // byte at a time (slowloris) hold a socket, a file descriptor, for 60 s, and one that trickles its
  // body for 300 s. The time to receive a whole request (headers and body, not the answer), its
  // headers, and how long an idle kept-alive connection stays open.
  API_REQUEST_TIMEOUT_MS: wholeNumber(100, 3_600_000).default(30_000),
  API_HEADERS_TIMEOUT_MS: wholeNumber(100, 3_600_000).default(10_000),
  API_KEEP_ALIVE_TIMEOUT_MS: wholeNumber(1, 3_600_000).default(5_000),
  // Requests of one org in progress at once in an API process; more wait their turn, and beyond
  // 4 × as many waiting are answered 429: one org's slow reads could hold every pooled connection,
  // and every other org's requests waited and failed. Unset: a quarter of DATABASE_POOL_MAX, at
  // least 1 (a list request runs its page and its count at once, on two connections).
  API_MAX_CONCURRENT_PER_ORG: positiveInt(100_000).optional(),
  // Key and webhook changes one org may make a minute in an API process (api/auth/orgWriteBudget.ts):
  // each writes an audit entry that is never deleted. 0: no limit.
  API_WRITES_PER_ORG_MINUTE: wholeNumber(0, 1_000_000).default(600),
  API_METRICS_HOST: host.default('127.0.0.1'),
  API_METRICS_PORT: portOrZero.default(9103),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  KEY_PEPPER: secret.optional(),
  // Older peppers, newest first: hashes they made still verify and are rehashed with KEY_PEPPER.
  KEY_PEPPER_PREVIOUS: z
    .string()
    .transform(previousPeppers)
    .pipe(z.array(z.string().min(32, 'each pepper must be at least 32 characters')))
    .optional(),
  // The pepper a rotation moves to, before it becomes KEY_PEPPER: hashes it made verify and are not
  // rehashed. One value, taken as written and checked like KEY_PEPPER, which it is about to become
  // (trimmed as in the previous list, a secret file's newline would make it another pepper).
  KEY_PEPPER_NEXT: secret.optional(),
  KEY_CACHE_TTL_MS: wholeNumber(0, 60_000).default(2000),
  ROTATION_GRACE_SECONDS: wholeNumber(0, 604_800).default(86_400),
  // How long a key or webhook create or rotate sent with an Idempotency-Key is remembered, so a
  // retry answers the first outcome instead of making a second one (api/idempotency/). Stripe keeps 24 hours; a
  // row per such change, deleted on the org's later writes once past it.
  IDEMPOTENCY_KEY_TTL_SECONDS: wholeNumber(60, 604_800).default(86_400),
  // Keys one org may hold through the API, revoked ones included until deleted: every key is a row
  // each API's lookups and every collector's key list hold, so one org with millions slowed all.
  KEYS_MAX_PER_ORG: positiveInt(10_000_000).default(100_000),
  TRUST_PROXY: trustProxy.default(false),
  AUTH_THROTTLE_MAX_FAILURES_PER_IP: wholeNumber(0, 1_000_000).default(100),
  AUTH_THROTTLE_MAX_FAILURES_PER_KEY: wholeNumber(0, 1_000_000).default(20),
  AUTH_THROTTLE_WINDOW_MS: positiveInt(86_400_000).default(60_000),
  AUTH_THROTTLE_MAX_ENTRIES: positiveInt(10_000_000).default(50_000),
  // Reads of keys (verifications the key cache cannot answer) in flight at once in an API process,
  // from every address; 32 × as many wait, and more are answered 429. Made-up ids from many
  // addresses filled the pool every route and /healthz share. Unset: half of DATABASE_POOL_MAX, at
  // least 1, so the other half serves the routes.
  AUTH_THROTTLE_MAX_LOOKUPS: positiveInt(1000).optional(),
  USAGE_TRACKING: booleanFlag.default(true),
  USAGE_DRAIN_INTERVAL_MS: positiveInt(60_000).default(250),
  USAGE_MAX_ENTRIES: positiveInt().default(10_000),
  COLLECTOR_HOST: host.default('127.0.0.1'),
  COLLECTOR_PORT: portOrZero.default(8125),
  COLLECTOR_FLUSH_INTERVAL_MS: positiveInt(600_000).default(1000),
  COLLECTOR_STOP_QUIET_MS: wholeNumber(0, 2_000).default(250),
  COLLECTOR_MAX_PENDING_KEYS: positiveInt().default(100_000),
  // Defaults to COLLECTOR_MAX_PENDING_KEYS (below), as when one setting bounded both.
  COLLECTOR_MAX_RETRY_KEYS: positiveInt().optional(),
  // SO_RCVBUF is a C int: Node refused 2^31 and more (ERR_SOCKET_BUFFER_SIZE), the collector only
  // warned, and the socket kept the kernel's default of a few hundred KiB.
  COLLECTOR_RECV_BUFFER_BYTES: wholeNumber(1, 2 ** 31 - 1, 'the largest a socket accepts; the kernel grants at most net.core.rmem_max').default(
    32 * 1024 * 1024,
  ),
  // Transactions a flush of 10,000 keys or more, of several orgs, is split into, run at once, each
  // on its own connection (the collector's pool holds this many + 3); see docs/operations.md.
  COLLECTOR_FLUSH_PARALLELISM: positiveInt(16).default(2),
  // true: a flush appends each key's delta to the usage log and a fold applies it
  // (collector/usageLog.ts, docs/scaling.md); false: it writes the usage tables; auto: a flush of
  // COLLECTOR_USAGE_LOG_MIN_KEYS keys or more appends and a smaller one writes directly (unless
  // rows the collector appended may still be in the log), so a small flush is visible at its commit
  // and a large one takes about a second instead of many.
  COLLECTOR_USAGE_LOG: z.enum(['true', 'false', '1', '0', 'auto']).default('auto'),
  // Below it a direct flush took at most about half a second here, whatever the keys' addresses;
  // at 10,000 keys each from a new address it took 1.1-1.5 s (docs/scaling.md).
  // Unset: DEFAULT_USAGE_LOG_MIN_KEYS; set, at most COLLECTOR_MAX_PENDING_KEYS (usageLogProblems).
  COLLECTOR_USAGE_LOG_MIN_KEYS: positiveInt().optional(),
  // PostgreSQL's lock_timeout in each flush's (direct or appended) and fold's transaction: one that
  // waits this long for a row or table another session holds fails and is retried, instead of
  // hanging; 0 leaves the server's own setting. Twice the longest flush measured under load
  // (docs/operations.md).
  COLLECTOR_LOCK_TIMEOUT_MS: wholeNumber(0, 3_600_000).default(120_000),
  // lock_timeout of each try of a migration in `npm run migrate`: an ALTER TABLE waiting behind a
  // long reader (a backup, a transaction left open) holds every later query of that table, the
  // running API's reads too, behind it for as long as it waits. A try gives up after this, and the
  // migration is tried again after a pause (shared/db.ts, MIGRATION_LOCK_TRIES); 0 leaves the
  // server's own setting, without retries.
  MIGRATE_LOCK_TIMEOUT_MS: wholeNumber(0, 3_600_000).default(2_000),
  // lock_timeout of the CLI's commands: an erase-ips waiting for a key's row (a flush, a session
  // left open) held its org's audit lock meanwhile, so every key and webhook change of the org
  // failed after API_STATEMENT_TIMEOUT_MS, for up to DATABASE_REPLY_TIMEOUT_MS. It fails instead,
  // changing nothing; 0 leaves the server's own setting.
  CLI_LOCK_TIMEOUT_MS: wholeNumber(0, 3_600_000).default(10_000),
  // Processes reading the one UDP socket (Node's cluster module); each aggregates and flushes on
  // its own. 1 keeps a single process; see docs/benchmarks.md §3 for when more helps.
  COLLECTOR_RECEIVERS: positiveInt(16).default(1),
  // How long an append trusts a key it found in its org (collector/knownKeys.ts): a key deleted
  // meanwhile reaches the log until then, and its fold drops it. 0: every append asks about every key.
  COLLECTOR_KNOWN_KEYS_TTL_MS: wholeNumber(0, 3_600_000).default(60_000),
  // How often the collector reads the keys created lately into its key list (collector/keyList.ts):
  // keys it lacks take half of COLLECTOR_MAX_PENDING_KEYS at most. 0: no list, every key is taken
  // up to the cap, and a flood of forged ids can take all of it.
  COLLECTOR_KEY_LIST_REFRESH_MS: wholeNumber(0, 3_600_000).default(5_000),
  // The usage log's folds in a worker thread of their own, off the receive loop (collector/foldThread.ts).
  COLLECTOR_FOLD_THREAD: booleanFlag.default(true),
  COLLECTOR_METRICS_HOST: host.default('127.0.0.1'),
  COLLECTOR_METRICS_PORT: portOrZero.default(9102),
  USAGE_RETENTION_DAYS: positiveInt(3650).default(90),
  IP_RETENTION_DAYS: positiveInt(3650).default(90),
  IP_TRUNCATE: booleanFlag.default(false),
  USAGE_SIGNING_SECRET: trimmedText(SAME_BYTES).pipe(secret).optional(),
  USAGE_SIGNING_PREVIOUS_SECRET: trimmedText(SAME_BYTES).min(32, 'must be at least 32 characters').optional(),
  COLLECTOR_REPLAY_CACHE_SIZE: positiveInt(10_000_000).default(100_000),
  WEBHOOK_ALLOW_PRIVATE_TARGETS: booleanFlag.default(false),
  WEBHOOK_TIMEOUT_MS: wholeNumber(100, 30_000).default(5000),
  WEBHOOK_MAX_ATTEMPTS: wholeNumber(1, 12).default(8),
  WEBHOOK_RETRY_BASE_MS: wholeNumber(1, 3_600_000).default(30_000),
  WEBHOOK_POLL_INTERVAL_MS: wholeNumber(10, 60_000).default(1000),
  // Sends one collector's webhook worker has in flight at once. Fixed at 10, two orgs whose
  // receivers never answer held it all (half each), and every other org's deliveries went out one
  // per WEBHOOK_TIMEOUT_MS: a deployment with more such orgs raises it.
  WEBHOOK_CONCURRENCY: positiveInt(1000).default(10),
  // How long a delivery whose signing secret no collector can open waits for a pepper before it is
  // failed: it waited forever, and a pepper lost for good left it pending with nothing saying why.
  // Three days by default, as long as Stripe retries: a pepper restored after a weekend still delivers.
  WEBHOOK_SECRET_WAIT_MAX_MS: wholeNumber(60_000, 2_592_000_000).default(259_200_000),
  // Webhooks one org may have: each key event is one delivery per webhook, written in the
  // collector's flush, so an org with thousands made every flush (every org's) write thousands.
  WEBHOOKS_MAX_PER_ORG: positiveInt(10_000).default(20),
  EVENTS_ENABLED: booleanFlag.default(true),
  // Set by `npm start`'s supervisor only, which gives the process a pipe as stdin: the process stops
  // when it closes (shared/process.ts stopWhenSupervisorGone). Set by hand with stdin at /dev/null
  // (as under Docker), the process would stop as soon as it started.
  KEYUSAGE_SUPERVISED: booleanFlag.default(false),
  EVENTS_RETENTION_DAYS: positiveInt(3650).default(90),
  EVENTS_SWEEP_INTERVAL_MS: positiveInt(86_400_000).default(60_000),
  EVENTS_IP_HISTORY_PER_KEY: positiveInt(100_000).default(1000),
  EVENTS_SPIKE_FACTOR: positiveInt(1000).default(5),
  EVENTS_SPIKE_MIN_USES: positiveInt().default(100),
  EVENTS_FAILED_ATTEMPTS_PER_HOUR: positiveInt().default(20),
  // A key used from many networks raised a key.new_ip (and a delivery per webhook) for each of them.
  EVENTS_NEW_IP_PER_KEY_HOUR: positiveInt(10_000).default(10),
  // One org's keys raised events without bound (100,000 keys × an event an hour each, × every
  // webhook a delivery), all written in the flush every org shares.
  EVENTS_MAX_PER_ORG_HOUR: positiveInt(100_000_000).default(10_000),
  EVENTS_EXPIRING_DAYS: dayList.default([7, 1]),
  // Unset: 7, or EVENTS_RETENTION_DAYS if shorter (a short retention alone must not refuse the default).
  EVENTS_SUMMARY_DAYS: positiveInt(3650).optional(),
  COLLECTOR_RELAY_TO: hostPort.optional(),
  COLLECTOR_TIMESTAMP_WINDOW_SECONDS: wholeNumber(0, 86_400).default(3600),
};

const DEV_PEPPER = 'keyusage-development-pepper-not-for-production-use';

type Name = keyof typeof variables;
type Parsed<N extends Name> = { [K in N]: z.output<(typeof variables)[K]> };

const ALL_VARIABLES = Object.keys(variables) as Name[];

function parseEnvironment<N extends Name>(env: NodeJS.ProcessEnv, names: readonly N[]): Parsed<N> {
  const values: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const name of names) {
    const raw = env[name] === '' ? undefined : env[name];
    const result = variables[name].safeParse(raw);
    if (result.success) values[name] = result.data;
    else problems.push(`${name}: ${result.error.issues.map((issue) => issue.message).join('; ')}`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return values as Parsed<N>;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration: ${problems.join(', ')}`);
    this.name = 'ConfigError';
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

const RELAXED_ENVIRONMENTS = new Set(['development', 'test']);

type Variables = Parsed<Name>;

const DEV_PEPPER_PROBLEM =
  'KEY_PEPPER: is the published development pepper, allowed only when NODE_ENV is development or test. Move off it as in a rotation (docs/security.md, pepper rotation, step 2 alone: the development pepper cannot be KEY_PEPPER_NEXT either): a new KEY_PEPPER (openssl rand -base64 48) and the development pepper in KEY_PEPPER_PREVIOUS, on every API, CLI and collector; each key is rehashed with the new pepper on its next use (npm run cli -- pepper status counts those left), and webhooks made before need the old one there until their secrets are rotated. The pepper is public: rotate every key, and the secret of every webhook with no grace period, too';

// The guards hold unless the environment says, explicitly, that it is a development or test one:
// a deployment that forgets NODE_ENV (or calls itself "staging") must not run with the published
// development pepper or an unsigned collector port.
function productionGuards(v: Variables): string[] {
  if (v.NODE_ENV !== undefined && RELAXED_ENVIRONMENTS.has(v.NODE_ENV)) return [];
  const problems: string[] = [];
  if (!v.KEY_PEPPER) problems.push('KEY_PEPPER: required unless NODE_ENV is development or test');
  // Set explicitly, the published pepper passed as if it were a secret (around it, a secret file's
  // newline). Moving off it is a rotation (docs/security.md): the list of previous peppers may keep it.
  else if (v.KEY_PEPPER.trim() === DEV_PEPPER) problems.push(DEV_PEPPER_PROBLEM);
  if (v.KEY_PEPPER_NEXT?.trim() === DEV_PEPPER) problems.push('KEY_PEPPER_NEXT: is the published development pepper, which KEY_PEPPER may not be');
  // Beyond loopback anyone who can reach the port could forge uses of a key whose ids they know.
  if (!isLoopbackAddress(v.COLLECTOR_HOST) && !v.USAGE_SIGNING_SECRET) {
    problems.push('USAGE_SIGNING_SECRET: required when COLLECTOR_HOST is not a loopback IP address, unless NODE_ENV is development or test');
  }
  return problems;
}

// A previous pepper equal to the current one would be tried twice for nothing, and hides a
// rotation that was not made. The next one equal to either would give one pepper two roles: is
// a hash it made rehashed or not? NEXT and PREVIOUS may both be set: a rotation may begin while
// keys are still moving off the one before.
function pepperProblems(v: Variables): string[] {
  const previous = v.KEY_PEPPER_PREVIOUS ?? [];
  const current = v.KEY_PEPPER ?? DEV_PEPPER;
  const next = v.KEY_PEPPER_NEXT;
  if (next === current)
    return ['KEY_PEPPER_NEXT: must not repeat KEY_PEPPER (once every instance has it, KEY_PEPPER takes its value and KEY_PEPPER_NEXT goes)'];
  if (next !== undefined && previous.includes(next)) return ['KEY_PEPPER_NEXT: must not be one of KEY_PEPPER_PREVIOUS'];
  if (previous.includes(current)) return ['KEY_PEPPER_PREVIOUS: must not repeat KEY_PEPPER'];
  if (new Set(previous).size !== previous.length) return ['KEY_PEPPER_PREVIOUS: lists a pepper twice'];
  return [];
}

// The relay must not point at the collector's own port: every relayed line would come back and
// be relayed again, for ever. Only literals are caught (and localhost); another name resolving to
// the collector is not.
function relayProblems(v: Variables): string[] {
  const relay = v.COLLECTOR_RELAY_TO;
  if (relay === undefined || relay.port !== v.COLLECTOR_PORT || !reachesCollector(relay.host, v.COLLECTOR_HOST)) return [];
  return ["COLLECTOR_RELAY_TO: is the collector's own address (COLLECTOR_HOST:COLLECTOR_PORT); relayed lines would come back for ever"];
}

// Whether datagrams sent to `target` reach a collector bound to `host`, on the same port. On a
// wildcard address it hears every loopback address, and a wildcard destination is this host too;
// `0.0.0.0` (an IPv4 socket) hears no IPv6 one, `::` both (Node binds it dual-stack). An
// IPv4-mapped address (::ffff:127.0.0.1, however spelled), the destination's or the collector's,
// is its IPv4 address: a relay to one reached a collector on the other and looped. Linux delivers
// a datagram sent to a wildcard address on its family's loopback address, 0.0.0.0 to 127.0.0.1 and
// :: to ::1: a relay to 0.0.0.0 reached the default collector (127.0.0.1) and looped.
function reachesCollector(to: string, on: string): boolean {
  const [target, host] = [ipv4OfMapped(to) ?? to, ipv4OfMapped(on) ?? on];
  if (target === host) return true;
  if (isLoopbackAddress(host)) {
    if (['localhost', '127.0.0.1', '::1'].includes(target)) return true;
    // The only IPv6 loopback address is ::1 (a mapped one was made IPv4 above).
    return isWildcardAddress(target) && isIP(target) === isIP(host) && (isIP(host) === 6 || host === '127.0.0.1');
  }
  if (!isWildcardAddress(host)) return false;
  const local = target === 'localhost' || isLoopbackAddress(target) || isWildcardAddress(target);
  return local && (isIP(host) === 6 || isIP(target) !== 6);
}

// The previous secret only verifies what an API still signs with it during a rotation. Alone, it
// turned the collector's verification on while the API signed nothing: every datagram refused.
function signingProblems(v: Variables): string[] {
  if (v.USAGE_SIGNING_PREVIOUS_SECRET === undefined) return [];
  if (v.USAGE_SIGNING_SECRET === undefined) {
    return ['USAGE_SIGNING_PREVIOUS_SECRET: set without USAGE_SIGNING_SECRET (the API would sign nothing and the collector refuse every datagram)'];
  }
  return v.USAGE_SIGNING_PREVIOUS_SECRET === v.USAGE_SIGNING_SECRET ? ['USAGE_SIGNING_PREVIOUS_SECRET: must differ from USAGE_SIGNING_SECRET'] : [];
}

// A flush waiting on a lock, or an API statement running, hears nothing from the server: a reply
// timeout no longer than the lock's or the statement's limit would close the connection of every
// such wait, and the server's clear error (lock_timeout, the 503 naming API_STATEMENT_TIMEOUT_MS)
// would never come. (A limit of 0 leaves the reply timeout as the only bound.) The reply timer
// starts when the statement is sent, the server's when it starts running, and the server's error
// still has to travel back: a reply timeout 1 ms longer still won the race now and then.
const REPLY_MARGIN_MS = 500;
function replyTimeoutProblems(v: Variables): string[] {
  const reply = v.DATABASE_REPLY_TIMEOUT_MS;
  if (reply === 0) return [];
  return (['COLLECTOR_LOCK_TIMEOUT_MS', 'API_STATEMENT_TIMEOUT_MS'] as const)
    .filter((name) => v[name] > 0 && v[name] + REPLY_MARGIN_MS > reply)
    .map((name) => `DATABASE_REPLY_TIMEOUT_MS: must be at least ${REPLY_MARGIN_MS} ms longer than ${name} (${v[name]} ms), or 0`);
}

// Node refuses headers given longer than the whole request (ERR_OUT_OF_RANGE at start, naming no
// variable). Headers given no longer than an idle kept-alive connection is the order Node's own
// defaults (60 s over 5 s) avoid: a proxy reusing a connection as it goes idle is the case they
// are kept apart for.
function serverTimeoutProblems(v: Variables): string[] {
  const headers = v.API_HEADERS_TIMEOUT_MS;
  const problems: string[] = [];
  if (headers > v.API_REQUEST_TIMEOUT_MS) problems.push(`API_HEADERS_TIMEOUT_MS: must be at most API_REQUEST_TIMEOUT_MS (${v.API_REQUEST_TIMEOUT_MS} ms)`);
  if (headers <= v.API_KEEP_ALIVE_TIMEOUT_MS)
    problems.push(`API_HEADERS_TIMEOUT_MS: must be longer than API_KEEP_ALIVE_TIMEOUT_MS (${v.API_KEEP_ALIVE_TIMEOUT_MS} ms)`);
  return problems;
}

// Each receiving process keeps its own replay cache, and the kernel hands a datagram to whichever
// process reads first: a replayed copy could reach a process that never saw the original.
function receiverProblems(v: Variables): string[] {
  if (v.COLLECTOR_RECEIVERS === 1 || !v.USAGE_SIGNING_SECRET) return [];
  return [
    'COLLECTOR_RECEIVERS: must be 1 when USAGE_SIGNING_SECRET is set (each receiver has its own replay cache, so a replay could reach one that never saw the original)',
  ];
}

// key.spike compares an hour with the median of the same hour on the days with uses among the
// BASELINE_DAYS days before it, and reads an hour the usage retention already deleted as an idle
// day: with 3 days kept, a key whose one day of use was a burst had that burst as its baseline, and
// a key used for the first time in the kept days, none. A use
// timestamped COLLECTOR_TIMESTAMP_WINDOW_SECONDS ago counts in an hour that much (and up to an hour
// more) older, whose baseline reaches that much further back.
function spikeBaselineProblems(v: Variables): string[] {
  const lateDays = Math.ceil((v.COLLECTOR_TIMESTAMP_WINDOW_SECONDS + 3600) / 86_400);
  const needed = BASELINE_DAYS + lateDays;
  if (!v.EVENTS_ENABLED || v.USAGE_RETENTION_DAYS >= needed) return [];
  return [
    `USAGE_RETENTION_DAYS: must be at least ${needed} while EVENTS_ENABLED is true (key.spike compares an hour with the same hour on each of the ${BASELINE_DAYS} days before it, and an hour deleted sooner would count as an idle day, leaving fewer days, or none, to take the median of)`,
  ];
}

const DEFAULT_EVENT_SUMMARY_DAYS = 7;

// The usage list says how many days its event counts cover; events older than the retention are
// deleted (whether or not EVENTS_ENABLED), so a longer summary would claim days it cannot count.
function eventSummaryProblems(v: Variables): string[] {
  if (v.EVENTS_SUMMARY_DAYS === undefined || v.EVENTS_SUMMARY_DAYS <= v.EVENTS_RETENTION_DAYS) return [];
  return [
    `EVENTS_SUMMARY_DAYS: must be at most EVENTS_RETENTION_DAYS (${v.EVENTS_RETENTION_DAYS}): events older than that are deleted, and the usage list would claim to count days it cannot`,
  ];
}

// A flush writes one drain of the aggregator, at most COLLECTOR_MAX_PENDING_KEYS keys (more only
// when a failed write's keys are retried with the next drain): a threshold set above it was never
// reached, and auto appended nothing, as false. Unset, the default above a smaller cap is left so:
// no flush is large enough there for the log to help.
function usageLogProblems(v: Variables): string[] {
  const minKeys = v.COLLECTOR_USAGE_LOG_MIN_KEYS;
  if (v.COLLECTOR_USAGE_LOG !== 'auto' || minKeys === undefined || minKeys <= v.COLLECTOR_MAX_PENDING_KEYS) return [];
  return [
    `COLLECTOR_USAGE_LOG_MIN_KEYS: must be at most COLLECTOR_MAX_PENDING_KEYS (${v.COLLECTOR_MAX_PENDING_KEYS}) with COLLECTOR_USAGE_LOG=auto: a flush holds no more keys than that, so none would reach it and auto would never append (to never append, set COLLECTOR_USAGE_LOG=false)`,
  ];
}

// One parser per section of the config, each reading only the variables of its section.

const DATABASE_VARIABLES = [
  'DATABASE_URL',
  'DATABASE_POOL_MAX',
  'DATABASE_CONNECT_TIMEOUT_MS',
  'DATABASE_REPLY_TIMEOUT_MS',
  'DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS',
  'EMBEDDED_PG_DIR',
  'EMBEDDED_PG_PORT',
  'MIGRATE_LOCK_TIMEOUT_MS',
  'CLI_LOCK_TIMEOUT_MS',
] as const;

const databaseSection = (v: Parsed<(typeof DATABASE_VARIABLES)[number]>) => ({
  url: v.DATABASE_URL,
  poolMax: v.DATABASE_POOL_MAX,
  connectTimeoutMs: v.DATABASE_CONNECT_TIMEOUT_MS,
  replyTimeoutMs: v.DATABASE_REPLY_TIMEOUT_MS,
  idleInTransactionTimeoutMs: v.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  embeddedDir: v.EMBEDDED_PG_DIR,
  embeddedPort: v.EMBEDDED_PG_PORT,
  migrateLockTimeoutMs: v.MIGRATE_LOCK_TIMEOUT_MS,
  cliLockTimeoutMs: v.CLI_LOCK_TIMEOUT_MS,
});

// A list request holds two connections (its page and its count, at once): at a quarter of the
// pool per org, one org holds half of it at most.
const CONNECTIONS_PER_ORG_SHARE = 4;

const apiSection = (v: Variables) => ({
  host: v.HOST,
  port: v.PORT,
  metricsHost: v.API_METRICS_HOST,
  metricsPort: v.API_METRICS_PORT,
  keyPepper: v.KEY_PEPPER ?? DEV_PEPPER,
  previousKeyPeppers: v.KEY_PEPPER_PREVIOUS ?? [],
  nextKeyPepper: v.KEY_PEPPER_NEXT ?? null,
  keyCacheTtlMs: v.KEY_CACHE_TTL_MS,
  rotationGraceSeconds: v.ROTATION_GRACE_SECONDS,
  idempotencyTtlSeconds: v.IDEMPOTENCY_KEY_TTL_SECONDS,
  maxKeysPerOrg: v.KEYS_MAX_PER_ORG,
  statementTimeoutMs: v.API_STATEMENT_TIMEOUT_MS,
  server: {
    requestTimeoutMs: v.API_REQUEST_TIMEOUT_MS,
    headersTimeoutMs: v.API_HEADERS_TIMEOUT_MS,
    keepAliveTimeoutMs: v.API_KEEP_ALIVE_TIMEOUT_MS,
  },
  writesPerOrgMinute: v.API_WRITES_PER_ORG_MINUTE,
  maxConcurrentPerOrg: v.API_MAX_CONCURRENT_PER_ORG ?? Math.max(1, Math.floor(v.DATABASE_POOL_MAX / CONNECTIONS_PER_ORG_SHARE)),
  trustProxy: v.TRUST_PROXY,
  authThrottle: {
    maxFailuresPerIp: v.AUTH_THROTTLE_MAX_FAILURES_PER_IP,
    maxFailuresPerKey: v.AUTH_THROTTLE_MAX_FAILURES_PER_KEY,
    windowMs: v.AUTH_THROTTLE_WINDOW_MS,
    maxEntries: v.AUTH_THROTTLE_MAX_ENTRIES,
    // One address may not queue more key reads than the pool holds connections.
    maxVerifyingPerIp: v.DATABASE_POOL_MAX,
    // With no key cache (KEY_CACHE_TTL_MS=0) every verification is a read: half the pool would
    // refuse ordinary traffic, so the cap is the pool's.
    maxLookups: v.AUTH_THROTTLE_MAX_LOOKUPS ?? (v.KEY_CACHE_TTL_MS === 0 ? v.DATABASE_POOL_MAX : Math.max(1, Math.floor(v.DATABASE_POOL_MAX / 2))),
  },
  // How far the usage endpoint can lag the requests it counts, told to its readers.
  usageDelay: { drainIntervalMs: v.USAGE_DRAIN_INTERVAL_MS, flushIntervalMs: v.COLLECTOR_FLUSH_INTERVAL_MS },
  eventSummaryDays: v.EVENTS_SUMMARY_DAYS ?? Math.min(DEFAULT_EVENT_SUMMARY_DAYS, v.EVENTS_RETENTION_DAYS),
});

// Client IP addresses are personal data: how long they are kept, and whether only their network is.
const privacySection = (v: Variables) => ({
  ipRetentionDays: v.IP_RETENTION_DAYS,
  truncateIps: v.IP_TRUNCATE,
});

const usageSection = (v: Variables) => ({
  enabled: v.USAGE_TRACKING,
  drainIntervalMs: v.USAGE_DRAIN_INTERVAL_MS,
  maxEntries: v.USAGE_MAX_ENTRIES,
  collectorHost: v.COLLECTOR_HOST,
  collectorPort: v.COLLECTOR_PORT,
  signingSecret: v.USAGE_SIGNING_SECRET,
});

const eventsSection = (v: Variables) => ({
  enabled: v.EVENTS_ENABLED,
  retentionDays: v.EVENTS_RETENTION_DAYS,
  sweepIntervalMs: v.EVENTS_SWEEP_INTERVAL_MS,
  ipHistoryPerKey: v.EVENTS_IP_HISTORY_PER_KEY,
  spikeFactor: v.EVENTS_SPIKE_FACTOR,
  spikeMinUses: v.EVENTS_SPIKE_MIN_USES,
  failedAttemptsPerHour: v.EVENTS_FAILED_ATTEMPTS_PER_HOUR,
  newIpPerKeyHour: v.EVENTS_NEW_IP_PER_KEY_HOUR,
  maxPerOrgHour: v.EVENTS_MAX_PER_ORG_HOUR,
  expiringDays: v.EVENTS_EXPIRING_DAYS,
  addressesTruncated: v.IP_TRUNCATE,
  firstUseSpanMs: v.COLLECTOR_FLUSH_INTERVAL_MS,
});

const DEFAULT_USAGE_LOG_MIN_KEYS = 5_000;

function usageLogMinKeys(v: Variables): number | undefined {
  if (v.COLLECTOR_USAGE_LOG === 'auto') return v.COLLECTOR_USAGE_LOG_MIN_KEYS ?? DEFAULT_USAGE_LOG_MIN_KEYS;
  return v.COLLECTOR_USAGE_LOG === 'true' || v.COLLECTOR_USAGE_LOG === '1' ? 1 : undefined;
}

const collectorSection = (v: Variables) => ({
  host: v.COLLECTOR_HOST,
  port: v.COLLECTOR_PORT,
  flushIntervalMs: v.COLLECTOR_FLUSH_INTERVAL_MS,
  /**
   * At stop, the socket is read until no datagram came for this long (2 s at most, taken from the
   * final flush's deadline): the processes of a Procfile get SIGTERM together, and an API's last
   * drain comes after it. 0: none.
   */
  stopQuietMs: v.COLLECTOR_STOP_QUIET_MS,
  /** The aggregator's bound: distinct keys coalesced between flushes; uses of further new keys are dropped and counted. */
  aggregatorMaxKeys: v.COLLECTOR_MAX_PENDING_KEYS,
  /**
   * The flusher's bound: keys held in unwritten batches while a write is retried; past it no
   * new drain is taken (the aggregator holds the rest). Memory holds at most
   * aggregatorMaxKeys + max(aggregatorMaxKeys, retryMaxKeys) keys (README, "Collector memory").
   */
  retryMaxKeys: v.COLLECTOR_MAX_RETRY_KEYS ?? v.COLLECTOR_MAX_PENDING_KEYS,
  recvBufferBytes: v.COLLECTOR_RECV_BUFFER_BYTES,
  flushParallelism: v.COLLECTOR_FLUSH_PARALLELISM,
  /**
   * A flush of this many keys or more appends to the usage log, which folds apply
   * (collector/usageLog.ts); a smaller one writes the usage tables. Undefined: no flush appends.
   */
  usageLogMinKeys: usageLogMinKeys(v),
  lockTimeoutMs: v.COLLECTOR_LOCK_TIMEOUT_MS,
  /** How long an append trusts a key found in its org; 0: not at all. */
  knownKeysTtlMs: v.COLLECTOR_KNOWN_KEYS_TTL_MS,
  /** How often the key list reads the keys created lately; 0: no key list. */
  keyListRefreshMs: v.COLLECTOR_KEY_LIST_REFRESH_MS,
  /** Whether the folds run in a worker thread with a pool of COLLECTOR_FLUSH_PARALLELISM connections. */
  foldThread: v.COLLECTOR_FOLD_THREAD,
  receivers: v.COLLECTOR_RECEIVERS,
  metricsHost: v.COLLECTOR_METRICS_HOST,
  metricsPort: v.COLLECTOR_METRICS_PORT,
  retentionDays: v.USAGE_RETENTION_DAYS,
  signingSecrets: [v.USAGE_SIGNING_SECRET, v.USAGE_SIGNING_PREVIOUS_SECRET].filter((secret): secret is string => secret !== undefined),
  replayCacheSize: v.COLLECTOR_REPLAY_CACHE_SIZE,
  /** Where lines that are not usage lines go; undefined: counted and dropped. */
  relayTo: v.COLLECTOR_RELAY_TO,
  timestampWindowMs: v.COLLECTOR_TIMESTAMP_WINDOW_SECONDS * 1000,
  events: eventsSection(v),
});

const webhooksSection = (v: Variables) => ({
  allowPrivateTargets: v.WEBHOOK_ALLOW_PRIVATE_TARGETS,
  timeoutMs: v.WEBHOOK_TIMEOUT_MS,
  maxAttempts: v.WEBHOOK_MAX_ATTEMPTS,
  retryBaseMs: v.WEBHOOK_RETRY_BASE_MS,
  pollIntervalMs: v.WEBHOOK_POLL_INTERVAL_MS,
  concurrency: v.WEBHOOK_CONCURRENCY,
  secretWaitMaxMs: v.WEBHOOK_SECRET_WAIT_MAX_MS,
  maxPerOrg: v.WEBHOOKS_MAX_PER_ORG,
});

export function loadConfig(env: NodeJS.ProcessEnv = process.env) {
  const v = parseEnvironment(env, ALL_VARIABLES);
  const problems = [
    ...pepperProblems(v),
    ...productionGuards(v),
    ...relayProblems(v),
    ...receiverProblems(v),
    ...replyTimeoutProblems(v),
    ...serverTimeoutProblems(v),
    ...signingProblems(v),
    ...spikeBaselineProblems(v),
    ...eventSummaryProblems(v),
    ...usageLogProblems(v),
  ];
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze({
    env: v.NODE_ENV,
    logLevel: v.LOG_LEVEL,
    supervised: v.KEYUSAGE_SUPERVISED,
    database: databaseSection(v),
    api: apiSection(v),
    privacy: privacySection(v),
    usage: usageSection(v),
    collector: collectorSection(v),
    webhooks: webhooksSection(v),
  });
}

export type Config = ReturnType<typeof loadConfig>;

/**
 * The database variables alone, for `npm run migrate`: it runs as the schema's owner, where no API
 * or collector runs, and the production guards of the whole config (KEY_PEPPER) refused the
 * documented `DATABASE_URL=… npm run migrate`.
 */
export function loadDatabaseConfig(env: NodeJS.ProcessEnv = process.env): Config['database'] {
  return deepFreeze(databaseSection(parseEnvironment(env, DATABASE_VARIABLES)));
}

/**
 * `npm start` and the CLI on the embedded database they run themselves: there an unset NODE_ENV
 * means development, so a fresh checkout needs no settings. An external DATABASE_URL may hold
 * real keys, so there the environment must say what it is (or give KEY_PEPPER) itself.
 */
export function withDevelopmentDefault(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  if (env.NODE_ENV || env.DATABASE_URL) return env;
  return { ...env, NODE_ENV: 'development' };
}
