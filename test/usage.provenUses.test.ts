import { randomUUID } from 'node:crypto';
import t from 'tap';
import { createUsageStore } from '../collector/usageLog';
import { runCli } from '../scripts/cli';
import { expireIpData } from '../shared/ipRetention';
import { migrateLatest } from '../shared/db';
import { encodeUsageLine } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { freshDatabase, hourRows, migrateDownTo } from './helpers/database';
import { wiredSystem } from './helpers/wiredSystem';

const BIGINT_MAX = '9223372036854775807';

// A key with the victim's id and a secret that is not its own: what anyone who has seen the
// key id (in a listing, a log, a URL) can send.
const withWrongSecret = (key: string) => `${key.slice(0, 36)}${'A'.repeat(43)}`;

async function usageOf(api: Awaited<ReturnType<typeof startTestApi>>, orgId: string, adminKey: string, keyId: string, query = '') {
  const response = await api.request('GET', `/api/orgs/${orgId}/api-keys/usage?limit=100${query}`, { key: adminKey });
  return response.body.data.find((k: { id: string }) => k.id === keyId);
}

t.test('a stranger who knows only a key id cannot make the key look used (fails on the previous main)', async (t) => {
  const { db, api, collector, org, adminKey } = await wiredSystem(t);
  const victim = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'victim', scopes: ['keys:read'] } });
  // Never used and older than dormantDays (30): dormant, which the stranger must not change.
  await db('api_keys')
    .where({ id: victim.body.id })
    .update({ created_at: db.raw("created_at - interval '60 days'") });
  const ATTEMPTS = 5;
  for (let i = 0; i < ATTEMPTS; i += 1) {
    t.equal((await api.request('GET', '/api/whoami', { key: withWrongSecret(victim.body.key) })).status, 401);
  }
  const row = await waitFor('the failed attempts to be persisted', async () => {
    const found = await usageOf(api, org.id, adminKey, victim.body.id);
    return found?.failedAttempts === ATTEMPTS ? found : undefined;
  });
  t.equal(row.lastUsedAt, null, 'lastUsedAt did not move');
  t.equal(row.lastUsedIp, null);
  t.strictSame(row.recentIps, []);
  t.equal(row.requestCount, 0);
  t.strictSame(row.requests, { last24h: 0, last7d: 0, last30d: 0 });
  t.equal(row.dormant, true, 'the key stays dormant');
  t.equal(row.outcomes.bad_secret, ATTEMPTS, 'outcomes keeps every outcome');
  t.equal(row.lastFailedIp, '127.0.0.1');
  t.ok(Date.now() - Date.parse(row.lastFailedAt) < 10_000);
  t.match(row.recentFailedIps, [{ ip: '127.0.0.1', attemptCount: ATTEMPTS }]);
  const dormant = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormant=true`, { key: adminKey });
  t.ok(
    dormant.body.data.some((k: { id: string }) => k.id === victim.body.id),
    'still on the dormant list',
  );

  t.equal((await api.request('GET', '/api/whoami', { key: victim.body.key })).status, 200);
  const used = await waitFor('the proven use', async () => {
    const found = await usageOf(api, org.id, adminKey, victim.body.id);
    return found?.requestCount === 1 ? found : undefined;
  });
  t.equal(used.dormant, false);
  t.equal(used.failedAttempts, ATTEMPTS);
  t.equal(used.recentIps[0].requestCount, 1);
  t.equal(collector.ingest.badLines, 0);
});

t.test('the right secret on a revoked key is a use the operator sees as lastRevokedUseAt (fails on the previous main)', async (t) => {
  const { api, org, adminKey } = await wiredSystem(t);
  const leaked = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'leaked', scopes: ['keys:read'] } });
  t.equal((await api.request('POST', `/api/orgs/${org.id}/api-keys/${leaked.body.id}/revoke`, { key: adminKey })).status, 200);
  t.equal((await api.request('GET', '/api/whoami', { key: leaked.body.key })).status, 401);
  const row = await waitFor('the revoked use', async () => {
    const found = await usageOf(api, org.id, adminKey, leaked.body.id);
    return found?.lastRevokedUseAt ? found : undefined;
  });
  t.equal(row.status, 'revoked');
  t.equal(row.outcomes.revoked, 1);
  t.equal(row.requestCount, 1, 'a proven secret is a use even when refused');
  t.equal(row.lastUsedAt, row.lastRevokedUseAt);
  t.equal(row.lastExpiredUseAt, null);
});

t.test('lines written by the previous API version keep their meaning during a rolling deploy', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  // Verbatim what the 0.1.0 encoder sent: the wire format did not change, only what each outcome means.
  const tags = (ip: string, outcome: string) => `#key:${adminKeyId},org:${org.id},ip:${ip},outcome:${outcome}`;
  await sendDatagrams(collector.receiver.port, [
    `apikey.used:3|c|${tags('198.51.100.7', 'ok')}\napikey.used:2|c|${tags('203.0.113.66', 'bad_secret')}`,
    `apikey.used:1|c|${tags('198.51.100.8', 'expired')}`,
  ]);
  await waitFor('the lines', () => (collector.ingest.usageLines === 3 ? true : undefined));
  t.ok(await collector.flusher.flush());
  const row = await usageOf(api, org.id, adminKey, adminKeyId);
  t.equal(row.requestCount, 4);
  t.equal(row.failedAttempts, 2);
  t.equal(row.lastFailedIp, '203.0.113.66');
  t.strictSame(row.recentIps.map((ip: { ip: string }) => ip.ip).sort(), ['198.51.100.7', '198.51.100.8']);
  t.ok(row.lastExpiredUseAt, 'the expired use is remembered');

  const series = await api.request('GET', `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage?granularity=day&byOutcome=true`, { key: adminKey });
  t.equal(series.status, 200);
  t.equal(series.body.total, 4, 'the series counts proven uses');
  const today = series.body.buckets[series.body.buckets.length - 1];
  t.strictSame(today.outcomes, { ok: 3, forbidden: 0, expired: 1, revoked: 0, bad_secret: 2, cross_org: 0 });
  const plain = await api.request('GET', `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage?granularity=day`, { key: adminKey });
  t.equal(plain.body.buckets[0].outcomes, undefined, 'outcomes only when asked for');
});

