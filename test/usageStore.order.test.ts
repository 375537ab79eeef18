import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { Aggregator } from '../collector/aggregator';
import { createPgUsageStore } from '../collector/usageStore';
import { insertKeys } from '../bench/lib/database';
import { HOUR_MS, hourOf } from '../shared/timeUnits';
import type { Outcome } from '../shared/usageWire';
import { freshDatabase, hourRows } from './helpers/database';

// What the store writes when a flush spans two hours, and when flushes commit out of order (a
// fold of older log rows, a slower second collector, a late |T line). Mutation testing of the
// store (2026-12-07) found three changes no test noticed: every hour's row written with the
// key's totals, the last failed address compared on the last use's time, and a last use allowed
// to move back.

type Line = { at: number; ip: string; outcome: Outcome };

async function oneKey(t: Test) {
  const { db } = await freshDatabase(t);
  const [org] = await db('organizations').insert({ name: 'acme' }).returning('*');
  const [keyId] = await insertKeys(db, org.id, 1, 'k');
  const store = createPgUsageStore(db);
  // The lines received at their times, drained and written as one flush.
  const flush = async (lines: readonly Line[]) => {
    let clock = 0;
    const aggregator = new Aggregator({ maxKeys: 10, now: () => clock });
    for (const line of lines) {
      clock = line.at;
      aggregator.add({ keyId, orgId: org.id, ip: line.ip, outcome: line.outcome, count: 1 });
    }
    await store.write([{ id: randomUUID(), batch: aggregator.drain() }]);
  };
  const totals = () => db('api_key_usage').where({ key_id: keyId }).first();
  return { db, keyId, flush, totals };
}

const HOUR = hourOf(Date.now()) - HOUR_MS;
const ok = (at: number, ip: string): Line => ({ at, ip, outcome: 'ok' });
const badSecret = (at: number, ip: string): Line => ({ at, ip, outcome: 'bad_secret' });

t.test("a flush across an hour writes each hour's own counts", async (t) => {
  const { db, keyId, flush } = await oneKey(t);
  await flush([
    ok(HOUR - 3000, '192.0.2.1'),
    ok(HOUR - 2000, '192.0.2.1'),
    ok(HOUR - 1000, '192.0.2.1'),
    ok(HOUR + 1000, '192.0.2.1'),
    ok(HOUR + 2000, '192.0.2.1'),
  ]);
  t.strictSame(
    (await hourRows(db, [keyId])).map((row) => [row.hour.getTime(), row.request_count, row.ok_count]),
    [
      [HOUR - HOUR_MS, 3, 3],
      [HOUR, 2, 2],
    ],
  );
});

t.test('the newest address of each kind wins, by its own time', async (t) => {
  const { flush, totals } = await oneKey(t);
  const at = HOUR + 10_000;
  await flush([ok(at - 5000, '198.51.100.9'), badSecret(at, '198.51.100.1')]);
  await flush([badSecret(at + 1000, '198.51.100.2')]);
  const row = await totals();
  t.strictSame(
    [row.last_failed_ip, row.last_failed_at.getTime()],
    ['198.51.100.2', at + 1000],
    'a later flush of failed attempts alone moves the last failed address',
  );
  t.equal(row.last_used_ip, '198.51.100.9', 'and not the last use');
  await flush([ok(at + 2000, '198.51.100.3')]);
  t.equal((await totals()).last_used_ip, '198.51.100.3');
});

t.test('a flush that commits after a newer one moves no last time back', async (t) => {
  const { flush, totals } = await oneKey(t);
  const at = HOUR + 600_000;
  await flush([ok(at, '198.51.100.1'), badSecret(at, '198.51.100.1')]);
  await flush([ok(at - 60_000, '198.51.100.2'), badSecret(at - 60_000, '198.51.100.2')]);
  const row = await totals();
  t.strictSame(
    [row.last_used_at.getTime(), row.last_used_ip, row.last_failed_at.getTime(), row.last_failed_ip, Number(row.request_count)],
    [at, '198.51.100.1', at, '198.51.100.1', 2],
    'the older uses count, the newer time and address stay',
  );
});
