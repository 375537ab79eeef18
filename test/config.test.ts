import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import t, { type Test } from 'tap';
import { BASELINE_DAYS } from '../shared/keyEvents';
import { HOUR_MS } from '../shared/timeUnits';
import { ConfigError, loadConfig, loadDatabaseConfig, withDevelopmentDefault } from '../shared/config';
import { readProcfile } from '../scripts/lib/procfile';

const PEPPER = 'p'.repeat(32);
const DEV = { NODE_ENV: 'development' };

// Runs loadConfig and returns the ConfigError it threw (failing the test if it did not throw one).
function configError(t: Test, env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    t.type(error, ConfigError);
    return error as ConfigError;
  }
  t.fail(`loadConfig(${JSON.stringify(env)}) did not throw`);
  return new ConfigError([]);
}

t.test('defaults', async (t) => {
  const config = loadConfig(DEV);
  t.equal(config.env, 'development');
  t.equal(config.logLevel, 'info');
  t.same(config.database, {
    url: undefined,
    poolMax: 10,
    connectTimeoutMs: 5000,
    replyTimeoutMs: 300_000,
    idleInTransactionTimeoutMs: 60_000,
    embeddedDir: '.data/postgres',
    embeddedPort: 54329,
    migrateLockTimeoutMs: 2_000,
    cliLockTimeoutMs: 10_000,
  });
  t.same(config.api, {
    host: '127.0.0.1',
    port: 3000,
    metricsHost: '127.0.0.1',
    metricsPort: 9103,
    keyPepper: config.api.keyPepper,
    previousKeyPeppers: [],
    nextKeyPepper: null,
    keyCacheTtlMs: 2000,
    rotationGraceSeconds: 86_400,
    idempotencyTtlSeconds: 86_400,
    maxKeysPerOrg: 100_000,
    statementTimeoutMs: 30_000,
    server: { requestTimeoutMs: 30_000, headersTimeoutMs: 10_000, keepAliveTimeoutMs: 5_000 },
    maxConcurrentPerOrg: 2,
    writesPerOrgMinute: 600,
    trustProxy: false,
    authThrottle: { maxFailuresPerIp: 100, maxFailuresPerKey: 20, windowMs: 60_000, maxEntries: 50_000, maxVerifyingPerIp: 10, maxLookups: 5 },
    usageDelay: { drainIntervalMs: 250, flushIntervalMs: 1000 },
    eventSummaryDays: 7,
  });
  t.ok(config.api.keyPepper.length >= 32, 'a development pepper stands in when KEY_PEPPER is unset');
  t.match(config.usage, { enabled: true, drainIntervalMs: 250, maxEntries: 10_000, collectorHost: '127.0.0.1', collectorPort: 8125 });
  t.match(config.collector, { host: '127.0.0.1', port: 8125, flushIntervalMs: 1000, retentionDays: 90 });
  t.same(
    config.webhooks,
    {
      allowPrivateTargets: false,
      timeoutMs: 5000,
      maxAttempts: 8,
      retryBaseMs: 30_000,
      pollIntervalMs: 1000,
      concurrency: 10,
      maxPerOrg: 20,
      secretWaitMaxMs: 259_200_000,
    },
    'private webhook targets refused by default',
  );
});

t.test('webhook settings', async (t) => {
  const config = loadConfig({
    ...DEV,
    WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
    WEBHOOK_TIMEOUT_MS: '800',
    WEBHOOK_MAX_ATTEMPTS: '3',
    WEBHOOK_RETRY_BASE_MS: '50',
    WEBHOOK_POLL_INTERVAL_MS: '20',
    WEBHOOK_CONCURRENCY: '4',
  });
  t.same(config.webhooks, {
    allowPrivateTargets: true,
    timeoutMs: 800,
    maxAttempts: 3,
    retryBaseMs: 50,
    pollIntervalMs: 20,
    concurrency: 4,
    maxPerOrg: 20,
    secretWaitMaxMs: 259_200_000,
  });
  t.ok(Object.isFrozen(config.webhooks));
});

t.test('event settings', async (t) => {
  const config = loadConfig(DEV);
  t.same(config.collector.events, {
    enabled: true,
    retentionDays: 90,
    sweepIntervalMs: 60_000,
    ipHistoryPerKey: 1000,
    spikeFactor: 5,
    spikeMinUses: 100,
    failedAttemptsPerHour: 20,
    newIpPerKeyHour: 10,
    maxPerOrgHour: 10_000,
    expiringDays: [7, 1],
    addressesTruncated: false,
    firstUseSpanMs: 1000,
  });
  t.equal(
    loadConfig({ ...DEV, COLLECTOR_FLUSH_INTERVAL_MS: '2000' }).collector.events.firstUseSpanMs,
    2000,
    "a first use's own networks: one flush interval's",
  );
  t.equal(loadConfig({ ...DEV, IP_TRUNCATE: 'true' }).collector.events.addressesTruncated, true, 'detection knows the addresses it sees are networks');
});

t.test('EVENTS_EXPIRING_DAYS is a list of days, largest first', async (t) => {
  t.same(loadConfig({ ...DEV, EVENTS_EXPIRING_DAYS: '1, 14,7,7' }).collector.events.expiringDays, [14, 7, 1]);
  for (const bad of ['seven', '7,,1', '0', '7,400']) {
    t.throws(() => loadConfig({ ...DEV, EVENTS_EXPIRING_DAYS: bad }), /EVENTS_EXPIRING_DAYS/, `"${bad}" is refused`);
  }
});

t.test('values from the environment are parsed to their types', async (t) => {
  const config = loadConfig({
    NODE_ENV: 'production',
    KEY_PEPPER: PEPPER,
    DATABASE_URL: 'postgresql://u:p@db.internal:5432/keyusage',
    PORT: '0',
    DATABASE_POOL_MAX: '25',
    DATABASE_CONNECT_TIMEOUT_MS: '1500',
    USAGE_TRACKING: '0',
    LOG_LEVEL: 'warn',
  });
  t.equal(config.env, 'production');
  t.equal(config.api.keyPepper, PEPPER);
  t.equal(config.database.url, 'postgresql://u:p@db.internal:5432/keyusage');
  t.equal(config.api.port, 0, 'PORT=0 asks for any free port');
  t.equal(config.database.poolMax, 25);
  t.equal(config.api.maxConcurrentPerOrg, 6, "API_MAX_CONCURRENT_PER_ORG: a quarter of the pool's connections unless set");
  t.equal(loadConfig({ ...DEV, DATABASE_POOL_MAX: '1' }).api.maxConcurrentPerOrg, 1, 'at least one');
  t.equal(loadConfig({ ...DEV, API_MAX_CONCURRENT_PER_ORG: '30' }).api.maxConcurrentPerOrg, 30);
  t.throws(() => loadConfig({ ...DEV, API_MAX_CONCURRENT_PER_ORG: '0' }), /API_MAX_CONCURRENT_PER_ORG/);
  t.equal(loadConfig({ ...DEV, API_STATEMENT_TIMEOUT_MS: '0' }).api.statementTimeoutMs, 0, "API_STATEMENT_TIMEOUT_MS=0: the server's own");
  t.equal(config.database.connectTimeoutMs, 1500);
  t.equal(config.usage.enabled, false);
  t.equal(config.logLevel, 'warn');
  t.equal(loadConfig({ ...DEV, PORT: '' }).api.port, 3000, 'an empty variable counts as unset');
});

