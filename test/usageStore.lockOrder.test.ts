// A flush locks its rows in (org, key) order, the primary keys' order: the order every writer of
// the usage rows shares (flushes, the sweep's totals anchor), so none can deadlock another, and the
// order in which a flush of many orgs reads each index in one run per org.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator } from '../collector/aggregator';
import { createPgUsageStore } from '../collector/usageStore';
import { createDb, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

type Key = { orgId: string; keyId: string };

function flushOf(db: Db, keys: readonly Key[]) {
  const aggregator = new Aggregator({ maxKeys: 10, now: () => Date.now() });
  for (const key of keys) aggregator.add({ ...key, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  return createPgUsageStore(db).write([{ id: randomUUID(), batch: aggregator.drain() }]);
}

t.test("a flush holds the first org's rows while it waits for the second org's", async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const [first, second] = [await seedOrg(api, db, 'one'), await seedOrg(api, db, 'two')].sort((a, b) => (a.org.id < b.org.id ? -1 : 1));
  // The first org's key sorts after the second org's: key order alone would lock it last.
  let late = first.adminKeyId;
  while (late < second.adminKeyId) late = (await api.services.apiKeys.create(first.org.id, { name: 'late', scopes: ['keys:read'], expiresAt: null })).key.id;
  const early: Key = { orgId: second.org.id, keyId: second.adminKeyId };
  const lateKey: Key = { orgId: first.org.id, keyId: late };
  await flushOf(db, [early, lateKey]);

  const holder = createDb(url, { poolMax: 2 });
  t.teardown(() => holder.destroy());
  const held = await holder.transaction();
  await held.raw('select 1 from api_key_usage where org_id = ? and key_id = ? for update', [early.orgId, early.keyId]);
  const flushing = flushOf(db, [early, lateKey]);
  await waitFor('the flush to wait for the held row', async () =>
    (await holder.raw("select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%api_key_usage%'")).rows
      .length > 0
      ? true
      : undefined,
  );
  const free = await holder.raw('select key_id from api_key_usage where org_id = ? and key_id = ? for update skip locked', [lateKey.orgId, lateKey.keyId]);
  await held.commit();
  await flushing;
  t.equal(free.rows.length, 0, "the first org's row was locked before the flush reached the second org's");
  const totals = await db('api_key_usage').whereIn('key_id', [early.keyId, lateKey.keyId]).pluck('request_count');
  t.same(totals.map(Number), [2, 2], 'both flushes counted once');
});
