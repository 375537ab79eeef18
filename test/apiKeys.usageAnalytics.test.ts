import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CommitInDoubtError, createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { createStatsdSink } from '../api/usage/statsdSink';
import { UsageRecorder } from '../api/usage/usageRecorder';
import type { Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { encodeUsageLine, packDatagrams } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { wiredSystem } from './helpers/wiredSystem';
import { freshDatabase, hourRows } from './helpers/database';
import { LeakScan } from './helpers/faults';

const silent = createLogger({ level: 'silent', name: 'test' });

async function inBatches(total: number, concurrency: number, task: (i: number) => Promise<unknown>) {
  for (let start = 0; start < total; start += concurrency) {
    await Promise.all(Array.from({ length: Math.min(concurrency, total - start) }, (_, i) => task(start + i)));
  }
}

// Moves every key of the org 100 days back in time, keeping their order. Values, not
// `created_at - interval …`: Citus refuses a stable function over a column in an UPDATE of a
// reference table (test:citus runs this file).
async function backdateCreation(db: Db, orgId: string, days: number): Promise<void> {
  const keys: Array<{ id: string; created_at: Date }> = await db('api_keys').where({ org_id: orgId }).select('id', 'created_at');
  for (const key of keys) {
    await db('api_keys')
      .where({ org_id: orgId, id: key.id })
      .update({ created_at: new Date(key.created_at.getTime() - days * 86_400_000) });
  }
}

t.test('thousands of concurrent requests are counted exactly, by outcome, and shown by the usage endpoint', async (t) => {
  const { api, recorder, collector, db, org, adminKey, adminKeyId } = await wiredSystem(t);
  const reader = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'reader', scopes: ['keys:read'] } });
  const readerKey = reader.body.key as string;
  const wrongSecret = `${readerKey.slice(0, 36)}${'A'.repeat(43)}`;

  const OK = 2000;
  const FORBIDDEN = 60;
  const BAD_SECRET = 40;
  await inBatches(OK, 100, async () => t.equal((await api.request('GET', '/api/whoami', { key: readerKey })).status, 200) || undefined);
  await inBatches(
    FORBIDDEN,
    30,
    async () => (await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: readerKey, body: { name: 'x', scopes: ['keys:read'] } })).status,
  );
  await inBatches(BAD_SECRET, 20, async () => (await api.request('GET', '/api/whoami', { key: wrongSecret })).status);

  const usage = await waitFor('every use to be persisted', async () => {
    const response = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?sort=requestCount`, { key: adminKey });
    const row = response.body.data.find((k: { id: string }) => k.id === reader.body.id);
    const admin = response.body.data.find((k: { id: string }) => k.id === adminKeyId);
    // The admin's own calls (the create, then these reads) land in later flushes: wait for two.
    return row?.requestCount === OK + FORBIDDEN && row.failedAttempts === BAD_SECRET && admin?.requestCount >= 2 ? response.body : undefined;
  });
  const row = usage.data.find((k: { id: string }) => k.id === reader.body.id);
  t.strictSame(row.outcomes, { ok: OK, forbidden: FORBIDDEN, expired: 0, revoked: 0, bad_secret: BAD_SECRET, cross_org: 0 });
  t.equal(row.lastUsedIp, '127.0.0.1');
  t.equal(row.recentIps.length, 1);
  t.equal(row.recentIps[0].requestCount, OK + FORBIDDEN, 'recent IPs count proven uses');
  t.strictSame(row.requests, { last24h: OK + FORBIDDEN, last7d: OK + FORBIDDEN, last30d: OK + FORBIDDEN });
  t.equal(row.recentFailedIps[0].attemptCount, BAD_SECRET, 'wrong secrets are counted apart');
  t.equal(row.dormant, false);
  t.equal(usage.data[0].id, reader.body.id, 'sorted by request count, busiest first');
  t.equal(row.key, undefined, 'no key material in the usage view');
  // The stored hashes (hex and base64) and the plaintexts, not a column name an answer in
  // camelCase never carries (a review: that check could not fail).
  const leaks = new LeakScan();
  leaks.watch('usage answer', () => [JSON.stringify(usage)]);
  leaks.plaintext(readerKey);
  leaks.plaintext(adminKey);
  await leaks.hashesFrom(db);
  t.same(leaks.scan().hits, [], 'no key, secret or hash in the usage answer');

  const adminRow = usage.data.find((k: { id: string }) => k.id === adminKeyId);
  // Its create call was sent before every reader call, so it is persisted by now; its usage
  // calls may still be on their way (on a fast flush the first poll already answers).
  t.ok(adminRow.requestCount >= 1, 'the admin key counts its own calls too');

  recorder.drain();
  await waitFor('the last drain to be sent', () => (recorder.stats.sentUses === recorder.stats.recordedUses ? true : undefined));
  t.equal(recorder.stats.failedUses, 0, 'every recorded use was sent');
  t.ok(recorder.stats.datagrams < (OK + FORBIDDEN + BAD_SECRET) / 10, `coalesced into ${recorder.stats.datagrams} datagrams`);
  t.equal(collector.ingest.badLines, 0);

  const series = await api.request('GET', `/api/orgs/${org.id}/api-keys/${reader.body.id}/usage?granularity=day`, { key: adminKey });
  t.equal(series.status, 200);
  t.equal(series.body.total, OK + FORBIDDEN, 'the time series sums to the same proven total');
  t.equal(series.body.buckets.length, 8, 'seven days back, zero-filled, today included');
});

// The last use is dated when the collector received it: the flush, a minute later on the
// collector's clock, does not date it.
t.test('many uses in one interval coalesce into one flush with the newest last use', async (t) => {
  const { db, url } = await freshDatabase(t);
  let clockAheadMs = 0;
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' }, { now: () => Date.now() + clockAheadMs });
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const lines = Array.from({ length: 1000 }, (_, i) =>
    encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: i === 999 ? '2001:db8::7' : `10.0.0.${i % 3}`, outcome: 'ok', count: 1 }),
  );
  const sentFrom = Date.now();
  await sendDatagrams(collector.receiver.port, packDatagrams(lines));
  await waitFor('all lines received', () => (collector.ingest.usageLines === 1000 ? true : undefined));
  const receivedBy = Date.now();
  clockAheadMs = 60_000;
  t.ok(await collector.flusher.flush());
  t.equal(collector.flusher.stats.flushes, 1, 'one flush');
  t.equal(
    collector.flusher.stats.lastFlushStatements,
    14,
    "flush id, work_mem, savepoint, the keys that exist, staging tables, COPY of keys, hours and ips, every usage table in one query, prefix history with event facts, the org hour's events so far, COPY of events, events, release: fourteen round trips",
  );
  const usage = await db('api_key_usage').where({ key_id: adminKeyId }).first();
  t.equal(usage.request_count, 1000);
  t.equal(usage.last_used_ip, '2001:db8::7', 'IPv6 arrives intact and the newest use wins');
  const lastUsedAt = (usage.last_used_at as Date).getTime();
  t.ok(
    lastUsedAt >= sentFrom && lastUsedAt <= receivedBy,
    `last_used_at (${lastUsedAt - sentFrom} ms after the first send) lies between the first send and the last receipt (${receivedBy - sentFrom} ms), not at the flush`,
  );
  const ips = await db('api_key_recent_ips').where({ key_id: adminKeyId }).orderBy('ip');
  t.same(
    ips.map((r: { ip: string; request_count: number }) => [r.ip, r.request_count]),
    [
      ['10.0.0.0', 333],
      ['10.0.0.1', 333],
      ['10.0.0.2', 333],
      ['2001:db8::7', 1],
    ],
  );
});

t.test('dormant keys: never used, or not used within dormantDays', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => now });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const create = async (name: string) =>
    (await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } })).body.id as string;
  const old = await create('old');
  const never = await create('never');
  const backdate = (keyId: string, daysAgo: number, count: number) =>
    db('api_key_usage').insert({
      key_id: keyId,
      org_id: org.id,
      request_count: count,
      ok_count: count,
      last_used_at: new Date(now - daysAgo * 86_400_000),
      last_used_ip: '192.0.2.1',
    });
  await backdate(old, 40, 5);
  await backdate(adminKeyId, 0, 9);
  // A never-used key is dormant once it has existed for dormantDays (shared/dormancy.ts).
  await backdateCreation(db, org.id, 100);

  const dormant = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormant=true&sort=lastUsedAt&order=asc`, { key: adminKey });
  t.equal(dormant.status, 200);
  t.same(
    dormant.body.data.map((k: { name: string }) => k.name),
    ['never', 'old'],
    'never-used first, then the oldest',
  );
  t.ok(dormant.body.data.every((k: { dormant: boolean }) => k.dormant));
  t.equal(dormant.body.page.total, 2);

  const lenient = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormant=true&dormantDays=60`, { key: adminKey });
  t.same(
    lenient.body.data.map((k: { id: string }) => k.id),
    [never],
  );

  const all = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?sort=requestCount&limit=2`, { key: adminKey });
  t.same(
    all.body.data.map((k: { name: string }) => k.name),
    ['admin', 'old'],
  );
  t.equal(all.body.page.total, 3);
  t.equal(all.body.data[0].dormant, false);
  t.strictSame(all.body.data[1].requests, { last24h: 0, last7d: 0, last30d: 0 }, 'windows come from hourly buckets, none here');

  for (const [query, field] of [
    ['dormant=yes', 'dormant'],
    ['dormantDays=0', 'dormantDays'],
    ['sort=name', 'sort'],
    ['limit=1000', 'limit'],
    ['color=red', 'color'],
  ]) {
    const bad = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?${query}`, { key: adminKey });
    t.equal(bad.status, 400, query);
    t.match(bad.body.error.message, field, `${query}: the message names ${field}`);
  }
  const badRange = await api.request('GET', `/api/orgs/${org.id}/api-keys/${old}/usage?from=2026-11-25T00:00:00Z&to=2026-11-01T00:00:00Z`, { key: adminKey });
  t.equal(badRange.status, 400);
  const tooLong = await api.request('GET', `/api/orgs/${org.id}/api-keys/${old}/usage?from=2020-01-01T00:00:00Z`, { key: adminKey });
  t.equal(tooLong.status, 400);
  t.match(tooLong.body.error.message, /at most/);
});

t.test('dormant=true|false and status=: dormant means still usable and unused; each filter is exact', async (t) => {
  const { db } = await freshDatabase(t);
  let now = Date.parse('2026-11-25T12:00:00Z');
  const api = await startTestApi(t, db, { now: () => now });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const create = async (name: string, expiresAt: Date | null = null) =>
    (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt })).key.id;
  const used = async (keyId: string, daysAgo: number) =>
    db('api_key_usage').insert({
      key_id: keyId,
      org_id: org.id,
      request_count: 1,
      ok_count: 1,
      last_used_at: new Date(now - daysAgo * 86_400_000),
      last_used_ip: '192.0.2.1',
    });
  await create('unused');
  const stale = await create('stale');
  const fresh = await create('fresh');
  const revokedUnused = await create('revoked unused');
  const revokedUsed = await create('revoked used');
  await create('expired unused', new Date(now + 60_000));
  await Promise.all([used(stale, 40), used(fresh, 1), used(revokedUsed, 1), used(adminKeyId, 0)]);
  await api.services.apiKeys.revoke(org.id, revokedUnused);
  await api.services.apiKeys.revoke(org.id, revokedUsed);
  // Created long ago, so never used means dormant (shared/dormancy.ts counts from creation).
  await backdateCreation(db, org.id, 100);
  now += 120_000;

  const names = async (query: string) => {
    const response = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?${query}&sort=createdAt&order=asc`, { key: adminKey });
    t.equal(response.status, 200, query);
    t.equal(response.body.page.total, response.body.data.length, `${query}: the total counts the same filter`);
    return response.body.data.map((k: { name: string; dormant: boolean; status: string }) => `${k.name}:${k.status}:${k.dormant}`);
  };
  const everyKey = [
    'admin:active:false',
    'unused:active:true',
    'stale:active:true',
    'fresh:active:false',
    'revoked unused:revoked:false',
    'revoked used:revoked:false',
    'expired unused:expired:false',
  ];
  t.same(await names('limit=50'), everyKey, 'no dormant parameter: every key (a revoked or expired key is never dormant)');
  t.same(await names('dormant=true'), ['unused:active:true', 'stale:active:true'], 'dormant=true: usable keys unused for dormantDays only');
  t.same(
    await names('dormant=false'),
    everyKey.filter((k) => !k.endsWith(':true')),
    'dormant=false: every key that is not dormant',
  );
  t.same(
    await names('status=active'),
    everyKey.filter((k) => k.includes(':active:')),
  );
  t.same(await names('status=revoked'), ['revoked unused:revoked:false', 'revoked used:revoked:false']);
  t.same(await names('status=expired'), ['expired unused:expired:false']);
  t.same(await names('status=revoked&dormant=true'), [], 'the filters combine');
  t.same(await names('status=active&dormant=false'), ['admin:active:false', 'fresh:active:false']);
  const bad = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?status=dormant`, { key: adminKey });
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /status: must be active, revoked or expired/);
});

t.test('org isolation: another org is a 404, and a forged datagram cannot move its counters', async (t) => {
  const { api, collector, db, org, adminKey, adminKeyId } = await wiredSystem(t);
  const other = await seedOrg(api, db, 'globex');
  t.equal((await api.request('GET', `/api/orgs/${org.id}/api-keys/usage`, { key: other.adminKey })).status, 404);
  t.equal((await api.request('GET', `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage`, { key: other.adminKey })).status, 404);
  t.equal(
    (await api.request('GET', `/api/orgs/${other.org.id}/api-keys/${adminKeyId}/usage`, { key: other.adminKey })).status,
    404,
    'a key of another org is not found',
  );
  t.equal((await api.request('GET', `/api/orgs/${other.org.id}/api-keys/${adminKeyId}`, { key: other.adminKey })).status, 404);
  // Another org's key id under one's own org id is an ok use: cross_org would tell the caller the
  // id exists elsewhere. Only another org's id in the path is cross_org (docs/api-keys.md).
  const persisted = await waitFor('the uses to be persisted', async () => {
    const row = await db('api_key_usage').where({ key_id: other.adminKeyId }).first();
    return Number(row?.request_count) >= 4 ? row : undefined;
  });
  t.strictSame(
    [persisted.ok_count, persisted.cross_org_count].map(Number),
    [2, 2],
    'the two 404s under its own org id ok, the two under the other org id cross_org',
  );

  await sendDatagrams(collector.receiver.port, [
    encodeUsageLine({ keyId: other.adminKeyId, orgId: org.id, ip: '203.0.113.9', outcome: 'ok', count: 1000 }),
    encodeUsageLine({ keyId: '00000000-0000-4000-8000-000000000000', orgId: org.id, ip: '203.0.113.9', outcome: 'ok', count: 1000 }),
  ]);
  await waitFor('forged lines to be flushed', () => (collector.flusher.stats.unknownUses >= 2000 ? true : undefined));
  const globexUsage = await db('api_key_usage').where({ key_id: other.adminKeyId }).first();
  t.ok(!globexUsage || globexUsage.request_count < 1000, 'the forged count did not land on the other org');
  t.equal((await db('api_key_usage').where({ org_id: org.id }).whereNot({ key_id: adminKeyId })).length, 0, 'no row was created');
  const listed = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage`, { key: adminKey });
  t.same(
    listed.body.data.map((k: { id: string }) => k.id),
    [adminKeyId],
    'only the own org keys are listed',
  );
});