t.test("COLLECTOR_LOCK_TIMEOUT_MS: two minutes by default; 0 leaves the server's setting", async (t) => {
  t.equal(loadConfig(DEV).collector.lockTimeoutMs, 120_000);
  t.equal(loadConfig({ ...DEV, COLLECTOR_LOCK_TIMEOUT_MS: '0' }).collector.lockTimeoutMs, 0);
});

t.test('COLLECTOR_KNOWN_KEYS_TTL_MS: a minute by default; 0 trusts no key', async (t) => {
  t.equal(loadConfig(DEV).collector.knownKeysTtlMs, 60_000);
  t.equal(loadConfig({ ...DEV, COLLECTOR_KNOWN_KEYS_TTL_MS: '0' }).collector.knownKeysTtlMs, 0);
});

t.test('COLLECTOR_KEY_LIST_REFRESH_MS: 5 s by default; 0 keeps no key list', async (t) => {
  t.equal(loadConfig(DEV).collector.keyListRefreshMs, 5_000);
  t.equal(loadConfig({ ...DEV, COLLECTOR_KEY_LIST_REFRESH_MS: '0' }).collector.keyListRefreshMs, 0);
});

t.test('COLLECTOR_USAGE_LOG: auto by default, appending flushes of COLLECTOR_USAGE_LOG_MIN_KEYS keys or more', async (t) => {
  const minKeys = (env: Record<string, string>) => loadConfig({ ...DEV, ...env }).collector.usageLogMinKeys;
  t.equal(minKeys({}), 5_000);
  t.equal(minKeys({ COLLECTOR_USAGE_LOG: 'auto', COLLECTOR_USAGE_LOG_MIN_KEYS: '500' }), 500);
  for (const on of ['true', '1']) t.equal(minKeys({ COLLECTOR_USAGE_LOG: on, COLLECTOR_USAGE_LOG_MIN_KEYS: '500' }), 1, `${on}: every flush`);
  for (const off of ['false', '0']) t.equal(minKeys({ COLLECTOR_USAGE_LOG: off }), undefined, `${off}: none`);
});

// A flush holds one drain, at most COLLECTOR_MAX_PENDING_KEYS keys: a threshold above it was never
// reached, and auto acted as false without a word.
t.test('COLLECTOR_USAGE_LOG_MIN_KEYS: set, at most COLLECTOR_MAX_PENDING_KEYS while COLLECTOR_USAGE_LOG is auto', async (t) => {
  const minKeys = (env: Record<string, string>) => loadConfig({ ...DEV, ...env }).collector.usageLogMinKeys;
  const above = { COLLECTOR_MAX_PENDING_KEYS: '1000', COLLECTOR_USAGE_LOG_MIN_KEYS: '1001' };
  const refused: Array<[Record<string, string>, number]> = [
    [above, 1000],
    [{ ...above, COLLECTOR_USAGE_LOG: 'auto' }, 1000],
    [{ COLLECTOR_USAGE_LOG_MIN_KEYS: '200000' }, 100_000],
  ];
  for (const [env, cap] of refused) {
    t.same(
      configError(t, { ...DEV, ...env }).problems,
      [
        `COLLECTOR_USAGE_LOG_MIN_KEYS: must be at most COLLECTOR_MAX_PENDING_KEYS (${cap}) with COLLECTOR_USAGE_LOG=auto: a flush holds no more keys than that, so none would reach it and auto would never append (to never append, set COLLECTOR_USAGE_LOG=false)`,
      ],
      JSON.stringify(env),
    );
  }
  t.equal(minKeys({ COLLECTOR_MAX_PENDING_KEYS: '1000', COLLECTOR_USAGE_LOG_MIN_KEYS: '1000' }), 1000, 'a full drain reaches it');
  t.equal(minKeys({ ...above, COLLECTOR_USAGE_LOG: 'true' }), 1, 'ignored unless auto');
  t.equal(minKeys({ ...above, COLLECTOR_USAGE_LOG: 'false' }), undefined, 'ignored unless auto');
  // Unset, the default stays above a smaller cap: every flush is small there, and direct.
  t.equal(minKeys({ COLLECTOR_MAX_PENDING_KEYS: '4' }), 5_000);
});

t.test('KEY_PEPPER_PREVIOUS: older peppers, newest first, each checked and never the current one again', async (t) => {
  const older = 'o'.repeat(32);
  const oldest = 'q'.repeat(40);
  t.same(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: ` ${older} , ${oldest}` }).api.previousKeyPeppers, [older, oldest]);
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: `${older},short` }).problems, [
    'KEY_PEPPER_PREVIOUS: each pepper must be at least 32 characters',
  ]);
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: `${older},${PEPPER}` }).problems, ['KEY_PEPPER_PREVIOUS: must not repeat KEY_PEPPER']);
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: `${older},${older}` }).problems, ['KEY_PEPPER_PREVIOUS: lists a pepper twice']);
  // The JSON form, for peppers a comma list cannot hold: taken as they are.
  t.same(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: JSON.stringify([`${older},x\n`, oldest]) }).api.previousKeyPeppers, [`${older},x\n`, oldest]);
  for (const bad of ['[not json]', `["${older}", 5]`]) {
    const { problems } = configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: bad });
    t.same(problems, ['KEY_PEPPER_PREVIOUS: is between "[" and "]" but is not a JSON array of strings'], 'never quoting the value');
  }
  t.same(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: `[${older}` }).api.previousKeyPeppers, [`[${older}`], 'a comma-list pepper may begin with "["');
  t.ok(Object.isFrozen(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: older }).api.previousKeyPeppers), 'frozen like the rest');
});

// The pepper a rotation moves to (docs/security.md, pepper rotation): checked like KEY_PEPPER,
// which it becomes, and taken as written, so the same secret file gives the same pepper there.
t.test('KEY_PEPPER_NEXT: one pepper, checked like KEY_PEPPER, never one already configured', async (t) => {
  const next = `${'n'.repeat(32)},x\n`;
  const older = 'o'.repeat(32);
  t.same(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_NEXT: next }).api.nextKeyPepper, next, 'a comma and a newline are part of it');
  const both = loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: older, KEY_PEPPER_NEXT: next }).api;
  t.same([both.previousKeyPeppers, both.nextKeyPepper], [[older], next], 'with previous ones too: a rotation may begin before the last one is done');
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_NEXT: ` ${'n'.repeat(31)} ` }).problems, [
    'KEY_PEPPER_NEXT: must be at least 32 characters, whitespace not counted',
  ]);
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_NEXT: PEPPER }).problems, [
    'KEY_PEPPER_NEXT: must not repeat KEY_PEPPER (once every instance has it, KEY_PEPPER takes its value and KEY_PEPPER_NEXT goes)',
  ]);
  t.same(configError(t, { KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: older, KEY_PEPPER_NEXT: older }).problems, [
    'KEY_PEPPER_NEXT: must not be one of KEY_PEPPER_PREVIOUS',
  ]);
  const development = loadConfig(DEV).api.keyPepper;
  t.same(configError(t, { NODE_ENV: 'production', KEY_PEPPER: PEPPER, KEY_PEPPER_NEXT: development }).problems, [
    'KEY_PEPPER_NEXT: is the published development pepper, which KEY_PEPPER may not be',
  ]);
});

