// Trimming recent addresses after a flush reads every key it is given (at 100 k keys, about a
// second of PostgreSQL's time per flush): the store names only the keys a write can have put over
// a cap, those that gained an address or a network, and a flush of keys seen from known addresses
// names none.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator } from '../collector/aggregator';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import type { Outcome } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

type Key = { orgId: string; keyId: string };

async function write(store: UsageStore, uses: Array<Key & { ip: string; outcome: Outcome }>) {
  const aggregator = new Aggregator({ maxKeys: 10, now: () => Date.now() });
  for (const use of uses) aggregator.add({ ...use, count: 1 });
  const result = await store.write([{ id: randomUUID(), batch: aggregator.drain() }]);
  return [...new Set(result.keysToTrim.map((k) => k.keyId))].sort();
}

t.test('a write names the keys that gained an address or a network, and only those', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const second = await api.services.apiKeys.create(org.id, { name: 'second', scopes: ['keys:read'], expiresAt: null });
  const a = { orgId: org.id, keyId: adminKeyId };
  const b = { orgId: org.id, keyId: second.key.id };
  const store = createPgUsageStore(db);
  t.same(
    await write(store, [
      { ...a, ip: '192.0.2.1', outcome: 'ok' },
      { ...b, ip: '192.0.2.2', outcome: 'ok' },
    ]),
    [a.keyId, b.keyId].sort(),
    'first addresses',
  );
  t.same(
    await write(store, [
      { ...a, ip: '192.0.2.1', outcome: 'ok' },
      { ...b, ip: '192.0.2.2', outcome: 'ok' },
    ]),
    [],
    'known addresses: none',
  );
  t.same(
    await write(store, [
      { ...a, ip: '192.0.2.1', outcome: 'ok' },
      { ...b, ip: '192.0.2.3', outcome: 'ok' },
    ]),
    [b.keyId],
    'a new address of one key',
  );
  t.same(await write(store, [{ ...a, ip: '198.51.100.7', outcome: 'bad_secret' }]), [a.keyId], 'a new failed address');
  t.same(await write(store, [{ ...a, ip: '198.51.100.7', outcome: 'bad_secret' }]), [], 'the same failed address again: none');
});