t.test('two collectors flushing the same keys at once sum exactly', async (t) => {
  const { db, url } = await freshDatabase(t, { poolMax: 2 });
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const keys = await Promise.all(
    Array.from({ length: 50 }, async (_, i) => (await api.services.apiKeys.create(org.id, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null })).key.id),
  );
  const slow = { COLLECTOR_FLUSH_INTERVAL_MS: '600000' };
  const collectors = [await startTestCollector(t, url, slow), await startTestCollector(t, url, slow)];
  const ROUNDS = 5;
  for (let round = 0; round < ROUNDS; round += 1) {
    // Opposite orders make the two transactions meet on the same rows from both ends.
    const lines = keys.map((keyId, i) => encodeUsageLine({ keyId, orgId: org.id, ip: `10.1.0.${i % 7}`, outcome: 'ok', count: i + 1 }));
    await Promise.all([
      sendDatagrams(collectors[0].receiver.port, packDatagrams(lines)),
      sendDatagrams(collectors[1].receiver.port, packDatagrams([...lines].reverse())),
    ]);
    await waitFor('both collectors to receive the round', () =>
      collectors.every((c) => c.ingest.usageLines === (round + 1) * keys.length) ? true : undefined,
    );
    const flushed = await Promise.all(collectors.map((c) => c.flusher.flush()));
    t.same(flushed, [true, true], `round ${round} flushed on both`);
  }
  const rows = await db('api_key_usage').whereIn('key_id', keys);
  const expected = new Map(keys.map((keyId, i) => [keyId, 2 * ROUNDS * (i + 1)]));
  t.equal(rows.length, keys.length);
  t.ok(
    rows.every((r: { key_id: string; request_count: number }) => r.request_count === expected.get(r.key_id)),
    'every key sums exactly',
  );
  const hourly = await hourRows(db, keys);
  t.equal(
    hourly.reduce((sum, row) => sum + row.request_count, 0),
    [...expected.values()].reduce((a, b) => a + b, 0),
    'hourly buckets sum exactly',
  );
  t.equal(collectors[0].flusher.stats.failedFlushes + collectors[1].flusher.stats.failedFlushes, 0, 'no deadlock, no failed flush');
});