t.test('the auth throttle is on by default; a limit of 0 turns that dimension off', async (t) => {
  const throttle = loadConfig({
    ...DEV,
    AUTH_THROTTLE_MAX_FAILURES_PER_IP: '0',
    AUTH_THROTTLE_MAX_FAILURES_PER_KEY: '5',
    AUTH_THROTTLE_WINDOW_MS: '1000',
    AUTH_THROTTLE_MAX_ENTRIES: '10',
    DATABASE_POOL_MAX: '4',
  }).api.authThrottle;
  t.same(
    throttle,
    { maxFailuresPerIp: 0, maxFailuresPerKey: 5, windowMs: 1000, maxEntries: 10, maxVerifyingPerIp: 4, maxLookups: 2 },
    'key reads in flight per address: the pool; from every address: half of it',
  );
  t.equal(loadConfig({ ...DEV, DATABASE_POOL_MAX: '1' }).api.authThrottle.maxLookups, 1, 'at least one');
  t.equal(loadConfig({ ...DEV, AUTH_THROTTLE_MAX_LOOKUPS: '7' }).api.authThrottle.maxLookups, 7, 'AUTH_THROTTLE_MAX_LOOKUPS');
  t.equal(loadConfig({ ...DEV, KEY_CACHE_TTL_MS: '0' }).api.authThrottle.maxLookups, 10, 'no key cache: every verification a read, the whole pool');
  t.equal(loadConfig({ ...DEV, KEY_CACHE_TTL_MS: '0', AUTH_THROTTLE_MAX_LOOKUPS: '3' }).api.authThrottle.maxLookups, 3, 'unless set');
  t.ok(Object.isFrozen(throttle));
});

t.test('the config is deeply frozen', async (t) => {
  const config = loadConfig({ ...DEV, TRUST_PROXY: 'loopback, 10.0.0.0/8' });
  t.ok(Object.isFrozen(config));
  for (const section of [config.database, config.api, config.usage, config.collector]) t.ok(Object.isFrozen(section));
  t.ok(Object.isFrozen(config.api.trustProxy), 'arrays too');
  t.throws(() => {
    (config.api as { port: number }).port = 1;
  }, TypeError);
  t.throws(() => {
    (config.api.trustProxy as string[]).push('0.0.0.0/0');
  }, TypeError);
  t.equal(config.api.port, 3000);
});

t.test('TRUST_PROXY takes a boolean, a hop count or a list of addresses', async (t) => {
  t.equal(loadConfig(DEV).api.trustProxy, false);
  t.equal(loadConfig({ ...DEV, TRUST_PROXY: 'false' }).api.trustProxy, false);
  t.equal(loadConfig({ ...DEV, TRUST_PROXY: 'true' }).api.trustProxy, true);
  t.equal(loadConfig({ ...DEV, TRUST_PROXY: '2' }).api.trustProxy, 2);
  t.same(loadConfig({ ...DEV, TRUST_PROXY: 'loopback' }).api.trustProxy, ['loopback']);
  t.same(loadConfig({ ...DEV, TRUST_PROXY: 'loopback, 10.0.0.0/8' }).api.trustProxy, ['loopback', '10.0.0.0/8']);
  t.same(loadConfig({ ...DEV, TRUST_PROXY: ' 10.0.0.1 , fd00::/8 ' }).api.trustProxy, ['10.0.0.1', 'fd00::/8'], 'entries trimmed');
  t.equal(loadConfig({ ...DEV, TRUST_PROXY: '100' }).api.trustProxy, 100);
});

// ',,' or ' ' trusted no proxy, silently (an empty list); a hop count of 99999999999999999999
// trusted every address a client wrote in X-Forwarded-For.
t.test('TRUST_PROXY: no empty entry, and a hop count of at most 100', async (t) => {
  for (const value of [',,', ' ', 'loopback,', ' 10.0.0.1 ,,fd00::/8 ', ', loopback']) {
    t.same(
      configError(t, { ...DEV, TRUST_PROXY: value }).problems,
      ['TRUST_PROXY: has an empty entry (a stray comma, or nothing but whitespace)'],
      `TRUST_PROXY=${JSON.stringify(value)}`,
    );
  }
  for (const value of ['101', '99999999999999999999']) {
    t.same(
      configError(t, { ...DEV, TRUST_PROXY: value }).problems,
      ['TRUST_PROXY: a hop count must be at most 100 (more trusts any address a client puts in X-Forwarded-For)'],
      `TRUST_PROXY=${value}`,
    );
  }
});

t.test('a value that is not an address is refused at load time, naming TRUST_PROXY', async (t) => {
  t.match(configError(t, { TRUST_PROXY: 'not-an-address' }).message, /TRUST_PROXY: "not-an-address" is not an IP/);
  t.match(configError(t, { TRUST_PROXY: 'TRUE' }).message, /TRUST_PROXY/);
  t.match(configError(t, { TRUST_PROXY: '10.0.0.0/33' }).message, /TRUST_PROXY/);
  t.match(configError(t, { TRUST_PROXY: '10.0.0.0/8/1' }).message, /TRUST_PROXY/);
  t.same(loadConfig({ ...DEV, TRUST_PROXY: '10.0.0.0/255.0.0.0, fd00::/8' }).api.trustProxy, ['10.0.0.0/255.0.0.0', 'fd00::/8']);
  for (const value of [' ', '0x10', '1e3']) t.match(configError(t, { PORT: value }).message, /PORT: must be a whole number/, `PORT=${JSON.stringify(value)}`);
});

