import dgram from 'node:dgram';
import http from 'node:http';
import t from 'tap';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { startApi } from '../api/main';
import { createApiMetrics } from '../api/metrics';
import { createAuthThrottle, LOOKUPS_WAITING_PER_SLOT } from '../api/auth/failureThrottle';
import { orgConcurrency, QUEUED_PER_RUNNING } from '../api/auth/orgConcurrency';
import { insertOrganization } from '../api/orgs/orgs.repository';
import { UsageRecorder } from '../api/usage/usageRecorder';
import { loadConfig } from '../shared/config';
import { createLogger } from '../shared/logger';
import { Histogram } from '../shared/metrics';
import { parsePacket } from '../shared/usageWire';
import { freshDatabase } from './helpers/database';
import { seedOrg, startTestApi } from './helpers/api';
import { waitFor } from '../harness/wait';

const logger = createLogger({ level: 'silent', name: 'test' });

// `name{labels} value` lines of an exposition, by series.
function series(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+(?:\{.*\})?) (\S+)$/.exec(line);
    if (match) values.set(match[1], Number(match[2]));
  }
  return values;
}

// parsePacket hands out one reused sample object: count while it is current.
function countIn(datagrams: readonly string[]): number {
  let count = 0;
  for (const datagram of datagrams) parsePacket(datagram, (sample) => (count += sample.count));
  return count;
}

t.test('a histogram: cumulative buckets, +Inf, sum and count per label set, escaped label values', async (t) => {
  const histogram = new Histogram('x_seconds', 'X', [0.1, 1]);
  for (const value of [0.05, 0.1, 0.5, 3]) histogram.observe({ route: '/a' }, value);
  histogram.observe({ route: 'say "hi"\\\n' }, 0.2);
  t.equal(
    histogram.render(),
    [
      '# HELP x_seconds X',
      '# TYPE x_seconds histogram',
      'x_seconds_bucket{route="/a",le="0.1"} 2',
      'x_seconds_bucket{route="/a",le="1"} 3',
      'x_seconds_bucket{route="/a",le="+Inf"} 4',
      'x_seconds_sum{route="/a"} 3.65',
      'x_seconds_count{route="/a"} 4',
      'x_seconds_bucket{route="say \\"hi\\"\\\\\\n",le="0.1"} 0',
      'x_seconds_bucket{route="say \\"hi\\"\\\\\\n",le="1"} 1',
      'x_seconds_bucket{route="say \\"hi\\"\\\\\\n",le="+Inf"} 1',
      'x_seconds_sum{route="say \\"hi\\"\\\\\\n"} 0.2',
      'x_seconds_count{route="say \\"hi\\"\\\\\\n"} 1',
      '',
    ].join('\n'),
  );
});

t.test("the recorder's send errors and pending entries reach the exposition", async (t) => {
  const recorder = new UsageRecorder({
    sink: { send: (_datagram, done) => done(new Error('send EPERM')), close: async () => {} },
    maxEntries: 100,
    drainIntervalMs: 1000,
    logger,
  });
  const sources = {
    recorder,
    keyCache: { hits: 0, misses: 0, reloads: 0 },
    throttle: { failures: 0, refusedByIp: 0, refusedByKey: 0, lockouts: 0, evicted: 0 },
  };
  const metrics = createApiMetrics();
  recorder.record('0b7c6a39-2f11-4c55-9d7e-2f0c8e7a1b01', '5d1f0f5e-8a47-4b53-8a0e-9c1d2e3f4a5b', '192.0.2.1', 'ok');
  recorder.record('0b7c6a39-2f11-4c55-9d7e-2f0c8e7a1b01', '5d1f0f5e-8a47-4b53-8a0e-9c1d2e3f4a5b', '192.0.2.2', 'ok');
  t.equal(series(metrics.exposition(sources)).get('keyusage_api_usage_pending_entries'), 2);
  recorder.drain();
  const after = series(metrics.exposition(sources));
  t.same(
    ['uses_recorded_total', 'uses_sent_total', 'uses_send_failed_total', 'datagrams_total', 'send_errors_total', 'usage_pending_entries'].map((name) =>
      after.get(`keyusage_api_${name}`),
    ),
    [2, 0, 2, 1, 1, 0],
  );
  t.equal(series(metrics.exposition({ ...sources, recorder: undefined })).get('keyusage_api_usage_tracking_enabled'), 0, 'USAGE_TRACKING=false shows');
});

