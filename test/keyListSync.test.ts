// The key list's reads (collector/keyListSync.ts) against a real PostgreSQL: a full read in pages,
// the keys created lately between full reads, deleted keys forgotten at the next full read, and
// failed reads that leave the list as it was.
import t from 'tap';
import { KeyList } from '../collector/keyList';
import { createKeyListSync } from '../collector/keyListSync';
import { createDb } from '../shared/db';
import { createLogger } from '../shared/logger';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { TABLE } from '../shared/tables';
import { waitFor } from '../harness/wait';
import { createOrg, insertKeys } from '../bench/lib/database';
import { freshDatabase } from './helpers/database';
import { PgProxy } from './helpers/faults';

const HOUR = 3_600_000;
const silent = rateLimitedWarn(createLogger({ level: 'silent', name: 'test' }), 0);

t.test('a full read in pages, keys created since, and deleted keys forgotten at the next full read', async (t) => {
  const { db } = await freshDatabase(t);
  const [acme, globex] = [await createOrg(db, 'acme'), await createOrg(db, 'globex')];
  const acmeKeys = await insertKeys(db, acme, 100_001, 'k'); // three pages of 50,000
  const [globexKey] = await insertKeys(db, globex, 1, 'g');
  const list = new KeyList(11);
  let now = 1_000_000;
  const sync = createKeyListSync({ db, list, refreshMs: 20, fullReadMs: HOUR, warn: silent, now: () => now });
  t.teardown(() => sync.stop());
  t.equal(sync.ageMs(), 0);
  sync.start();
  await waitFor('the first full read', async () => list.loaded || undefined, 30_000, 20);
  t.equal(sync.stats.lastFullReadAt, now);
  t.ok(
    acmeKeys.every((id) => list.admits(id, acme)),
    'every key of every page',
  );
  t.ok(list.admits(globexKey, globex));
  t.notOk(list.admits(globexKey, acme), 'a key under an org it is not in');
  t.ok(list.size >= 100_002);

  const [created] = await insertKeys(db, globex, 1, 'new');
  t.notOk(list.admits(created, globex), 'a key created after the read is not listed yet');
  await waitFor('a refresh to list the new key', async () => list.admits(created, globex) || undefined, 10_000, 20);
  t.equal(sync.stats.lastFullReadAt, 1_000_000, 'by a read of the keys created lately, not a full read');

  await db(TABLE.apiKeys).where({ id: acmeKeys[0] }).delete();
  now += HOUR;
  await waitFor('a full read to forget the deleted key', async () => (sync.stats.lastFullReadAt === now ? true : undefined), 30_000, 20);
  await sync.stop();
  t.notOk(list.admits(acmeKeys[0], acme), 'deleted: no longer listed');
  t.ok(list.admits(created, globex) && list.admits(acmeKeys[1], acme), 'the others still are');
  t.equal(sync.stats.failures, 0);
  t.equal(sync.ageMs(), 0);
});

t.test('a read that fails leaves the list as it was, is counted, and is tried again', async (t) => {
  const { db: seed, url } = await freshDatabase(t);
  const org = await createOrg(seed, 'acme');
  const [kept] = await insertKeys(seed, org, 1, 'k');
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const db = createDb(proxy.url, { poolMax: 2, connectTimeoutMs: 500 });
  t.teardown(() => db.destroy());
  const list = new KeyList(11);
  let now = 0;
  const warnings: string[] = [];
  const warn = (kind: string) => void warnings.push(kind);
  await proxy.down();
  const sync = createKeyListSync({ db, list, refreshMs: 20, warn, now: () => now });
  sync.start();
  await waitFor('a failed first read', async () => sync.stats.failures > 0 || undefined, 10_000, 20);
  t.equal(list.loaded, false, 'never read: not loaded, so every key is admitted');
  t.ok(list.admits('any', 'thing'));
  now = 5000;
  t.equal(sync.ageMs(), 5000, 'its age runs from the start');
  await proxy.up();
  await waitFor('the read once PostgreSQL is back', async () => list.loaded || undefined, 10_000, 20);
  t.ok(list.admits(kept, org));
  t.notOk(list.admits('any', 'thing'));
  await proxy.down();
  const failures = sync.stats.failures;
  await waitFor('another failed read', async () => sync.stats.failures > failures || undefined, 10_000, 20);
  t.ok(list.admits(kept, org), 'the list read before stays');
  t.ok(warnings.length > 0 && warnings.every((kind) => kind === 'key_list'), 'each failure is warned about (rate-limited by the caller)');
  await sync.stop();
});