// Express compiles the list with proxy-addr, which refused these at start ("invalid range on
// address"): the API died after trying the database, naming no variable.
t.test('TRUST_PROXY: a range Express refuses is refused at load, naming the variable', async (t) => {
  const app = express();
  for (const value of ['10.0.0.0/0', '::/0', '10.0.0.0/255.0.255.0', '10.0.0.0/0.0.0.0', 'loopback, 10.0.0.0/0']) {
    t.throws(() => app.set('trust proxy', value.split(', ')), /invalid range on address/, `Express refuses ${value}`);
    const { problems } = configError(t, { ...DEV, TRUST_PROXY: value });
    t.equal(problems.length, 1, value);
    t.match(problems[0], /^TRUST_PROXY: ".+" is not an IP, a CIDR \(a prefix of 1-32, 1-128 for IPv6, or a netmask of contiguous ones/, value);
  }
  // The forms the README and docs/deployment.md give, and the edges of each range: loaded, and taken by Express.
  const valid = ['false', 'true', '0', '2', '100', 'loopback', 'linklocal', 'uniquelocal', 'loopback, 10.0.0.0/8', '10.0.0.1', 'fd00::/8'];
  valid.push('10.0.0.0/1', '10.0.0.0/32', '::/1', '::1/128', '10.0.0.0/255.0.0.0', '10.0.0.0/128.0.0.0', '10.0.0.1/255.255.255.255');
  for (const value of valid) {
    const { trustProxy } = loadConfig({ ...DEV, TRUST_PROXY: value }).api;
    t.doesNotThrow(() => app.set('trust proxy', trustProxy), `TRUST_PROXY=${value}`);
  }
});

t.test('each kind of bad value fails with the variable name', async (t) => {
  const cases: Array<[string, Record<string, string>]> = [
    ['not a number', { PORT: 'abc' }],
    ['port out of range', { PORT: '70000' }],
    ['metrics port out of range', { API_METRICS_PORT: '65536' }],
    ['not an integer', { PORT: '3000.5' }],
    ['negative', { DATABASE_POOL_MAX: '-1' }],
    ['zero where positive is required', { USAGE_MAX_ENTRIES: '0' }],
    ['above the maximum', { KEY_CACHE_TTL_MS: '60001' }],
    ['not a postgres URL', { DATABASE_URL: 'mysql://u:p@localhost/db' }],
    ['not a URL at all', { DATABASE_URL: 'localhost:5432' }],
    ['not an environment name', { NODE_ENV: 'Prod uction' }],
    ['unknown log level', { LOG_LEVEL: 'verbose' }],
    ['not a boolean', { USAGE_TRACKING: 'yes' }],
    ['pepper too short', { KEY_PEPPER: 'short' }],
    ['rotation grace above 7 days', { ROTATION_GRACE_SECONDS: '604801' }],
    ['idempotency window above 7 days', { IDEMPOTENCY_KEY_TTL_SECONDS: '604801' }],
    ['idempotency window below a minute', { IDEMPOTENCY_KEY_TTL_SECONDS: '59' }],
    ['throttle limit not a number', { AUTH_THROTTLE_MAX_FAILURES_PER_IP: 'many' }],
    ['throttle limit negative', { AUTH_THROTTLE_MAX_FAILURES_PER_KEY: '-1' }],
    ['throttle window of zero', { AUTH_THROTTLE_WINDOW_MS: '0' }],
    ['throttle map of zero entries', { AUTH_THROTTLE_MAX_ENTRIES: '0' }],
    ['no key reads at once', { AUTH_THROTTLE_MAX_LOOKUPS: '0' }],
    ['webhook private targets not a boolean', { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'yes' }],
    ['webhook timeout too short', { WEBHOOK_TIMEOUT_MS: '99' }],
    ['webhook attempts above 12', { WEBHOOK_MAX_ATTEMPTS: '13' }],
    ['webhook attempts zero', { WEBHOOK_MAX_ATTEMPTS: '0' }],
    ['webhook poll interval too short', { WEBHOOK_POLL_INTERVAL_MS: '5' }],
    ['connect timeout below 100 ms', { DATABASE_CONNECT_TIMEOUT_MS: '50' }],
    ['relay without a port', { COLLECTOR_RELAY_TO: 'statsd.internal' }],
    ['retry cap of zero keys', { COLLECTOR_MAX_RETRY_KEYS: '0' }],
    ['relay port out of range', { COLLECTOR_RELAY_TO: '127.0.0.1:65536' }],
    ['relay port 0', { COLLECTOR_RELAY_TO: '127.0.0.1:0' }],
    ['relay IPv6 without brackets', { COLLECTOR_RELAY_TO: '::1:8125' }],
    ['relay IPv4 in brackets', { COLLECTOR_RELAY_TO: '[127.0.0.1]:8125' }],
    ['relay with a scheme', { COLLECTOR_RELAY_TO: 'udp://127.0.0.1:8125' }],
    ['relay with a space', { COLLECTOR_RELAY_TO: 'stats d:8125' }],
    ['timestamp window above a day', { COLLECTOR_TIMESTAMP_WINDOW_SECONDS: '86401' }],
    ['timestamp window negative', { COLLECTOR_TIMESTAMP_WINDOW_SECONDS: '-1' }],
    ['no receivers', { COLLECTOR_RECEIVERS: '0' }],
    ['more receivers than the limit', { COLLECTOR_RECEIVERS: '17' }],
    ['lock timeout above an hour', { COLLECTOR_LOCK_TIMEOUT_MS: '3600001' }],
    ['lock timeout negative', { COLLECTOR_LOCK_TIMEOUT_MS: '-1' }],
    ['known keys trusted above an hour', { COLLECTOR_KNOWN_KEYS_TTL_MS: '3600001' }],
    ['known keys TTL not a number', { COLLECTOR_KNOWN_KEYS_TTL_MS: 'a minute' }],
    ['key list refreshed less than hourly', { COLLECTOR_KEY_LIST_REFRESH_MS: '3600001' }],
    ['key list refresh not a number', { COLLECTOR_KEY_LIST_REFRESH_MS: '5s' }],
    ['usage log neither a flag nor auto', { COLLECTOR_USAGE_LOG: 'sometimes' }],
    ['usage log from zero keys', { COLLECTOR_USAGE_LOG_MIN_KEYS: '0' }],
    ['host with a trailing space', { HOST: '127.0.0.1 ' }],
    ['host of a space', { COLLECTOR_HOST: ' ' }],
    ['metrics host with a leading tab', { API_METRICS_HOST: '\tlocalhost' }],
    ['host with a character no name has', { COLLECTOR_METRICS_HOST: 'metrics!.internal' }],
    ['host with a comment after it', { COLLECTOR_HOST: '127.0.0.1 # loopback' }],
    ['IPv6 host in brackets', { HOST: '[::1]' }],
    ['host with a port', { API_METRICS_HOST: '127.0.0.1:9103' }],
    ['host with a scheme', { COLLECTOR_HOST: 'udp://127.0.0.1' }],
    ['host an IPv4 address out of range', { COLLECTOR_HOST: '10.0.0.256' }],
    ['host a short IPv4 form', { HOST: '127.1' }],
    ['host with an empty label', { HOST: 'api..internal' }],
    ['relay to a name with a slash', { COLLECTOR_RELAY_TO: 'stats/d:8125' }],
    ['relay to an IPv4 address out of range', { COLLECTOR_RELAY_TO: '10.0.0.256:8125' }],
    ['receive buffer a socket cannot take', { COLLECTOR_RECV_BUFFER_BYTES: String(2 ** 31) }],
    ['receive buffer of zero bytes', { COLLECTOR_RECV_BUFFER_BYTES: '0' }],
    ['usage kept for less than the spike baseline', { USAGE_RETENTION_DAYS: '7', NODE_ENV: 'test' }],
    ['event summary longer than the events are kept', { EVENTS_SUMMARY_DAYS: '31', EVENTS_RETENTION_DAYS: '30', NODE_ENV: 'test' }],
  ];
  for (const [kind, env] of cases) {
    const [name] = Object.keys(env);
    const error = configError(t, env);
    t.match(error.message, new RegExp(`\\b${name}: `), `${kind}: the message names ${name}`);
    t.same(error.problems.length, 1, `${kind}: only ${name} is reported`);
  }
});

// An hour the retention had deleted counted as 0 uses in key.spike's baseline: with 3 days kept,
// every key busier than EVENTS_SPIKE_MIN_USES spiked every hour.
t.test('with events on, USAGE_RETENTION_DAYS keeps every hour a spike is compared with', async (t) => {
  const DAY_MS = 86_400_000;
  const leastAccepted = (env: Record<string, string>) => {
    for (let days = 1; days <= 3650; days++) {
      try {
        return { days, config: loadConfig({ NODE_ENV: 'test', ...env, USAGE_RETENTION_DAYS: String(days) }) };
      } catch (error) {
        t.match((error as ConfigError).problems, [/^USAGE_RETENTION_DAYS: must be at least \d+ while EVENTS_ENABLED is true \(key\.spike /]);
      }
    }
    throw new Error('no USAGE_RETENTION_DAYS accepted');
  };
  // The worst case: a use as old as the window allows, in the last millisecond of its hour (the
  // windows below are whole hours, so `now` is the last millisecond of one too).
  const now = Date.parse('2026-03-10T12:59:59.999Z');
  for (const window of [0, 3600, 82_800, 86_400]) {
    const { days, config } = leastAccepted({ COLLECTOR_TIMESTAMP_WINDOW_SECONDS: String(window) });
    const used = now - config.collector.timestampWindowMs;
    const farthestBaselineHour = used - (used % HOUR_MS) - BASELINE_DAYS * DAY_MS;
    t.ok(farthestBaselineHour >= now - days * DAY_MS, `window ${window} s: ${days} days keep the farthest baseline hour`);
    t.ok(farthestBaselineHour < now - (days - 1) * DAY_MS, `window ${window} s: ${days - 1} would delete it`);
  }
  t.equal(leastAccepted({}).days, BASELINE_DAYS + 1, 'one day more than the baseline with the default window');
  t.equal(leastAccepted({ EVENTS_ENABLED: 'false' }).days, 1, 'without events, any retention');
  t.equal(loadConfig({ NODE_ENV: 'test' }).collector.retentionDays, 90, 'the default is enough');
});

t.test('EVENTS_SUMMARY_DAYS cannot exceed EVENTS_RETENTION_DAYS: the usage list would claim days whose events are deleted', async (t) => {
  const env = { NODE_ENV: 'test', EVENTS_RETENTION_DAYS: '30' };
  t.equal(loadConfig({ ...env, EVENTS_SUMMARY_DAYS: '30' }).api.eventSummaryDays, 30);
  t.equal(loadConfig({ NODE_ENV: 'test', EVENTS_RETENTION_DAYS: '3' }).api.eventSummaryDays, 3, 'unset, the default follows a shorter retention');
  t.equal(loadConfig({ NODE_ENV: 'test' }).api.eventSummaryDays, 7, 'else 7');
  for (const enabled of ['true', 'false']) {
    t.same(
      configError(t, { ...env, EVENTS_SUMMARY_DAYS: '31', EVENTS_ENABLED: enabled }).problems,
      [
        'EVENTS_SUMMARY_DAYS: must be at most EVENTS_RETENTION_DAYS (30): events older than that are deleted, and the usage list would claim to count days it cannot',
      ],
      `EVENTS_ENABLED=${enabled}: events are deleted either way`,
    );
  }
  t.same(loadConfig({ NODE_ENV: 'test' }).api.eventSummaryDays, 7, 'the defaults (7 of 90) pass');
});

// Node refuses a receive buffer of 2^31 bytes or more, and the collector went on with the kernel's
// default buffer, a warning in its log the only sign.
t.test('COLLECTOR_RECV_BUFFER_BYTES: up to the largest size a socket accepts', async (t) => {
  const largest = String(2 ** 31 - 1);
  t.equal(loadConfig({ ...DEV, COLLECTOR_RECV_BUFFER_BYTES: largest }).collector.recvBufferBytes, 2 ** 31 - 1);
  t.same(configError(t, { ...DEV, COLLECTOR_RECV_BUFFER_BYTES: String(2 ** 31) }).problems, [
    'COLLECTOR_RECV_BUFFER_BYTES: must be at most 2147483647 (the largest a socket accepts; the kernel grants at most net.core.rmem_max)',
  ]);
  // Elsewhere (macOS' kern.ipc.maxsockbuf) a size above the kernel's cap is an error, not capped.
  t.test('the bound is the largest size Linux takes', { skip: process.platform !== 'linux' && 'not Linux' }, async (t) => {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((bound) => socket.bind(0, '127.0.0.1', bound));
    t.teardown(() => socket.close());
    t.doesNotThrow(() => socket.setRecvBufferSize(2 ** 31 - 1), 'taken, and capped at net.core.rmem_max');
    t.throws(() => socket.setRecvBufferSize(2 ** 31), { code: 'ERR_SOCKET_BUFFER_SIZE' }, 'one more is refused');
  });
});

t.test("the reply timeout must outlast the collector's lock wait, which hears nothing from the server", async (t) => {
  const base = { NODE_ENV: 'test' };
  t.equal(loadConfig(base).database.replyTimeoutMs, 300_000, 'five minutes by default');
  const error = configError(t, { ...base, DATABASE_REPLY_TIMEOUT_MS: '120000' });
  t.match(error.message, /\bDATABASE_REPLY_TIMEOUT_MS: must be at least 500 ms longer than COLLECTOR_LOCK_TIMEOUT_MS \(120000 ms\), or 0/);
  t.match(
    configError(t, { ...base, DATABASE_REPLY_TIMEOUT_MS: '120499' }).message,
    /500 ms longer than COLLECTOR_LOCK_TIMEOUT_MS/,
    'a reply timeout barely longer still races the lock wait',
  );
  t.equal(loadConfig({ ...base, DATABASE_REPLY_TIMEOUT_MS: '120000', COLLECTOR_LOCK_TIMEOUT_MS: '60000' }).database.replyTimeoutMs, 120_000);
  t.equal(loadConfig({ ...base, DATABASE_REPLY_TIMEOUT_MS: '0' }).database.replyTimeoutMs, 0, '0: no limit, whatever the lock wait');
});

// The README said to keep it longer than the API's statement limit, and nothing refused it: a
// slow statement lost its connection instead of the 503 that names the setting.
t.test("the reply timeout must outlast the API's statement limit", async (t) => {
  const base = { NODE_ENV: 'test', COLLECTOR_LOCK_TIMEOUT_MS: '1000' };
  const error = configError(t, { ...base, DATABASE_REPLY_TIMEOUT_MS: '20499', API_STATEMENT_TIMEOUT_MS: '20000' });
  t.match(error.message, /\bDATABASE_REPLY_TIMEOUT_MS: must be at least 500 ms longer than API_STATEMENT_TIMEOUT_MS \(20000 ms\), or 0/);
  t.notMatch(error.message, /COLLECTOR_LOCK_TIMEOUT_MS/, 'the lock wait is shorter: not named');
  t.equal(loadConfig({ ...base, DATABASE_REPLY_TIMEOUT_MS: '20500', API_STATEMENT_TIMEOUT_MS: '20000' }).database.replyTimeoutMs, 20_500);
  t.equal(loadConfig({ ...base, DATABASE_REPLY_TIMEOUT_MS: '20000', API_STATEMENT_TIMEOUT_MS: '0' }).api.statementTimeoutMs, 0, "0: the server's own limit");
  const noLimits = { NODE_ENV: 'test', COLLECTOR_LOCK_TIMEOUT_MS: '0', API_STATEMENT_TIMEOUT_MS: '0', DATABASE_REPLY_TIMEOUT_MS: '100' };
  t.equal(loadConfig(noLimits).database.replyTimeoutMs, 100, 'with neither limit set, the reply timeout is the only bound, however short');
});

t.test('several receivers refuse datagram signing: each would keep its own replay cache', async (t) => {
  const secret = 's'.repeat(32);
  const error = configError(t, { NODE_ENV: 'test', COLLECTOR_RECEIVERS: '2', USAGE_SIGNING_SECRET: secret });
  t.match(error.message, /\bCOLLECTOR_RECEIVERS: must be 1 when USAGE_SIGNING_SECRET is set/);
  t.equal(loadConfig({ NODE_ENV: 'test', COLLECTOR_RECEIVERS: '1', USAGE_SIGNING_SECRET: secret }).collector.receivers, 1);
  t.equal(loadConfig({ NODE_ENV: 'test', COLLECTOR_RECEIVERS: '2' }).collector.receivers, 2);
});

// Alone, the previous secret turned the collector's verification on while the API signed
// nothing: every datagram was refused, and every use lost.
t.test('USAGE_SIGNING_PREVIOUS_SECRET needs USAGE_SIGNING_SECRET, and differs from it', async (t) => {
  const secret = 's'.repeat(32);
  const alone = configError(t, { NODE_ENV: 'test', USAGE_SIGNING_PREVIOUS_SECRET: secret });
  t.same(alone.problems, [
    'USAGE_SIGNING_PREVIOUS_SECRET: set without USAGE_SIGNING_SECRET (the API would sign nothing and the collector refuse every datagram)',
  ]);
  const same = configError(t, { NODE_ENV: 'test', USAGE_SIGNING_SECRET: secret, USAGE_SIGNING_PREVIOUS_SECRET: secret });
  t.same(same.problems, ['USAGE_SIGNING_PREVIOUS_SECRET: must differ from USAGE_SIGNING_SECRET']);
  const rotating = loadConfig({ NODE_ENV: 'test', USAGE_SIGNING_SECRET: secret, USAGE_SIGNING_PREVIOUS_SECRET: 'p'.repeat(32) });
  t.same(rotating.collector.signingSecrets, [secret, 'p'.repeat(32)]);
});

t.test('every bad variable is reported at once', async (t) => {
  const error = configError(t, { PORT: 'abc', LOG_LEVEL: 'loud', DATABASE_URL: 'mysql://x' });
  t.same(error.problems.map((problem) => problem.split(':')[0]).sort(), ['DATABASE_URL', 'LOG_LEVEL', 'PORT']);
  t.match(error.message, /^Invalid configuration: /);
});

t.test('the message never echoes a bad value (it may be a secret)', async (t) => {
  const almostPepper = 'hunter2-not-long-enough';
  t.notMatch(configError(t, { KEY_PEPPER: almostPepper }).message, almostPepper);
  t.notMatch(configError(t, { DATABASE_URL: 'mysql://admin:s3cr3t-pw@db/x' }).message, 's3cr3t-pw');
});

// Only a postgres:// prefix was checked: a port out of range loaded and failed at start with a bare
// "Invalid URL" naming no variable, a trailing space became part of the database's name.
t.test('DATABASE_URL: a URL pg can read, a port in range and no whitespace', async (t) => {
  const accepted = [
    // No host: pg's PGHOST, else localhost.
    'postgres:///keyusage',
    'postgres://u:p@/keyusage',
    'postgres://u:p@db.internal:5432/keyusage',
    'postgresql://u:p@db.internal/keyusage',
    'postgres://u:p%20w@[::1]:65535/k?sslmode=require',
    'postgres://u:sekret@/db?host=/run/postgresql',
    'postgres://u@/db?host=%2Frun%2Fpostgresql',
    'postgres:///db?host=/tmp',
    'postgres://%2Frun%2Fpostgresql/db',
    'postgres://h:/db',
    'postgres://u:p@h:1/db?port=5433',
  ];
  for (const url of accepted) {
    t.equal(loadConfig({ ...DEV, DATABASE_URL: url }).database.url, url, url);
    t.equal(loadDatabaseConfig({ DATABASE_URL: url }).url, url, `${url}, for npm run migrate too`);
  }
  const refused: Array<[url: string, problem: string]> = [
    ['postgres://u:pw-99@h:99999/db', 'must have a port from 1 to 65535'],
    ['postgres://u:pw-99@h:0/db', 'must have a port from 1 to 65535'],
    ['postgres://u:pw-99@h:54x/db', 'must have a port from 1 to 65535'],
    ['postgres://u:pw-99@[::1]:70000/db', 'must have a port from 1 to 65535'],
    ['postgres://u:pw-99@h/db?port=99999', 'must have a port (?port=) from 1 to 65535'],
    ['postgres://u:pw-99@h/db ', 'must not contain whitespace (percent-encode a space in a password as %20)'],
    ['postgres://h h/db', 'must not contain whitespace (percent-encode a space in a password as %20)'],
    [' postgres://h/db', 'must be a postgres:// URL'],
    ['postgres://u:pw-99@h/db\n', 'must not contain whitespace (percent-encode a space in a password as %20)'],
    ['postgres://u:pw-99@h<x/db', 'is not a valid URL (percent-encode any "@", ":", "/", "?" or "#" in the user name or password)'],
  ];
  for (const [url, problem] of refused) {
    const error = configError(t, { ...DEV, DATABASE_URL: url });
    t.same(error.problems, [`DATABASE_URL: ${problem}`], JSON.stringify(url));
    t.notMatch(error.message, 'pw-99', 'the password is never quoted');
    t.throws(() => loadDatabaseConfig({ DATABASE_URL: url }), new ConfigError([`DATABASE_URL: ${problem}`]), 'npm run migrate refuses it too');
  }
});

t.test('DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: a minute by default, 0 leaves the server setting, at most a day', async (t) => {
  t.equal(loadConfig(DEV).database.idleInTransactionTimeoutMs, 60_000);
  t.equal(loadDatabaseConfig({}).idleInTransactionTimeoutMs, 60_000, 'in the database section npm run migrate reads');
  t.equal(loadConfig({ ...DEV, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '0' }).database.idleInTransactionTimeoutMs, 0);
  t.equal(loadConfig({ ...DEV, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '86400000' }).database.idleInTransactionTimeoutMs, 86_400_000);
  for (const bad of ['86400001', '-1', '1m', ' ']) {
    t.match(configError(t, { ...DEV, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: bad }).problems, [/^DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: /], bad);
  }
});

// 40 spaces passed the length check as a pepper or a signing secret.
t.test('KEY_PEPPER and USAGE_SIGNING_SECRET: at least 32 characters other than whitespace', async (t) => {
  const problem = 'must be at least 32 characters, whitespace not counted';
  const cases = {
    // A signing secret is refused with whitespace at either end (see the next test) before its length counts.
    KEY_PEPPER: [' '.repeat(40), `${'x'.repeat(31)}${' '.repeat(9)}`, `\t${'x'.repeat(16)} ${'y'.repeat(15)}\n`],
    USAGE_SIGNING_SECRET: [`x${' '.repeat(38)}y`, `${'x'.repeat(16)}${' '.repeat(9)}${'y'.repeat(15)}`],
  };
  for (const [name, values] of Object.entries(cases)) {
    for (const value of values) {
      const error = configError(t, { NODE_ENV: 'production', KEY_PEPPER: PEPPER, [name]: value });
      t.same(error.problems, [`${name}: ${problem}`], `${name}=${JSON.stringify(value)}`);
    }
  }
  // A secret file's newline is kept, not refused: the pepper is the file's bytes.
  const filed = `${PEPPER}\n`;
  t.equal(loadConfig({ NODE_ENV: 'production', KEY_PEPPER: filed }).api.keyPepper, filed);
  // A weak pepper or secret accepted before can still be rotated away: the previous ones keep the plain check.
  const weak = `x${' '.repeat(38)}y`;
  t.same(loadConfig({ KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: JSON.stringify([weak]) }).api.previousKeyPeppers, [weak]);
  t.same(loadConfig({ NODE_ENV: 'test', USAGE_SIGNING_SECRET: PEPPER, USAGE_SIGNING_PREVIOUS_SECRET: weak }).collector.signingSecrets, [PEPPER, weak]);
});

// The MAC is taken over the secret's bytes: an API reading it from a file with a trailing newline
// and a collector from an environment variable both started, and every datagram was dropped as a
// bad signature, every use lost, the collector's /healthz 200.
t.test('USAGE_SIGNING_SECRET and USAGE_SIGNING_PREVIOUS_SECRET: no whitespace at either end, which the other side would lack', async (t) => {
  const secret = 'k'.repeat(40);
  const why = 'must not begin or end with whitespace (a trailing newline from a secret file?): the API and the collector must hold the same bytes';
  for (const value of [`${secret}\n`, `${secret} `, ` ${secret}`, `\t${secret}`, `${secret}\r\n`]) {
    t.same(configError(t, { NODE_ENV: 'test', USAGE_SIGNING_SECRET: value }).problems, [`USAGE_SIGNING_SECRET: ${why}`], JSON.stringify(value));
    t.same(
      configError(t, { NODE_ENV: 'test', USAGE_SIGNING_SECRET: secret, USAGE_SIGNING_PREVIOUS_SECRET: value }).problems,
      [`USAGE_SIGNING_PREVIOUS_SECRET: ${why}`],
      `previous ${JSON.stringify(value)}`,
    );
  }
  const previous = 'j'.repeat(40);
  t.same(loadConfig({ NODE_ENV: 'test', USAGE_SIGNING_SECRET: secret, USAGE_SIGNING_PREVIOUS_SECRET: previous }).collector.signingSecrets, [secret, previous]);
  t.equal(loadConfig({ NODE_ENV: 'production', KEY_PEPPER: PEPPER, COLLECTOR_HOST: '10.0.0.5', USAGE_SIGNING_SECRET: secret }).usage.signingSecret, secret);
});

// Set explicitly, the published development pepper passed the production guard, which only asked
// for a KEY_PEPPER.
t.test('outside development and test, KEY_PEPPER is never the published development pepper', async (t) => {
  const development = loadConfig(DEV).api.keyPepper;
  for (const env of [{}, { NODE_ENV: 'production' }, { NODE_ENV: 'staging' }] as Array<Record<string, string>>) {
    for (const pepper of [development, `${development}\n`]) {
      const { problems } = configError(t, { ...env, KEY_PEPPER: pepper });
      t.equal(problems.length, 1, `refused with ${JSON.stringify(env)}`);
      t.match(problems[0], /^KEY_PEPPER: is the published development pepper, allowed only when NODE_ENV is development or test\. /);
      t.match(problems[0], /a new KEY_PEPPER .* and the development pepper in KEY_PEPPER_PREVIOUS/, 'says how to move off it');
      t.match(problems[0], /rehashed with the new pepper on its next use/);
      t.notMatch(problems[0], development, 'never quoting it');
    }
  }
  t.equal(loadConfig({ NODE_ENV: 'test', KEY_PEPPER: development }).api.keyPepper, development, 'allowed in test');
  const moved = loadConfig({ NODE_ENV: 'production', KEY_PEPPER: PEPPER, KEY_PEPPER_PREVIOUS: development }).api;
  t.same([moved.keyPepper, moved.previousKeyPeppers], [PEPPER, [development]], 'the previous list may keep it, so keys move on use');
});

// PROCFILE ('Procfile ' with a stray space, a folder) failed with a bare ENOENT or EISDIR.
// '.data/postgres ' (a stray space from an env file) made a new, empty cluster beside the real one.
t.test('EMBEDDED_PG_DIR: no whitespace at either end', async (t) => {
  for (const value of [' ', '.data/postgres ', ' .data/postgres', '.data/postgres\n']) {
    for (const load of [loadConfig, loadDatabaseConfig]) {
      t.throws(
        () => load({ ...DEV, EMBEDDED_PG_DIR: value }),
        { message: 'Invalid configuration: EMBEDDED_PG_DIR: must not begin or end with whitespace' },
        `${load.name}: ${JSON.stringify(value)}`,
      );
    }
  }
  t.equal(loadDatabaseConfig({ EMBEDDED_PG_DIR: '/srv/my data/pg' }).embeddedDir, '/srv/my data/pg', 'a space inside is a name');
  t.equal(loadDatabaseConfig({ EMBEDDED_PG_DIR: '' }).embeddedDir, '.data/postgres', 'empty is unset, as for every variable');
});

t.test('PROCFILE: a file npm start cannot read is named, with the variable', async (t) => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'procfile-'));
  t.teardown(() => fs.rmSync(folder, { recursive: true, force: true }));
  const missing = path.join(folder, 'Procfile ');
  t.throws(() => readProcfile(missing), { message: `cannot read the Procfile ${JSON.stringify(missing)} (PROCFILE): ENOENT: no such file or directory` });
  t.throws(() => readProcfile(folder), {
    message: `cannot read the Procfile ${JSON.stringify(folder)} (PROCFILE): EISDIR: illegal operation on a directory, read`,
  });
  const procfile = path.join(folder, 'Procfile');
  fs.writeFileSync(procfile, 'web: w\ncollector: c\n');
  t.same(readProcfile(procfile), [
    { name: 'web', command: 'w' },
    { name: 'collector', command: 'c' },
  ]);
});