t.test('a counter at the bigint maximum saturates instead of stalling every org (fails on the previous main)', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  const hour = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000);
  // Where forged lines (or years of traffic) could push a counter.
  await db('api_key_usage').insert({
    key_id: acme.adminKeyId,
    org_id: acme.org.id,
    request_count: BIGINT_MAX,
    ok_count: BIGINT_MAX,
    last_used_at: new Date(),
    last_used_ip: '192.0.2.1',
  });
  // The hour the flush adds to is still in the current hours' table; the one before has moved.
  await db('api_key_usage_current_hours').insert({ org_id: acme.org.id, key_id: acme.adminKeyId, hour, request_count: BIGINT_MAX, ok_count: BIGINT_MAX });
  await db('api_key_usage_hourly').insert({
    org_id: acme.org.id,
    key_id: acme.adminKeyId,
    hour: new Date(hour.getTime() - 3_600_000),
    request_count: BIGINT_MAX,
    ok_count: BIGINT_MAX,
  });
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  await sendDatagrams(collector.receiver.port, [
    encodeUsageLine({ keyId: acme.adminKeyId, orgId: acme.org.id, ip: '192.0.2.2', outcome: 'ok', count: 1000 }),
    encodeUsageLine({ keyId: globex.adminKeyId, orgId: globex.org.id, ip: '192.0.2.3', outcome: 'ok', count: 7 }),
  ]);
  await waitFor('the lines', () => (collector.ingest.usageLines === 2 ? true : undefined));
  t.ok(await collector.flusher.flush(), 'the flush succeeds');
  t.equal(collector.flusher.stats.failedFlushes, 0);
  t.equal((await db('api_key_usage').where({ key_id: globex.adminKeyId }).first()).request_count, 7, 'the other org is written');

  const row = await usageOf(api, acme.org.id, acme.adminKey, acme.adminKeyId);
  t.equal(row.requestCount, BIGINT_MAX, 'saturated, and returned exactly (a string beyond 2^53)');
  t.equal(row.outcomes.ok, BIGINT_MAX);
  t.equal(row.requests.last24h, '18446744073709551614', 'window sums are exact, not rounded and not overflowing');
  t.equal(row.lastUsedIp, '192.0.2.2');
  const series = await api.request('GET', `/api/orgs/${acme.org.id}/api-keys/${acme.adminKeyId}/usage?granularity=day`, { key: acme.adminKey });
  t.equal(series.status, 200);
  t.equal(series.body.total, '18446744073709551614');
  const small = await usageOf(api, globex.org.id, globex.adminKey, globex.adminKeyId);
  t.equal(small.requestCount, 7, 'safe integers stay JSON numbers');
});

