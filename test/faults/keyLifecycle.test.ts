// Keys that change while their uses are in flight (coalesced in an API's recorder or pending in the
// collector): rotations and a revocation, seen by the instance that made them and by a second API
// instance whose cache is still warm. Every use lands on the key it named, under the outcome its
// response showed. And the recorded IP against X-Forwarded-For sent by clients.
import t, { type Test } from 'tap';
import { createStatsdSink } from '../../api/usage/statsdSink';
import { UsageRecorder } from '../../api/usage/usageRecorder';
import type { Db } from '../../shared/db';
import { createLogger } from '../../shared/logger';
import { zeroOutcomes, type Outcome } from '../../shared/usageWire';
import { seedOrg, startTestApi } from '../helpers/api';
import { startTestCollector } from '../helpers/collector';
import { waitFor } from '../../harness/wait';
import { freshDatabase } from '../helpers/database';
import { LeakScan, persistedUsage, recordingSink, reportFigures } from '../helpers/faults';

const leaks = new LeakScan();
const silent = createLogger({ level: 'silent', name: 'test' });

type Collector = Awaited<ReturnType<typeof startTestCollector>>;

// An API instance as `api/main.ts` wires it: its own recorder, sending real datagrams to the collector.
async function apiInstance(t: Test, db: Db, collector: Collector, name: string, env: Record<string, string> = {}) {
  const datagrams: string[] = [];
  const recorder = new UsageRecorder({
    sink: recordingSink(createStatsdSink({ host: '127.0.0.1', port: collector.receiver.port, onError: () => {} }), datagrams),
    maxEntries: 10_000,
    drainIntervalMs: 50,
    logger: silent,
  });
  recorder.start();
  t.teardown(() => recorder.stop());
  const api = await startTestApi(t, db, { recordUse: recorder.record.bind(recorder), env });
  leaks.watch(`${name} bodies`, () => api.evidence.bodies);
  leaks.watch(`${name} log`, () => api.evidence.logLines);
  leaks.watch(`${name} datagrams`, () => datagrams);
  leaks.watch('collector log', () => collector.logLines);
  return { api, recorder };
}

/** Drains every recorder, waits for the collector to receive all of it, then flushes. */
async function flushAll(t: Test, collector: Collector, recorders: UsageRecorder[]) {
  for (const recorder of recorders) recorder.drain();
  await waitFor('every drained use to be sent', () => (recorders.every((r) => r.stats.sentUses === r.stats.recordedUses) ? true : undefined));
  const datagrams = recorders.reduce((sum, r) => sum + r.stats.datagrams, 0);
  await waitFor('the collector to receive every datagram', () => (collector.ingest.packets === datagrams ? true : undefined));
  t.ok(await collector.flusher.flush(), 'flushed');
}

const zero = zeroOutcomes;