t.test('the development pepper only where the environment says development or test', async (t) => {
  for (const env of [{} as Record<string, string>, { NODE_ENV: 'production' }, { NODE_ENV: 'staging' }, { NODE_ENV: '' }]) {
    const error = configError(t, env);
    t.same(error.problems, ['KEY_PEPPER: required unless NODE_ENV is development or test'], `refused with ${JSON.stringify(env)}`);
  }
  t.equal(loadConfig({ NODE_ENV: 'production', KEY_PEPPER: PEPPER }).api.keyPepper, PEPPER);
  t.equal(loadConfig({ NODE_ENV: 'staging', KEY_PEPPER: PEPPER }).env, 'staging', 'any environment name, given a pepper');
  t.equal(loadConfig({ KEY_PEPPER: PEPPER }).env, undefined);
  t.equal(loadConfig({ NODE_ENV: 'test' }).env, 'test', 'test and development fall back to the development pepper');
  t.ok(loadConfig(DEV).api.keyPepper.length >= 32);
});

t.test('withDevelopmentDefault: development only on the embedded database, and only when unset', async (t) => {
  t.same(withDevelopmentDefault({}), { NODE_ENV: 'development' });
  t.same(withDevelopmentDefault({ NODE_ENV: 'production' }), { NODE_ENV: 'production' });
  const external = { DATABASE_URL: 'postgres://u:p@db/k' };
  t.same(withDevelopmentDefault(external), external, 'an external database may hold real keys');
});