t.test('a failed flush is retried with nothing lost, and an in-doubt commit is not counted twice', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const real = createPgUsageStore(db);
  const script: Array<'fail' | 'commit-then-fail' | 'pass'> = ['fail', 'fail', 'commit-then-fail', 'pass'];
  const flaky: UsageStore = {
    ...real,
    async write(batches) {
      const step = script.shift() ?? 'pass';
      if (step === 'fail') throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
      const result = await real.write(batches);
      if (step === 'commit-then-fail') throw new CommitInDoubtError(new Error('Connection terminated unexpectedly'));
      return result;
    },
  };
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' }, { store: flaky });
  const send = (count: number) =>
    sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: '198.51.100.4', outcome: 'ok', count })]);

  let expected = 0;
  for (const count of [10, 20, 30, 40]) {
    await send(count);
    expected += count;
    await waitFor('the line', () => (collector.ingest.usesReceived === expected ? true : undefined));
    await collector.flusher.flush();
  }
  t.equal(collector.flusher.stats.failedFlushes, 3);
  t.equal(collector.flusher.stats.duplicateBatchesSkipped, 1, 'the batch whose commit landed was recognised on retry');
  const row = await db('api_key_usage').where({ key_id: adminKeyId }).first();
  t.equal(row.request_count, expected, 'every use counted exactly once');
  t.ok(
    collector.logLines.some((line) => line.includes('flush failed; usage kept in memory and retried')),
    'the failure is logged',
  );
  const ledger = await db('usage_flushes').where({ org_id: org.id }).count({ n: '*' });
  t.equal(Number(ledger[0].n), 2, 'two applied batches: the in-doubt one and the merged rest');
});

