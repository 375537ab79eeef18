// Every line of a datagram has its receipt time, so a key's addresses of one datagram tie on
// last_seen. The key's last IP (its last line's address) must stay among its recent addresses,
// in the trim after the flush and in the API's read between the flush and the trim; other ties
// are broken by ip, the same way in both.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator } from '../collector/aggregator';
import { createPgUsageStore } from '../collector/usageStore';
import { waitFor } from '../harness/wait';
import type { Db } from '../shared/db';
import { RECENT_IPS_PER_KEY, TABLE } from '../shared/tables';
import type { Outcome } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { freshDatabase } from './helpers/database';

type Api = Awaited<ReturnType<typeof startTestApi>>;
type KeyRow = { lastUsedIp: string; lastFailedIp: string; recentIps: Array<{ ip: string }>; recentFailedIps: Array<{ ip: string }> };

// Six addresses, one more than are kept; the last sorts last as text.
const PROVEN = ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6'];
const FAILED = ['10.0.1.1', '10.0.1.2', '10.0.1.3', '10.0.1.4', '10.0.1.5', '10.0.1.6'];
// Kept, in the order shown: the last address first, then the others by ip.
const KEPT_PROVEN = ['10.0.0.6', '10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4'];
const KEPT_FAILED = ['10.0.1.6', '10.0.1.1', '10.0.1.2', '10.0.1.3', '10.0.1.4'];

async function usageOf(api: Api, orgId: string, adminKey: string, keyId: string): Promise<KeyRow> {
  const response = await api.request('GET', `/api/orgs/${orgId}/api-keys/usage?limit=100`, { key: adminKey });
  return response.body.data.find((k: { id: string }) => k.id === keyId);
}

const ipsOf = (rows: Array<{ ip: string }>) => rows.map((row) => row.ip);

async function storedIps(db: Db, table: string, keyId: string): Promise<string[]> {
  return (await db(table).where({ key_id: keyId }).orderBy('ip')).map((row: { ip: string }) => row.ip);
}

t.test("one datagram's addresses tie: the trim keeps the key's last IP and last failed IP (fails on the previous main)", async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const line = (ip: string, outcome: Outcome) => `apikey.used:1|c|#key:${adminKeyId},org:${org.id},ip:${ip},outcome:${outcome}`;
  await sendDatagrams(collector.receiver.port, [[...PROVEN.map((ip) => line(ip, 'ok')), ...FAILED.map((ip) => line(ip, 'bad_secret'))].join('\n')]);
  await waitFor('the lines', () => (collector.ingest.usageLines === PROVEN.length + FAILED.length ? true : undefined));
  t.ok(await collector.flusher.flush());
  await waitFor('the trim', async () => {
    const [proven, failed] = await Promise.all([storedIps(db, TABLE.recentIps, adminKeyId), storedIps(db, TABLE.failedIps, adminKeyId)]);
    return proven.length === RECENT_IPS_PER_KEY && failed.length === RECENT_IPS_PER_KEY ? true : undefined;
  });

  const row = await usageOf(api, org.id, adminKey, adminKeyId);
  t.equal(row.lastUsedIp, '10.0.0.6', "the last line's address");
  t.equal(row.lastFailedIp, '10.0.1.6');
  t.strictSame(await storedIps(db, TABLE.recentIps, adminKeyId), [...KEPT_PROVEN].sort(), 'the last IP is kept, then the first by ip');
  t.strictSame(await storedIps(db, TABLE.failedIps, adminKeyId), [...KEPT_FAILED].sort(), 'the last failed IP is kept');
  t.strictSame(ipsOf(row.recentIps), KEPT_PROVEN, 'the last IP is among the recent ones, first of its ties');
  t.strictSame(ipsOf(row.recentFailedIps), KEPT_FAILED);
  t.equal(collector.ingest.badLines, 0);
});

t.test('between a flush and its trim the API shows the rows the trim keeps (fails on the previous main)', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const key = { orgId: org.id, keyId: adminKeyId };
  // One receipt time for every use, as for the lines of one datagram.
  const at = Date.now();
  const aggregator = new Aggregator({ maxKeys: 10, now: () => at });
  for (const ip of PROVEN) aggregator.add({ ...key, ip, outcome: 'ok', count: 1 });
  for (const ip of FAILED) aggregator.add({ ...key, ip, outcome: 'bad_secret', count: 1 });
  const store = createPgUsageStore(db);
  const written = await store.write([{ id: randomUUID(), batch: aggregator.drain() }]);
  t.strictSame(await storedIps(db, TABLE.recentIps, adminKeyId), PROVEN, 'not trimmed yet');

  const before = await usageOf(api, org.id, adminKey, adminKeyId);
  t.equal(before.lastUsedIp, '10.0.0.6');
  t.strictSame(ipsOf(before.recentIps), KEPT_PROVEN, 'untrimmed: the last IP first of its ties, then by ip');
  t.strictSame(ipsOf(before.recentFailedIps), KEPT_FAILED);

  await store.prune(written.keysToTrim);
  t.strictSame(await storedIps(db, TABLE.recentIps, adminKeyId), [...KEPT_PROVEN].sort(), 'the trim keeps the rows shown');
  t.strictSame(await storedIps(db, TABLE.failedIps, adminKeyId), [...KEPT_FAILED].sort());
  const after = await usageOf(api, org.id, adminKey, adminKeyId);
  t.strictSame(ipsOf(after.recentIps), ipsOf(before.recentIps), 'the same rows, in the same order');
  t.strictSame(ipsOf(after.recentFailedIps), ipsOf(before.recentFailedIps));
});