t.test('"loopback" is an IP address in 127.0.0.0/8 or ::1, never a name that starts like one', async (t) => {
  const production = { NODE_ENV: 'production', KEY_PEPPER: PEPPER };
  for (const host of ['127.0.0.1', '127.255.0.9', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', '::ffff:7f00:1']) {
    t.equal(loadConfig({ ...production, COLLECTOR_HOST: host }).collector.host, host, `${host} is loopback: no signing secret needed`);
  }
  for (const host of ['127.attacker.example', '127.0.0.1.nip.io', 'localhost', '::ffff:10.0.0.1', '0.0.0.0', '::', '10.0.0.5']) {
    t.match(configError(t, { ...production, COLLECTOR_HOST: host }).message, /USAGE_SIGNING_SECRET: required/, `${host} is not loopback`);
  }
  t.match(configError(t, { KEY_PEPPER: PEPPER, COLLECTOR_HOST: '10.0.0.5' }).message, /USAGE_SIGNING_SECRET/, 'an unset NODE_ENV is not development');
  t.equal(loadConfig({ NODE_ENV: 'test', COLLECTOR_HOST: '10.0.0.5' }).collector.host, '10.0.0.5');
});

t.test('host variables: an IP address (IPv6 without brackets) or a host name, nothing around it', async (t) => {
  const hosts = [
    '127.0.0.1',
    '0.0.0.0',
    '::',
    '::1',
    'fe80::1%eth0',
    '::ffff:127.0.0.1',
    'localhost',
    'LOCALHOST',
    'db1',
    'collector.internal',
    'my-host_1.example.com.',
  ];
  for (const name of ['HOST', 'API_METRICS_HOST', 'COLLECTOR_HOST', 'COLLECTOR_METRICS_HOST']) {
    for (const value of hosts) t.doesNotThrow(() => loadConfig({ ...DEV, [name]: value }), `${name}=${value}`);
  }
  t.equal(loadConfig({ ...DEV, HOST: '::1' }).api.host, '::1');
  t.equal(loadConfig({ ...DEV, COLLECTOR_METRICS_HOST: 'localhost' }).collector.metricsHost, 'localhost');
  // An env file's trailing space made a loopback collector look remote: the guard asked for a signing secret.
  const production = { NODE_ENV: 'production', KEY_PEPPER: PEPPER };
  t.same(configError(t, { ...production, COLLECTOR_HOST: '127.0.0.1 ' }).problems, ['COLLECTOR_HOST: must not begin or end with whitespace']);
  t.same(configError(t, { ...production, HOST: '[::1]' }).problems, ['HOST: must be a host name or an IP address (IPv6 without brackets)']);
});

t.test('COLLECTOR_RELAY_TO: host:port, IPv6 in brackets; unset means no relay', async (t) => {
  const env = { ...DEV, NODE_ENV: 'test' };
  t.equal(loadConfig(env).collector.relayTo, undefined);
  const cases: Array<[string, { host: string; port: number }]> = [
    ['127.0.0.1:9125', { host: '127.0.0.1', port: 9125 }],
    ['statsd.internal:8125', { host: 'statsd.internal', port: 8125 }],
    ['localhost:1', { host: 'localhost', port: 1 }],
    ['[::1]:9125', { host: '::1', port: 9125 }],
    ['[2001:db8::7]:65535', { host: '2001:db8::7', port: 65535 }],
  ];
  for (const [value, expected] of cases) t.strictSame(loadConfig({ ...env, COLLECTOR_RELAY_TO: value }).collector.relayTo, expected, value);
  t.ok(Object.isFrozen(loadConfig({ ...env, COLLECTOR_RELAY_TO: '127.0.0.1:9125' }).collector.relayTo), 'frozen like the rest');
  for (const own of ['127.0.0.1:8125', 'localhost:8125', '[::1]:8125']) {
    t.match(configError(t, { ...env, COLLECTOR_RELAY_TO: own }).message, /COLLECTOR_RELAY_TO: .* the collector's own address/, `${own} would relay to itself`);
  }
  t.equal(
    loadConfig({ ...env, COLLECTOR_RELAY_TO: '127.0.0.1:8125', COLLECTOR_PORT: '8126' }).collector.relayTo?.port,
    8125,
    'the default port of a collector on another port is fine',
  );
  // A collector on a wildcard address hears loopback too (fails without the fix).
  const selfLoops: Array<[host: string, relay: string]> = [
    ['0.0.0.0', '127.0.0.1:8125'],
    ['0.0.0.0', '127.1.2.3:8125'],
    ['0.0.0.0', 'localhost:8125'],
    ['0.0.0.0', '0.0.0.0:8125'],
    ['::', '[::1]:8125'],
    ['::', '127.0.0.1:8125'],
    ['::', 'localhost:8125'],
    ['::', '0.0.0.0:8125'],
    ['0:0:0:0:0:0:0:0', '[::1]:8125'],
    // An IPv4-mapped destination is its IPv4 address (fails without the fix).
    ['127.0.0.1', '[::ffff:127.0.0.1]:8125'],
    ['127.0.0.1', '[0:0:0:0:0:ffff:7f00:1]:8125'],
    ['0.0.0.0', '[::ffff:127.0.0.1]:8125'],
    ['127.0.0.1', '[::ffff:127.0.0.1%eth0]:8125'],
    // …and so is the collector's (fails with only the destination's mapped).
    ['::ffff:10.0.0.5', '[::ffff:10.0.0.5]:8125'],
    ['::ffff:10.0.0.5', '10.0.0.5:8125'],
    ['10.0.0.5', '[::ffff:a00:5]:8125'],
    // Linux delivers a datagram sent to a wildcard address on its family's loopback address (fails without the fix).
    ['127.0.0.1', '0.0.0.0:8125'],
    ['::ffff:127.0.0.1', '0.0.0.0:8125'],
    ['127.0.0.1', '[::ffff:0.0.0.0]:8125'],
    ['::1', '[::]:8125'],
    ['0:0:0:0:0:0:0:1', '[0:0:0:0:0:0:0:0]:8125'],
  ];
  for (const [host, relay] of selfLoops) {
    t.same(
      configError(t, { ...env, COLLECTOR_HOST: host, COLLECTOR_RELAY_TO: relay }).problems,
      ["COLLECTOR_RELAY_TO: is the collector's own address (COLLECTOR_HOST:COLLECTOR_PORT); relayed lines would come back for ever"],
      `COLLECTOR_HOST=${host} hears ${relay}`,
    );
  }
  const elsewhere: Array<[host: string, relay: string]> = [
    ['0.0.0.0', '[::1]:8125'], // an IPv4 socket hears no IPv6 datagram
    ['0.0.0.0', '127.0.0.1:8126'],
    ['::', 'localhost:9125'],
    ['127.0.0.1', '127.0.0.2:8125'], // bound to one loopback address, not the others
    ['127.0.0.1', '[::ffff:127.0.0.2]:8125'],
    ['127.0.0.1', '[::]:8125'], // :: is delivered on ::1, which a 127.0.0.1 socket does not hear
    ['::1', '0.0.0.0:8125'], // 0.0.0.0 on 127.0.0.1
    ['127.0.0.2', '0.0.0.0:8125'], // on 127.0.0.1 only
    ['127.0.0.1', '0.0.0.0:8126'],
  ];
  for (const [host, relay] of elsewhere) {
    t.ok(loadConfig({ ...env, COLLECTOR_HOST: host, COLLECTOR_RELAY_TO: relay }).collector.relayTo, `COLLECTOR_HOST=${host} does not hear ${relay}`);
  }
});

t.test('COLLECTOR_TIMESTAMP_WINDOW_SECONDS: an hour by default, 0 to ignore client timestamps', async (t) => {
  const env = { NODE_ENV: 'test' };
  t.equal(loadConfig(env).collector.timestampWindowMs, 3_600_000);
  t.equal(loadConfig({ ...env, COLLECTOR_TIMESTAMP_WINDOW_SECONDS: '0' }).collector.timestampWindowMs, 0);
  t.equal(loadConfig({ ...env, COLLECTOR_TIMESTAMP_WINDOW_SECONDS: '86400' }).collector.timestampWindowMs, 86_400_000);
});

t.test("the aggregator's and the flusher's key caps: one setting each, the flusher's defaulting to the aggregator's", async (t) => {
  t.match(loadConfig(DEV).collector, { aggregatorMaxKeys: 100_000, retryMaxKeys: 100_000 });
  t.match(
    loadConfig({ ...DEV, COLLECTOR_MAX_PENDING_KEYS: '5000' }).collector,
    { aggregatorMaxKeys: 5000, retryMaxKeys: 5000 },
    'one setting still bounds both',
  );
  t.match(loadConfig({ ...DEV, COLLECTOR_MAX_PENDING_KEYS: '5000', COLLECTOR_MAX_RETRY_KEYS: '20000' }).collector, {
    aggregatorMaxKeys: 5000,
    retryMaxKeys: 20000,
  });
});