t.test('rotated and revoked while uses are in flight: every use counted against the key it named, with the outcome it got', async (t) => {
  const { db, url } = await freshDatabase(t);
  // Flushes only when the test says so: until then every use is in flight.
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const one = await apiInstance(t, db, collector, 'api-1');
  const two = await apiInstance(t, db, collector, 'api-2', { KEY_CACHE_TTL_MS: '60000' });
  const { org, adminKey, adminKeyId } = await seedOrg(one.api, db);
  const other = await seedOrg(one.api, db, 'bystander');
  leaks.plaintext(adminKey);
  leaks.plaintext(other.adminKey);
  let adminUses = 0; // seedOrg creates the admin key through the service; every HTTP call below is a use
  const create = async (name: string) => {
    const response = await one.api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
    adminUses += 1;
    leaks.plaintext(response.body.key);
    return { id: response.body.id as string, key: response.body.key as string };
  };
  const target = await create('target');
  const neighbour = await create('neighbour');

  const expected = new Map<string, Record<Outcome, number>>([
    [target.id, zero()],
    [neighbour.id, zero()],
  ]);
  const statusWhenRefused = new Map<number, number>();
  // A reader key on GET /api/whoami: 200 is ok; a 401 is `revoked` if the secret is still one the
  // key accepts, else `bad_secret`. Each response says which outcome its use was recorded with.
  const call = async (api: typeof one.api, keyId: string, key: string, refusedAs: (status: number) => Outcome) => {
    const response = await api.request('GET', '/api/whoami', { key });
    const outcome: Outcome = response.status === 200 ? 'ok' : refusedAs(response.status);
    if (response.status !== 200) statusWhenRefused.set(response.status, (statusWhenRefused.get(response.status) ?? 0) + 1);
    expected.get(keyId)![outcome] += 1;
  };
  const burst = (n: number, fn: (i: number) => Promise<unknown>) => Promise.all(Array.from({ length: n }, (_, i) => fn(i)));
  const badSecret = () => 'bad_secret' as const;
  const revoked = () => 'revoked' as const;

  // Warm both instances' caches, and some neighbour traffic throughout.
  await burst(50, (i) => call(i % 2 ? one.api : two.api, target.id, target.key, badSecret));
  await burst(20, (i) => call(i % 2 ? one.api : two.api, neighbour.id, neighbour.key, badSecret));

  // Rotation with a grace period, racing requests with the old secret and the new one.
  const rotating = one.api.request('POST', `/api/orgs/${org.id}/api-keys/${target.id}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 60 } });
  adminUses += 1;
  await burst(40, () => call(one.api, target.id, target.key, badSecret)); // the old secret works throughout
  const rotated = (await rotating).body.key as string;
  leaks.plaintext(rotated);
  t.equal((await rotating).body.id, target.id, 'rotation keeps the key id');
  await burst(60, (i) => call(i % 2 ? one.api : two.api, target.id, i % 3 ? rotated : target.key, badSecret));

  // A second rotation without grace: the first two secrets stop working at once.
  const rerotated = (await one.api.request('POST', `/api/orgs/${org.id}/api-keys/${target.id}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 0 } })).body
    .key as string;
  adminUses += 1;
  leaks.plaintext(rerotated);
  await burst(30, (i) => call(i % 2 ? one.api : two.api, target.id, [target.key, rotated, rerotated][i % 3], badSecret));
  await call(two.api, target.id, rerotated, badSecret); // the second instance now caches the current secret

  // Revocation racing requests with the current secret.
  const revoking = one.api.request('POST', `/api/orgs/${org.id}/api-keys/${target.id}/revoke`, { key: adminKey });
  adminUses += 1;
  await burst(40, () => call(one.api, target.id, rerotated, revoked));
  t.equal((await revoking).status, 200);
  await burst(30, (i) => call(one.api, target.id, i % 2 ? rerotated : rotated, (status) => (i % 2 && status === 401 ? 'revoked' : 'bad_secret')));
  // The second instance learns of the revocation when its cache entry expires (KEY_CACHE_TTL_MS,
  // 60 s here): until then it accepts the key. Either way the use is the target's.
  const okBefore = expected.get(target.id)!.ok;
  await burst(30, () => call(two.api, target.id, rerotated, revoked));
  const staleAccepts = expected.get(target.id)!.ok - okBefore;
  t.equal(staleAccepts, 30, 'a second instance with a warm cache accepts a revoked key until its cache entry expires (documented)');
  await burst(20, (i) => call(i % 2 ? one.api : two.api, neighbour.id, neighbour.key, badSecret));

  // Every use so far is still in flight: in a recorder or in the collector's aggregator.
  t.equal((await db('api_key_usage').count({ n: '*' }))[0].n, 0, 'nothing flushed yet');
  await flushAll(t, collector, [one.recorder, two.recorder]);

  const persisted = await persistedUsage(db, [target.id, neighbour.id, adminKeyId, other.adminKeyId]);
  t.same(persisted.outcomes(target.id), expected.get(target.id), 'the target: every use, under the outcome its response showed');
  t.same(persisted.outcomes(neighbour.id), expected.get(neighbour.id), 'the neighbour: its own uses only');
  t.equal(persisted.outcomes(adminKeyId).ok, adminUses, 'the admin key: its own calls');
  t.equal(persisted.count(other.adminKeyId), 0, 'a key of another org: untouched');
  t.equal(persisted.rows, 3, 'no row for any other key');
  t.equal(collector.flusher.stats.unknownUses, 0, 'no use was dropped as unknown');
  const targetOutcomes = expected.get(target.id)!;
  t.ok(targetOutcomes.ok > 0 && targetOutcomes.bad_secret > 0 && targetOutcomes.revoked > 0, `all three outcomes occurred: ${JSON.stringify(targetOutcomes)}`);
  await leaks.hashesFrom(db);
  reportFigures(t, 'rotate-revoke-in-flight', {
    target: targetOutcomes,
    neighbour: expected.get(neighbour.id),
    staleAcceptsBySecondInstance: staleAccepts,
    refusedStatuses: Object.fromEntries(statusWhenRefused),
    persistedTarget: persisted.count(target.id),
  });
});