t.test('malformed datagrams are counted and dropped, never fatal', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const garbage = [
    'apikey.used:NaN|c|#key:x',
    'apikey.used:1|c|#key:ku_0123456789abcdef0123456789abcdef_secretsecretsecretsecretsecretsecretsecre',
    '\u0000\u0001\u0002',
    'x'.repeat(9000),
    'requests.total:1|c\nlatency:12|ms|@0.5',
    encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: '192.0.2.55', outcome: 'ok', count: 3 }),
  ];
  await sendDatagrams(collector.receiver.port, garbage);
  await waitFor('all packets', () => (collector.ingest.packets === garbage.length ? true : undefined));
  t.equal(collector.ingest.badLines, 4);
  t.equal(collector.ingest.otherLines, 2);
  t.equal(collector.ingest.usageLines, 1);
  await collector.flusher.flush();
  t.equal((await db('api_key_usage').where({ key_id: adminKeyId }).first()).request_count, 3);

  const metrics = await (await fetch(`http://127.0.0.1:${collector.metricsPort}/metrics`)).text();
  t.match(metrics, /^keyusage_collector_bad_lines_total 4$/m);
  t.match(metrics, /^keyusage_collector_other_lines_total 2$/m);
  t.match(metrics, /^keyusage_collector_flushes_total 1$/m);
  // Every metric the collector serves has its row in the operators' table.
  const runbook = fs.readFileSync(path.join(__dirname, '..', 'docs', 'operations.md'), 'utf8');
  const served = [...metrics.matchAll(/^# TYPE keyusage_collector_([a-z_]+) /gm)].map((m) => m[1]);
  t.ok(served.length >= 40, `the collector serves its metrics (${served.length})`);
  t.same(
    served.filter((name) => !runbook.includes(`\`${name}\``)),
    [],
    'each in docs/operations.md',
  );
  // And every one the sample alert rules read is served: a misspelt name makes a rule that never fires.
  const read = [...new Set([...runbook.matchAll(/\bkeyusage_collector_([a-z_]+)/g)].map((m) => m[1]))];
  t.ok(read.length >= 10, `the rules read collector metrics (${read.length})`);
  t.same(
    read.filter((name) => !served.includes(name)),
    [],
    'each served',
  );
  // And every counter of dropped uses or failed work is read by a rule, or stands for a failure a
  // rule sees another way: a collector writing to the wrong database dropped every use as unknown,
  // and failing sweeps raised no event, with /healthz 200 and no sample rule firing.
  const rules = runbook.slice(runbook.indexOf('# keyusage.rules.yml\ngroups:'));
  const seenOtherwise = new Map([
    ['failed_flushes_total', 'KeyusageNoSuccessfulFlush reads flushes_total'],
    ['consecutive_failed_flushes', 'KeyusageNoSuccessfulFlush reads flushes_total'],
    ['overflow_unlisted_uses_total', 'a part of overflow_uses_total'],
    ['overflow_crowding_uses_total', 'a part of overflow_uses_total'],
    ['quarantined_uses_at_fold_total', 'a part of quarantined_uses_total'],
    ['quarantined_keys_total', "quarantined_uses_total's keys"],
    ['failed_folds_total', 'KeyusageUsageLogNotFolding reads consecutive_failed_folds'],
    ['key_list_read_failures_total', 'KeyusageKeyListStale reads key_list_age_seconds'],
    ['webhook_failed_attempts_total', "a receiver's failures, in its deliveries' log"],
    ['webhook_deliveries_failed_total', "a receiver's failures, in its deliveries' log"],
  ]);
  const losses = served.filter((name) => /failed|failures|overflow|unknown_uses|quarantined|unopened/.test(name));
  t.ok(losses.length >= 10, `the collector counts its losses and failures (${losses.length})`);
  t.same(
    losses.filter((name) => !seenOtherwise.has(name) && !rules.includes(`keyusage_collector_${name}[`)),
    [],
    'each read by a sample rule',
  );
  const health = await fetch(`http://127.0.0.1:${collector.metricsPort}/healthz`);
  t.equal(health.status, 200);
  t.equal((await fetch(`http://127.0.0.1:${collector.metricsPort}/nope`)).status, 404);
  const warning = collector.logLines.find((line) => line.includes('dropped malformed StatsD lines'));
  t.ok(warning, 'bad lines are logged (rate-limited)');
  t.notOk(
    collector.logLines.some((line) => line.includes('secretsecret')),
    'a key-shaped token in a bad line is redacted',
  );
});

