// The key list's reads (collector/keyListSync.ts) against a real PostgreSQL: a full read in pages,
// the keys created lately between full reads, deleted keys forgotten at the next full read, and
// failed reads that leave the list as it was.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { KeyList } from '../collector/keyList';
import { createKeyListSync, createRecentKeysReader } from '../collector/keyListSync';
import { createDb } from '../shared/db';
import { createLogger } from '../shared/logger';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { TABLE } from '../shared/tables';
import { encodeUsageLine } from '../shared/usageWire';
import { waitFor } from '../harness/wait';
import { createOrg, insertKeys } from '../bench/lib/database';
import { freshDatabase } from './helpers/database';
import { PgProxy } from './helpers/faults';
import { sendDatagrams, startTestCollector } from './helpers/collector';

const HOUR = 3_600_000;
const silent = rateLimitedWarn(createLogger({ level: 'silent', name: 'test' }), 0);

t.test('a full read in pages, keys created since, and deleted keys forgotten at the next full read', async (t) => {
  const { db } = await freshDatabase(t);
  const [acme, globex] = [await createOrg(db, 'acme'), await createOrg(db, 'globex')];
  const acmeKeys = await insertKeys(db, acme, 100_001, 'k'); // three pages of 50,000
  const [globexKey] = await insertKeys(db, globex, 1, 'g');
  const list = new KeyList(11);
  let now = 1_000_000;
  const sync = createKeyListSync({ db, list, refreshMs: 20, fullReadMs: HOUR, warn: silent, now: () => now, elapsed: () => now });
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
  t.equal(sync.vouching(), list);
  // The wall clock steps back: the list vouches for nothing until a full read by the new clock.
  now -= 10 * HOUR;
  t.equal(sync.vouching(), undefined, 'a clock behind the last full read: no vouching');
  await waitFor('a full read at once, not ten hours later', async () => (sync.stats.lastFullReadAt === now ? true : undefined), 30_000, 20);
  t.equal(sync.vouching(), list);
  sync.stop();
  t.notOk(list.admits(acmeKeys[0], acme), 'deleted: no longer listed');
  t.ok(list.admits(created, globex) && list.admits(acmeKeys[1], acme), 'the others still are');
  t.equal(sync.stats.failures, 0);
  t.equal(sync.ageMs(), 0);
});

t.test("a refresh reads the keys created since the last read and five minutes before it, by the server's clock", async (t) => {
  const { db } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const list = new KeyList(11);
  // This process's clock reads 1970: only the time between its reads may count.
  let now = 5_000;
  const sync = createKeyListSync({ db, list, refreshMs: 20, fullReadMs: HOUR, warn: silent, now: () => now, elapsed: () => now });
  t.teardown(() => sync.stop());
  sync.start();
  await waitFor('the first full read', async () => list.loaded || undefined, 10_000, 20);
  // Created and backdated in one transaction: no refresh may see it with its first created_at.
  const old = await db.transaction(async (trx) => {
    const [id] = await insertKeys(trx, org, 1, 'old');
    await trx(TABLE.apiKeys)
      .where({ id })
      .update({ created_at: trx.raw("now() - interval '10 minutes'") });
    return id;
  });
  const [fresh] = await insertKeys(db, org, 1, 'fresh');
  await waitFor('a refresh to list the new key', async () => list.admits(fresh, org) || undefined, 10_000, 20);
  t.notOk(list.admits(old, org), 'a key created ten minutes ago is outside the window of a refresh right after a read');
  now += 20 * 60_000;
  await waitFor('a refresh twenty minutes later', async () => list.admits(old, org) || undefined, 10_000, 20);
  t.equal(sync.stats.lastFullReadAt, 5_000, 'by refreshes, not a full read');
  t.equal(sync.stats.failures, 0);
});