t.test("the per-org turns' waits and refusals reach the exposition", async (t) => {
  const orgTurns = orgConcurrency(1);
  orgTurns.enter('org');
  orgTurns.enter('org');
  for (let i = 0; i < QUEUED_PER_RUNNING; i += 1) orgTurns.enter('org');
  const sources = {
    recorder: undefined,
    keyCache: { hits: 0, misses: 0, reloads: 0 },
    throttle: { failures: 0, refusedByIp: 0, refusedByKey: 0, lockouts: 0, evicted: 0 },
    orgTurns,
  };
  const exposed = series(createApiMetrics().exposition(sources));
  t.same(
    ['org_requests_waited_total', 'org_requests_refused_total', 'org_requests_waiting'].map((name) => exposed.get(`keyusage_api_${name}`)),
    [QUEUED_PER_RUNNING, 1, QUEUED_PER_RUNNING],
  );
});

t.test('reads of keys refused as too many wait reach the exposition', async (t) => {
  const throttle = createAuthThrottle({ maxFailuresPerIp: 0, maxFailuresPerKey: 0, windowMs: 60_000, maxEntries: 10, maxLookups: 1 }, () => 0);
  const first = throttle.beginLookup('key-a', true);
  const waiting = Array.from({ length: LOOKUPS_WAITING_PER_SLOT }, (_, i) => throttle.beginLookup(`key-${i}`, true));
  t.equal(throttle.beginLookup('key-refused', true), undefined, 'refused once as many wait as the cap allows');
  const sources = { recorder: undefined, keyCache: { hits: 0, misses: 0, reloads: 0 }, throttle: throttle.stats, lookups: throttle.lookupStats };
  const exposed = series(createApiMetrics().exposition(sources));
  t.same(
    ['auth_key_lookups_running', 'auth_key_lookups_peak', 'auth_key_lookups_refused_total'].map((name) => exposed.get(`keyusage_api_${name}`)),
    [1, 1, 1],
  );
  t.equal(typeof first, 'function');
  t.ok(waiting.every((turn) => turn instanceof Promise));
});