t.test('a data error on one key is isolated: that key is set aside, every other key is written (fails on the previous main)', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const keys = await Promise.all(
    Array.from({ length: 7 }, async (_, i) => (await api.services.apiKeys.create(org.id, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null })).key.id),
  );
  const poisoned = keys[4];
  // A real PostgreSQL data error on one key's rows, whatever its cause in production.
  await db.raw(`create function refuse_poisoned() returns trigger language plpgsql as $$
    begin
      if new.key_id = '${poisoned}' then raise exception 'value out of range for key' using errcode = '22003'; end if;
      return new;
    end $$`);
  await db.raw('create trigger refuse_poisoned before insert or update on api_key_usage_current_hours for each row execute function refuse_poisoned()');
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  await sendDatagrams(
    collector.receiver.port,
    keys.map((keyId, i) => encodeUsageLine({ keyId, orgId: org.id, ip: '10.0.0.1', outcome: 'ok', count: i + 1 })),
  );
  await waitFor('the lines', () => (collector.ingest.usageLines === keys.length ? true : undefined));
  t.ok(await collector.flusher.flush(), 'the flush completes');
  const rows = await db('api_key_usage').whereIn('key_id', keys).select('key_id', 'request_count');
  t.strictSame(
    rows.map((r: { key_id: string }) => r.key_id).sort(),
    keys.filter((k) => k !== poisoned).sort(),
    'every key but the poisoned one is written, totals and hours alike',
  );
  t.equal((await hourRows(db, keys)).length, keys.length - 1);
  t.equal(collector.flusher.stats.quarantinedKeys, 1);
  t.equal(collector.flusher.stats.quarantinedUses, 5);
  t.ok(
    collector.logLines.some((line) => line.includes(poisoned) && line.includes('data error')),
    'the log names the key id',
  );
  const metrics = await (await fetch(`http://127.0.0.1:${collector.metricsPort}/metrics`)).text();
  t.match(metrics, /^keyusage_collector_quarantined_keys_total 1$/m);

  await db.raw('drop trigger refuse_poisoned on api_key_usage_current_hours');
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: poisoned, orgId: org.id, ip: '10.0.0.1', outcome: 'ok', count: 2 })]);
  await waitFor('the next line', () => (collector.ingest.usageLines === keys.length + 1 ? true : undefined));
  t.ok(await collector.flusher.flush());
  t.equal((await db('api_key_usage').where({ key_id: poisoned }).first()).request_count, 2, 'the key is not stuck: later uses land');
  // The refused uses were dropped for good; they are kept now, for a requeue once the cause is gone.
  const [kept] = await db('api_key_usage_set_aside').where({ key_id: poisoned }).select('org_id', 'reason', 'delta');
  t.match(kept, { org_id: org.id, reason: 'refused' });
  t.notMatch(kept.delta, /10\.0\.0\.1/, 'its counts, not its addresses (an erasure may have run since its row locks went)');
  // Holding no address, it outlives IP retention: its counts are not lost with the addresses.
  await expireIpData(db, 0);
  t.equal(await runCli(['usage-log', 'requeue'], { db, pepper: 'p'.repeat(32), now: Date.now, out: () => undefined, err: () => undefined }), 0);
  // The next fold (a collector's is due within a minute).
  await createUsageStore(db, { logMinKeys: undefined }).fold();
  t.equal((await db('api_key_usage').where({ key_id: poisoned }).first()).request_count, 7, 'requeued, the refused uses land too');
  t.equal((await db('api_key_usage_set_aside').count({ n: '*' }))[0].n, 0);
});