// The window was the wall clock's time since the last read: stepped back (or held) while time
// went on, it narrowed, and keys created meanwhile stayed unlisted until the next full read. The
// steady clock alone stops while the host is suspended.
t.test("a refresh's window is the longer of the steady and the wall clock's times since the last read", async (t) => {
  const { db } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const list = new KeyList(11);
  let wall = 5_000;
  let steady = 5_000;
  const sync = createKeyListSync({ db, list, refreshMs: 20, fullReadMs: HOUR, warn: silent, now: () => wall, elapsed: () => steady });
  t.teardown(() => sync.stop());
  sync.start();
  await waitFor('the first full read', async () => list.loaded || undefined, 10_000, 20);
  // Created and backdated in one transaction: no refresh may see it with its first created_at.
  const backdated = (name: string) =>
    db.transaction(async (trx) => {
      const [id] = await insertKeys(trx, org, 1, name);
      await trx(TABLE.apiKeys)
        .where({ id })
        .update({ created_at: trx.raw("now() - interval '20 minutes'") });
      return id;
    });
  const created = await backdated('created');
  steady += 30 * 60_000;
  wall += 60_000;
  await waitFor('a refresh thirty steady minutes later', async () => list.admits(created, org) || undefined, 10_000, 20);
  // A suspended host: the steady clock stood still while the wall clock went on.
  const whileSuspended = await backdated('suspended');
  wall += 30 * 60_000;
  await waitFor('a refresh thirty wall minutes later', async () => list.admits(whileSuspended, org) || undefined, 10_000, 20);
  t.equal(sync.stats.lastFullReadAt, 5_000, 'by refreshes, not a full read');
});

// A refresh reads again only the slices of created_at (10 s) whose keys changed since the last:
// after a bulk import the window holds every imported key for five minutes.
t.test('a refresh reads only the slices whose keys changed: late commits, backdated and moved keys', async (t) => {
  const { db } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const list = new KeyList(11);
  list.replace([]);
  const recent = createRecentKeysReader(db, list);
  const WINDOW_MS = 305_000;
  // Imported in one transaction two minutes ago: one created_at, one slice.
  const imported = await insertKeys(db, org, 500, 'bulk');
  await db(TABLE.apiKeys)
    .where({ org_id: org })
    .update({ created_at: db.raw("now() - interval '2 minutes'") });
  t.equal(await recent.read(WINDOW_MS), 500, 'the first read: every key in the window');
  t.ok(imported.every((id) => list.admits(id, org)));
  t.equal(await recent.read(WINDOW_MS), 0, 'nothing changed: no key read again');

  // A transaction begun before the read commits after it: its key's created_at is in a slice read.
  const late = await db.transaction();
  const [lateKey] = await insertKeys(late, org, 1, 'late');
  await late.raw('select pg_sleep(0.01)');
  const [other] = await insertKeys(db, org, 1, 'other');
  t.ok((await recent.read(WINDOW_MS)) >= 1, 'the committed key');
  t.ok(list.admits(other, org));
  t.notOk(list.admits(lateKey, org), 'not committed yet');
  await late.commit();
  t.ok((await recent.read(WINDOW_MS)) >= 1);
  t.ok(list.admits(lateKey, org), 'committed late: its slice changed, and is read again');
  t.equal(await recent.read(WINDOW_MS), 0);

  // A key given a created_at in the bulk's slice: that slice, and only it, is read again.
  const [backdated] = await insertKeys(db, org, 1, 'backdated');
  await db.raw('update api_keys set created_at = (select created_at from api_keys where id = ?) where id = ?', [imported[0], backdated]);
  t.notOk(list.admits(backdated, org));
  t.equal(await recent.read(WINDOW_MS), 501, "the bulk's slice read again with it, and no other");
  t.ok(list.admits(backdated, org), 'listed');
  // A key deleted changes its slice too: read again, harmlessly (the list forgets at full reads).
  await db(TABLE.apiKeys).where({ id: imported[1] }).delete();
  t.equal(await recent.read(WINDOW_MS), 500);
  // So does a key moved to another org (only SQL by hand does that): listed under its new org.
  const globex = await createOrg(db, 'globex');
  await db(TABLE.apiKeys).where({ id: imported[2] }).update({ org_id: globex });
  t.equal(await recent.read(WINDOW_MS), 500);
  t.ok(list.admits(imported[2], globex));
  // A created_at of 'infinity' (SQL by hand again) breaks no read: its key is left to full reads.
  const [endless] = await insertKeys(db, org, 1, 'endless');
  await db(TABLE.apiKeys).where({ id: endless }).update({ created_at: 'infinity' });
  t.equal(await recent.read(WINDOW_MS), 0);

  t.equal(await createRecentKeysReader(db, list).read(WINDOW_MS), 502, "a collector's first refresh: the whole window");
});