t.test('the API serves its metrics on their own loopback port, over real HTTP', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = dgram.createSocket('udp4');
  const datagrams: string[] = [];
  collector.on('message', (message) => datagrams.push(message.toString()));
  await new Promise<void>((resolve) => collector.bind(0, '127.0.0.1', () => resolve()));
  t.teardown(() => collector.close());
  const config = loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    API_METRICS_PORT: '0',
    COLLECTOR_PORT: String(collector.address().port),
    USAGE_DRAIN_INTERVAL_MS: '20',
    AUTH_THROTTLE_MAX_FAILURES_PER_KEY: '2',
  });
  const api = await startApi(config, logger, url);
  t.teardown(() => api.stop());
  const org = await insertOrganization(db, 'metrics');
  const keys = createApiKeysService({ db, pepper: config.api.keyPepper, defaultGraceSeconds: 60, now: Date.now });
  const { plaintext } = await keys.create(org.id, { name: 'metrics', scopes: ['keys:read'], expiresAt: null });
  const wrong = `${plaintext.slice(0, 36)}${'A'.repeat(43)}`;
  const get = (path: string, key?: string) => fetch(`http://127.0.0.1:${api.port}${path}`, { headers: key ? { authorization: `Bearer ${key}` } : {} });

  const requests: Array<[string, string?]> = [
    ['/api/whoami', plaintext],
    ['/api/whoami', plaintext],
    [`/api/orgs/${org.id}/api-keys`, plaintext],
    ['/api/whoami', wrong],
    ['/api/whoami', wrong],
    ['/api/whoami', wrong],
    [`/nope/${org.id}`],
  ];
  const statuses = [];
  for (const [path, key] of requests) statuses.push((await get(path, key)).status);
  t.same(statuses, [200, 200, 200, 401, 401, 429, 404]);
  // Three uses and three wrong secrets on a known key: failed attempts travel the same way, the
  // one answered 429 (its key id locked) included.
  await waitFor('the six samples to reach the collector', () => (countIn(datagrams) === 6 ? true : undefined));

  const scrape = () => fetch(`http://127.0.0.1:${api.metricsPort}/metrics`);
  t.equal((await scrape()).headers.get('content-type'), 'text/plain; version=0.0.4');
  const text = await waitFor('the sends to complete', async () => {
    const body = await (await scrape()).text();
    return series(body).get('keyusage_api_uses_sent_total') === 6 ? body : undefined;
  });
  const values = series(text);
  const metric = (name: string) => values.get(`keyusage_api_${name}`);
  t.same(
    ['uses_recorded_total', 'uses_sent_total', 'datagrams_total', 'send_errors_total', 'usage_tracking_enabled'].map(metric),
    [6, 6, datagrams.length, 0, 1],
    'everything recorded was sent',
  );
  t.same(['key_cache_misses_total', 'key_cache_hits_total'].map(metric), [1, 5], 'one read, then the cache');
  t.same(['auth_key_lookups_running', 'auth_key_lookups_peak', 'auth_key_lookups_refused_total'].map(metric), [0, 1, 0], "the one read's place, ended");
  t.same(['auth_failures_total', 'auth_refused_by_key_total', 'auth_lockouts_total'].map(metric), [3, 1, 1], 'the throttle locked the key id after 2 failures');
  t.equal(metric('request_duration_seconds_count{method="GET",route="/api/whoami",status="200"}'), 2);
  t.equal(metric('request_duration_seconds_count{method="GET",route="/api/whoami",status="401"}'), 2);
  t.equal(metric('request_duration_seconds_count{method="GET",route="/api/orgs/:id/api-keys",status="200"}'), 1, 'a mounted router is labelled by its pattern');
  t.equal(metric('request_duration_seconds_count{method="GET",route="unmatched",status="404"}'), 1);
  t.notMatch(text, org.id, 'no raw path, so no org id, becomes a label');

  t.equal((await get('/metrics')).status, 404, 'the public port serves no metrics');
  t.equal((await fetch(`http://127.0.0.1:${api.metricsPort}/healthz`)).status, 404, 'the API metrics port is only /metrics (the API has /healthz)');
  t.equal(config.api.metricsHost, '127.0.0.1', 'loopback unless API_METRICS_HOST says otherwise');
});

t.test('a request whose client leaves before the answer is logged, with 499', async (t) => {
  const { db } = await freshDatabase(t, { poolMax: 4 });
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  // The answer waits on a table another session holds, as on a stalled database.
  const held = await db.transaction();
  await held.raw('lock table api_keys in access exclusive mode');
  const path = `/api/orgs/${org.id}/api-keys`;
  const request = http.get({ host: '127.0.0.1', port: api.port, path, headers: { authorization: `Bearer ${adminKey}` } });
  request.on('error', () => {});
  await waitFor(
    'the request to wait on the lock',
    async () => (await db.raw(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()`)).rows[0],
  );
  request.destroy();
  await held.rollback();
  const logged = await waitFor('its log line', () =>
    api.evidence.logLines.map((line) => JSON.parse(line)).find((line) => line.msg === 'request' && line.path.startsWith(path)),
  );
  t.match(logged, { method: 'GET', status: 499 });
});