t.test('datagrams carry ids, ip and outcome, never key material', async (t) => {
  const { db } = await freshDatabase(t);
  const sniffer = dgram.createSocket('udp4');
  const datagrams: string[] = [];
  sniffer.on('message', (message) => datagrams.push(message.toString()));
  await new Promise<void>((resolve) => sniffer.bind(0, '127.0.0.1', () => resolve()));
  t.teardown(() => sniffer.close());
  const recorder = new UsageRecorder({
    sink: createStatsdSink({ host: '127.0.0.1', port: sniffer.address().port, onError: () => {} }),
    maxEntries: 2,
    drainIntervalMs: 60_000,
    logger: silent,
  });
  const api = await startTestApi(t, db, { recordUse: recorder.record.bind(recorder) });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  await api.request('GET', '/api/whoami', { key: adminKey });
  await api.request('GET', '/api/whoami', { key: `${adminKey.slice(0, 36)}${'B'.repeat(43)}` });
  await api.request('GET', `/api/orgs/${org.id}/api-keys`, { key: adminKey });
  t.equal(recorder.stats.earlyDrains, 1, 'a full map drains early instead of growing');
  await recorder.stop();
  await waitFor('datagrams', () => (datagrams.length === 2 ? true : undefined));
  const line = (outcome: string) => `apikey.used:1|c|#key:${adminKeyId},org:${org.id},ip:127.0.0.1,outcome:${outcome}`;
  t.same(datagrams.join('\n').split('\n').sort(), [line('bad_secret'), line('ok'), line('ok')]);
  const [{ secret_hash: hash }] = await db('api_keys').where({ id: adminKeyId }).select('secret_hash');
  for (const secret of [adminKey, adminKey.slice(36), hash.toString('hex'), hash.toString('base64')]) {
    t.notOk(
      datagrams.some((d) => d.includes(secret)),
      'no secret or hash in a datagram',
    );
  }
});