t.test('a refresh that brings many keys lets the event loop run between pages of 50,000', async (t) => {
  const { db } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const keys = await insertKeys(db, org, 100_001, 'bulk');
  await db(TABLE.apiKeys)
    .where({ org_id: org })
    .update({ created_at: db.raw('now()') });
  const list = new KeyList(11);
  list.replace([]);
  const added: number[] = [];
  // What the event loop found listed each time it ran after a page was added.
  const listedWhenTheLoopRan: number[] = [];
  const add = list.add.bind(list);
  list.add = (hashes) => {
    setImmediate(() => listedWhenTheLoopRan.push(list.size));
    added.push(hashes.length);
    add(hashes);
  };
  t.equal(await createRecentKeysReader(db, list).read(305_000), 100_001);
  t.same(
    [...added].sort((a, b) => a - b),
    [1, 50_000, 50_000],
    'in pages, in any order',
  );
  await new Promise((resolve) => setImmediate(resolve));
  const runningTotals = added.map((_, i) => added.slice(0, i + 1).reduce((a, b) => a + b));
  t.same(listedWhenTheLoopRan, runningTotals, 'the event loop ran after each page, before the next');
  t.ok(keys.every((id) => list.admits(id, org)));
});

t.test('a read held by a lock gives up at its timeout; stop() asks no further page of a full read', async (t) => {
  const { db } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  await insertKeys(db, org, 100_001, 'k'); // three pages of 50,000
  const locker = await db.transaction();
  await locker.raw('lock table api_keys in access exclusive mode');
  let locked = true;
  const unlock = async () => {
    if (locked) await locker.rollback();
    locked = false;
  };
  t.teardown(unlock);
  const waitingReads = async () =>
    Number((await db.raw(`select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%string_agg%'`)).rows[0].n);
  const timingOut = createKeyListSync({ db, list: new KeyList(11), refreshMs: 20, readTimeoutMs: 300, warn: silent, now: Date.now });
  timingOut.start();
  await waitFor('a read to time out', async () => timingOut.stats.failures > 0 || undefined, 10_000, 20);
  timingOut.stop();
  await waitFor('its last read to end', () => (timingOut.reading ? undefined : true), 10_000, 20);
  const list = new KeyList(11);
  const stopped = createKeyListSync({ db, list, refreshMs: 20, readTimeoutMs: 60_000, warn: silent, now: Date.now });
  stopped.start();
  await waitFor("a full read's first page waiting for the lock", async () => ((await waitingReads()) === 1 ? true : undefined), 10_000, 20);
  stopped.stop();
  t.ok(stopped.reading, 'stop() does not wait for the statement in flight');
  await unlock();
  await waitFor('the read to end once the lock is gone', () => (stopped.reading ? undefined : true), 10_000, 20);
  t.equal(list.loaded, false, 'the first page came back after stop(): no second page was asked, no list made');
  t.equal(stopped.stats.failures, 0);
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
  let steady = 0;
  const sync = createKeyListSync({ db, list, refreshMs: 20, warn, now: () => now, elapsed: () => steady });
  sync.start();
  await waitFor('a failed first read', async () => sync.stats.failures > 0 || undefined, 10_000, 20);
  t.equal(list.loaded, false, 'never read: not loaded, so every key is admitted');
  t.ok(list.admits('any', 'thing'));
  t.equal(sync.vouching(), undefined, 'and vouches for none');
  now = -HOUR;
  steady = 5000;
  t.equal(sync.ageMs(), 5000, 'its age runs from the start, on the steady clock: the wall clock stepped back an hour hides nothing');
  now = 5000;
  await proxy.up();
  await waitFor('the read once PostgreSQL is back', async () => list.loaded || undefined, 10_000, 20);
  t.ok(list.admits(kept, org));
  t.notOk(list.admits('any', 'thing'));
  t.equal(sync.vouching(), list, 'loaded: it vouches for its keys');
  const firstFullRead = sync.stats.lastFullReadAt;

  // The hourly full read fails (its pages cut), and keeps failing: the refreshes go on meanwhile.
  void proxy.cutAt(/order by "id" asc limit/, 'before-forward', 1_000_000);
  let failures = sync.stats.failures;
  now += HOUR;
  await waitFor('the full read to fail', async () => sync.stats.failures > failures || undefined, 10_000, 20);
  const [created] = await insertKeys(seed, org, 1, 'new');
  await waitFor('a refresh to list a key created since', async () => list.admits(created, org) || undefined, 10_000, 20);
  t.equal(sync.stats.lastFullReadAt, firstFullRead, 'listed by a refresh, while no full read succeeded');
  // Set and put back with no await between: no tick of the sync reads this clock.
  const at = now;
  const vouchMs = HOUR + 2 * (20 + 60_000); // the hour, two ticks of 20 ms, the retry's minute and one more
  now = firstFullRead + vouchMs;
  t.equal(sync.vouching(), list, 'a full read an hour old, its retry due: the list still vouches');
  now += 1;
  t.equal(sync.vouching(), undefined, 'past the time the retry had, it no longer does');
  now = at;
  proxy.disarm();
  now += 59_000;
  await waitFor('a refresh 59 s after the failed full read', async () => (sync.stats.lastReadAt === now ? true : undefined), 10_000, 20);
  t.equal(sync.stats.lastFullReadAt, firstFullRead, 'a refresh, not yet the full read');
  now += 1_000;
  await waitFor('the full read, tried again a minute later', async () => (sync.stats.lastFullReadAt === now ? true : undefined), 10_000, 20);

  await proxy.down();
  failures = sync.stats.failures;
  await waitFor('another failed read', async () => sync.stats.failures > failures || undefined, 10_000, 20);
  t.ok(list.admits(kept, org), 'the list read before stays');
  t.ok(warnings.length > 0 && warnings.every((kind) => kind === 'key_list'), 'each failure is warned about (rate-limited by the caller)');
  sync.stop();
});