t.test('back down to 0.1.0 with addresses erased: 0.0.0.0 stands in, a failed address is no last use', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const probed = (await api.services.apiKeys.create(org.id, { name: 'probed', scopes: ['keys:read'], expiresAt: null })).key.id;
  const at = new Date('2026-11-30T10:00:00Z');
  await db('api_key_usage').insert([
    // Used, its address erased; a failed attempt's address kept.
    {
      org_id: org.id,
      key_id: adminKeyId,
      request_count: 5,
      ok_count: 5,
      bad_secret_count: 1,
      last_used_at: at,
      last_used_ip: null,
      last_failed_at: at,
      last_failed_ip: '198.51.100.9',
    },
    // Only probed, its address erased.
    { org_id: org.id, key_id: probed, request_count: 0, bad_secret_count: 2, last_failed_at: at, last_failed_ip: null },
  ]);
  await migrateDownTo(db, '20261125000002_api_key_usage.ts');
  const rows = new Map((await db('api_key_usage').select('key_id', 'request_count', 'last_used_ip')).map((row: { key_id: string }) => [row.key_id, row]));
  t.match(rows.get(adminKeyId), { request_count: 6, last_used_ip: '0.0.0.0' }, "not the failed attempt's address");
  t.match(rows.get(probed), { request_count: 2, last_used_ip: '0.0.0.0' });
});

t.test('the migrations run on a database holding 0.1.0 usage, and split its totals into proven uses and failed attempts', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const other = (await api.services.apiKeys.create(org.id, { name: 'probed', scopes: ['keys:read'], expiresAt: null })).key.id;
  await migrateDownTo(db, '20261125000002_api_key_usage.ts');
  const at = new Date('2026-11-30T10:00:00Z');
  await db('api_key_usage').insert([
    { key_id: adminKeyId, org_id: org.id, request_count: 10, ok_count: 7, bad_secret_count: 3, last_used_at: at, last_used_ip: '192.0.2.1' },
    { key_id: other, org_id: org.id, request_count: 4, bad_secret_count: 4, last_used_at: at, last_used_ip: '203.0.113.5' },
  ]);
  // The rest of what a 0.1.0 collector wrote, in its shape (no org_id, no per-outcome columns).
  await db('api_key_usage_hourly').insert({ key_id: adminKeyId, hour: at, request_count: 10 });
  await db('api_key_recent_ips').insert({ key_id: adminKeyId, ip: '192.0.2.1', first_seen: at, last_seen: at, request_count: 10 });
  await migrateLatest(db);
  t.match(await db('api_key_usage_hourly').where({ key_id: adminKeyId }).first(), { org_id: org.id, request_count: 10 }, 'hourly rows gain their org');
  t.match(await db('api_key_recent_ips').where({ key_id: adminKeyId }).first(), { org_id: org.id, ip: '192.0.2.1' }, 'recent IPs too');
  t.equal(
    (await db('api_key_ip_history').where({ key_id: adminKeyId }).pluck('first_ip'))[0],
    '192.0.2.1',
    'a key already in use knows its network: no key.new_ip flood after the deploy',
  );
  const rows = new Map((await db('api_key_usage').select()).map((row: { key_id: string }) => [row.key_id, row]));
  t.match(rows.get(adminKeyId), { request_count: 7, bad_secret_count: 3, last_used_ip: '192.0.2.1' });
  t.match(rows.get(other), { request_count: 0, bad_secret_count: 4, last_used_at: null, last_used_ip: null }, 'a key only ever probed is unused');
  // Then the new collector writes onto the migrated rows.
  const { Aggregator } = await import('../collector/aggregator');
  const { createPgUsageStore } = await import('../collector/usageStore');
  const aggregator = new Aggregator({ maxKeys: 10, now: () => at.getTime() + 60_000 });
  aggregator.add({ keyId: adminKeyId, orgId: org.id, ip: '192.0.2.1', outcome: 'ok', count: 2 });
  await createPgUsageStore(db).write([{ id: randomUUID(), batch: aggregator.drain() }]);
  const { moveClosedHours } = await import('../collector/hourMove');
  t.equal(await moveClosedHours(db, new Date()), 1, 'the closed hour moves');
  t.match(await db('api_key_usage_hourly').where({ key_id: adminKeyId }).first(), { request_count: 12, ok_count: 2 }, 'the old bucket keeps counting');
});