t.test('X-Forwarded-For from a client does not change the recorded IP unless a proxy is trusted', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const direct = await apiInstance(t, db, collector, 'api-untrusting');
  const proxied = await apiInstance(t, db, collector, 'api-behind-proxy', { TRUST_PROXY: 'loopback' });
  const { org, adminKey } = await seedOrg(direct.api, db);
  leaks.plaintext(adminKey);
  const create = async (name: string) => {
    const response = await direct.api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
    leaks.plaintext(response.body.key);
    return { id: response.body.id as string, key: response.body.key as string };
  };
  const untrusted = await create('untrusted');
  const trusted = await create('trusted');
  const forged = ['203.0.113.66', '203.0.113.66, 198.51.100.1', '::1', '10.0.0.1'];
  for (const xff of forged) {
    const response = await direct.api.request('GET', '/api/whoami', { key: untrusted.key, headers: { 'x-forwarded-for': xff } });
    t.equal(response.status, 200);
  }
  // Behind a trusted proxy on loopback, the address the proxy appended is the client's.
  for (let i = 0; i < 3; i += 1) {
    await proxied.api.request('GET', '/api/whoami', { key: trusted.key, headers: { 'x-forwarded-for': `192.0.2.99, 203.0.113.${10 + i}` } });
  }
  await flushAll(t, collector, [direct.recorder, proxied.recorder]);
  const ips = async (keyId: string) =>
    (await db('api_key_recent_ips').where({ key_id: keyId }).orderBy('ip')).map((r: { ip: string; request_count: number }) => [r.ip, r.request_count]);
  t.same(await ips(untrusted.id), [['127.0.0.1', forged.length]], 'untrusted X-Forwarded-For is ignored: the socket address is recorded');
  t.equal((await db('api_key_usage').where({ key_id: untrusted.id }).first()).last_used_ip, '127.0.0.1');
  t.same(
    await ips(trusted.id),
    [
      ['203.0.113.10', 1],
      ['203.0.113.11', 1],
      ['203.0.113.12', 1],
    ],
    'with TRUST_PROXY=loopback the rightmost untrusted hop is recorded, never the leftmost forged one',
  );
  await leaks.hashesFrom(db);
});

t.test('a use behind a trusting proxy is counted even when X-Forwarded-For is not an address', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  // TRUST_PROXY=true trusts every hop, so the leftmost X-Forwarded-For entry (client-supplied
  // text, unvalidated by proxy-addr) becomes req.ip.
  const { api, recorder } = await apiInstance(t, db, collector, 'api-trust-all', { TRUST_PROXY: 'true' });
  const { adminKeyId, adminKey } = await seedOrg(api, db);
  leaks.plaintext(adminKey);
  const junk = ['not-an-ip', `1.2.3.4|#key:${adminKeyId}`, 'fe80::1%eth0', '999.1.1.1', 'unknown'];
  for (const xff of junk)
    t.equal(
      (await api.request('GET', '/api/whoami', { key: adminKey, headers: { 'x-forwarded-for': xff } })).status,
      200,
      `served with X-Forwarded-For: ${xff}`,
    );
  await flushAll(t, collector, [recorder]);
  const row = await db('api_key_usage').where({ key_id: adminKeyId }).first();
  const recorded = (await db('api_key_recent_ips').where({ key_id: adminKeyId }).orderBy('ip')).map((r: { ip: string }) => r.ip);
  reportFigures(t, 'xff-junk-trust-all', {
    requests: junk.length,
    usesPersisted: row?.request_count ?? 0,
    badLinesAtCollector: collector.ingest.badLines,
    recordedIps: recorded,
  });
  t.ok(
    recorded.every((ip: string) => ip === '127.0.0.1' || ip === 'fe80::1'),
    `only addresses recorded: ${recorded.join(', ')}`,
  );
  // isIP('fe80::1%eth0') is 6, so a zone id passes the resolver's check; the collector refuses it.
  t.equal(collector.ingest.badLines, 0, 'no usage line was dropped as malformed');
  t.equal(row?.request_count ?? 0, junk.length, 'every use counted');
  await leaks.hashesFrom(db);
});

t.test('leak scan: no key or hash in any response body, log line or datagram of this file', async (t) => {
  const result = leaks.scan();
  t.ok(result.texts > 0 && result.secrets > 0, `scanned ${result.texts} texts (${result.bytes} bytes) for ${result.secrets} secrets`);
  t.same(result.hits, [], 'zero hits');
});