t.test('the collector reads its key list at start, and keeps none with COLLECTOR_KEY_LIST_REFRESH_MS=0', async (t) => {
  const { db, url } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  await insertKeys(db, org, 3, 'k');
  const sample = (samples: Array<{ name: string; value: number }>, name: string) => samples.find((s) => s.name === `keyusage_collector_${name}`)?.value;
  const listing = await startTestCollector(t, url);
  const listed = await waitFor('the key list', () => ((sample(listing.samples(), 'key_list_keys') ?? 0) >= 3 ? listing.samples() : undefined), 10_000, 20);
  t.ok((sample(listed, 'key_list_age_seconds') ?? Infinity) < 5, 'read within the last seconds');
  t.equal(sample(listed, 'key_list_read_failures_total'), 0);
  await listing.stop();
  const unlisted = await startTestCollector(t, url, { COLLECTOR_KEY_LIST_REFRESH_MS: '0' });
  t.equal(sample(unlisted.samples(), 'key_list_keys'), 0, 'no list');
  t.equal(sample(unlisted.samples(), 'key_list_age_seconds'), 0);
});

t.test('a collector tells the two overflows apart: keys missing from the list at half the cap, any key at the cap', async (t) => {
  const { db, url } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const real = await insertKeys(db, org, 3, 'k');
  const collector = await startTestCollector(t, url, { COLLECTOR_MAX_PENDING_KEYS: '4', COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  const value = (name: string) => collector.samples().find((s) => s.name === `keyusage_collector_${name}`)?.value ?? NaN;
  await waitFor('the key list', () => (value('key_list_keys') >= 3 ? true : undefined), 10_000, 20);
  const line = (keyId: string, count: number) => encodeUsageLine({ keyId, orgId: org, ip: '192.0.2.1', outcome: 'ok', count });
  const forged = [randomUUID(), randomUUID(), randomUUID()];
  await sendDatagrams(collector.receiver.port, [[line(forged[0], 1), line(forged[1], 1), line(forged[2], 5)].join('\n')]);
  await waitFor('the forged ids', () => (value('uses_received_total') === 7 ? true : undefined));
  t.equal(value('overflow_unlisted_uses_total'), 5, 'the third forged id is refused: missing keys hold half the cap');
  await sendDatagrams(collector.receiver.port, [[line(real[0], 1), line(real[1], 1), line(real[2], 3)].join('\n')]);
  await waitFor('the real keys', () => (value('uses_received_total') === 12 ? true : undefined));
  t.equal(value('overflow_uses_total'), 8, 'two real keys are taken, the third refused at the cap');
  t.equal(value('overflow_unlisted_uses_total'), 5);
  const messages = collector.logLines.map((l) => JSON.parse(l).msg);
  t.ok(messages.includes('keys missing from the key list hold half the pending-key cap; uses of further such keys dropped (forged ids?)'));
  t.ok(messages.includes('pending-key cap reached; uses of new keys dropped'));

  // Without the list, as before it: forged ids take the whole cap, and a real key finds no room.
  await collector.stop();
  const unlisted = await startTestCollector(t, url, {
    COLLECTOR_MAX_PENDING_KEYS: '4',
    COLLECTOR_FLUSH_INTERVAL_MS: '600000',
    COLLECTOR_KEY_LIST_REFRESH_MS: '0',
  });
  const unlistedValue = (name: string) => unlisted.samples().find((s) => s.name === `keyusage_collector_${name}`)?.value ?? NaN;
  const flood = [randomUUID(), randomUUID(), randomUUID(), randomUUID()].map((keyId) => line(keyId, 1));
  await sendDatagrams(unlisted.receiver.port, [[...flood, line(real[0], 2)].join('\n')]);
  await waitFor('the flood', () => (unlistedValue('uses_received_total') === 6 ? true : undefined));
  t.equal(unlistedValue('overflow_uses_total'), 2, 'COLLECTOR_KEY_LIST_REFRESH_MS=0: four forged ids fill the cap, the real key is refused');
  t.equal(unlistedValue('overflow_unlisted_uses_total'), 0);
});

// The append's key check (collector/knownKeys.ts) takes the collector's key list as its word: a
// collector whose list is read asks PostgreSQL nothing about listed keys, even at its first append.
t.test("a collector's first append asks nothing about keys its list holds; one with no list asks about all", async (t) => {
  const { db, url } = await freshDatabase(t);
  const org = await createOrg(db, 'acme');
  const keys = await insertKeys(db, org, 3, 'k');
  const datagram = keys.map((keyId) => encodeUsageLine({ keyId, orgId: org, ip: '192.0.2.1', outcome: 'ok', count: 1 })).join('\n');
  const firstAppend = async (env: Record<string, string>) => {
    const collector = await startTestCollector(t, url, { COLLECTOR_USAGE_LOG: 'true', ...env });
    const value = (name: string) => collector.samples().find((s) => s.name === `keyusage_collector_${name}`)?.value ?? NaN;
    await waitFor('the key list, if any', () => (env.COLLECTOR_KEY_LIST_REFRESH_MS === '0' || value('key_list_keys') >= 3 ? true : undefined), 10_000, 20);
    await sendDatagrams(collector.receiver.port, [datagram]);
    await waitFor('the append', () => (value('uses_persisted_total') === 3 ? true : undefined), 10_000, 20);
    const statements = value('last_flush_statements');
    await collector.stop();
    return statements;
  };
  const listed = await firstAppend({});
  const unlisted = await firstAppend({ COLLECTOR_KEY_LIST_REFRESH_MS: '0' });
  t.equal(listed, unlisted - 1, `${listed} statements with the list, ${unlisted} without: one question fewer`);
});
