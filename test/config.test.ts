import t, { type Test } from 'tap';
import { ConfigError, loadConfig } from '../shared/config';

const PEPPER = 'p'.repeat(32);

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
  const config = loadConfig({});
  t.equal(config.env, 'development');
  t.equal(config.logLevel, 'info');
  t.same(config.database, { url: undefined, poolMax: 10, embeddedDir: '.data/postgres', embeddedPort: 54329 });
  t.same(config.api, {
    host: '127.0.0.1',
    port: 3000,
    keyPepper: config.api.keyPepper,
    keyCacheTtlMs: 2000,
    rotationGraceSeconds: 86_400,
    trustProxy: false,
    eventSummaryDays: 7,
  });
  t.ok(config.api.keyPepper.length >= 32, 'a development pepper stands in when KEY_PEPPER is unset');
  t.match(config.usage, { enabled: true, drainIntervalMs: 250, maxEntries: 10_000, collectorHost: '127.0.0.1', collectorPort: 8125 });
  t.match(config.collector, { host: '127.0.0.1', port: 8125, flushIntervalMs: 1000, retentionDays: 90 });
  t.same(config.collector.events, {
    enabled: true,
    retentionDays: 90,
    sweepIntervalMs: 60_000,
    ipHistoryPerKey: 1000,
    spikeFactor: 5,
    spikeMinUses: 100,
    failedAttemptsPerHour: 20,
    expiringDays: [7, 1],
  });
});

t.test('EVENTS_EXPIRING_DAYS is a list of days, largest first', async (t) => {
  t.same(loadConfig({ EVENTS_EXPIRING_DAYS: '1, 14,7,7' }).collector.events.expiringDays, [14, 7, 1]);
  for (const bad of ['seven', '7,,1', '0', '7,400']) {
    t.throws(() => loadConfig({ EVENTS_EXPIRING_DAYS: bad }), /EVENTS_EXPIRING_DAYS/, `"${bad}" is refused`);
  }
});

t.test('values from the environment are parsed to their types', async (t) => {
  const config = loadConfig({
    NODE_ENV: 'production',
    KEY_PEPPER: PEPPER,
    DATABASE_URL: 'postgresql://u:p@db.internal:5432/keyusage',
    PORT: '0',
    DATABASE_POOL_MAX: '25',
    USAGE_TRACKING: '0',
    LOG_LEVEL: 'warn',
  });
  t.equal(config.env, 'production');
  t.equal(config.api.keyPepper, PEPPER);
  t.equal(config.database.url, 'postgresql://u:p@db.internal:5432/keyusage');
  t.equal(config.api.port, 0, 'PORT=0 asks for any free port');
  t.equal(config.database.poolMax, 25);
  t.equal(config.usage.enabled, false);
  t.equal(config.logLevel, 'warn');
  t.equal(loadConfig({ PORT: '' }).api.port, 3000, 'an empty variable counts as unset');
});

t.test('the config is deeply frozen', async (t) => {
  const config = loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8' });
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
  t.equal(loadConfig({}).api.trustProxy, false);
  t.equal(loadConfig({ TRUST_PROXY: 'false' }).api.trustProxy, false);
  t.equal(loadConfig({ TRUST_PROXY: 'true' }).api.trustProxy, true);
  t.equal(loadConfig({ TRUST_PROXY: '2' }).api.trustProxy, 2);
  t.same(loadConfig({ TRUST_PROXY: 'loopback' }).api.trustProxy, ['loopback']);
  t.same(loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8' }).api.trustProxy, ['loopback', '10.0.0.0/8']);
  t.same(loadConfig({ TRUST_PROXY: ' 10.0.0.1 ,,fd00::/8 ' }).api.trustProxy, ['10.0.0.1', 'fd00::/8'], 'blanks dropped');
});

t.test('a value that is not an address is refused at load time, naming TRUST_PROXY', async (t) => {
  t.match(configError(t, { TRUST_PROXY: 'not-an-address' }).message, /TRUST_PROXY: "not-an-address" is not an IP/);
  t.match(configError(t, { TRUST_PROXY: 'TRUE' }).message, /TRUST_PROXY/);
  t.match(configError(t, { TRUST_PROXY: '10.0.0.0/33' }).message, /TRUST_PROXY/);
  t.match(configError(t, { TRUST_PROXY: '10.0.0.0/8/1' }).message, /TRUST_PROXY/);
  t.same(loadConfig({ TRUST_PROXY: '10.0.0.0/255.0.0.0, fd00::/8' }).api.trustProxy, ['10.0.0.0/255.0.0.0', 'fd00::/8']);
  for (const value of [' ', '0x10', '1e3']) t.match(configError(t, { PORT: value }).message, /PORT: must be a whole number/, `PORT=${JSON.stringify(value)}`);
});

t.test('each kind of bad value fails with the variable name', async (t) => {
  const cases: Array<[string, Record<string, string>]> = [
    ['not a number', { PORT: 'abc' }],
    ['port out of range', { PORT: '70000' }],
    ['not an integer', { PORT: '3000.5' }],
    ['negative', { DATABASE_POOL_MAX: '-1' }],
    ['zero where positive is required', { USAGE_MAX_ENTRIES: '0' }],
    ['above the maximum', { KEY_CACHE_TTL_MS: '60001' }],
    ['not a postgres URL', { DATABASE_URL: 'mysql://u:p@localhost/db' }],
    ['not a URL at all', { DATABASE_URL: 'localhost:5432' }],
    ['unknown environment', { NODE_ENV: 'staging' }],
    ['unknown log level', { LOG_LEVEL: 'verbose' }],
    ['not a boolean', { USAGE_TRACKING: 'yes' }],
    ['pepper too short', { KEY_PEPPER: 'short' }],
    ['rotation grace above 7 days', { ROTATION_GRACE_SECONDS: '604801' }],
  ];
  for (const [kind, env] of cases) {
    const [name] = Object.keys(env);
    const error = configError(t, env);
    t.match(error.message, new RegExp(`\\b${name}: `), `${kind}: the message names ${name}`);
    t.same(error.problems.length, 1, `${kind}: only ${name} is reported`);
  }
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

t.test('production requires KEY_PEPPER', async (t) => {
  const error = configError(t, { NODE_ENV: 'production' });
  t.match(error.message, /KEY_PEPPER/);
  t.match(error.message, /production/);
  t.equal(loadConfig({ NODE_ENV: 'production', KEY_PEPPER: PEPPER }).api.keyPepper, PEPPER);
  t.equal(loadConfig({ NODE_ENV: 'test' }).env, 'test', 'other environments fall back to the development pepper');
});
