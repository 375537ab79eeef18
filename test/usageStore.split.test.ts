// A large flush of several orgs is split by org into parallel transactions (PostgreSQL runs each
// statement on one core). Each part claims its own orgs' (batch, org) pairs in the flush ledger,
// so a part that failed beside one that committed is retried under the same batch id, and only
// the orgs not yet written are written.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { Aggregator } from '../collector/aggregator';
import { claimBatches, CommitInDoubtError, createPgUsageStore, PartlyWrittenError, SPLIT_MIN_KEYS, type PendingBatch } from '../collector/usageStore';
import { createDb, type Db } from '../shared/db';
import { waitFor } from '../harness/wait';
import { createOrg, insertKeys } from '../bench/lib/database';
import { freshDatabase } from './helpers/database';
import { plainDelta } from './helpers/deltas';
import { TABLE } from '../shared/tables';
import { createUsageStore } from '../collector/usageLog';
import { PgProxy } from './helpers/faults';
import { Flusher } from '../collector/flusher';
import { createLogger } from '../shared/logger';

type Org = { orgId: string; keyIds: string[] };

// Two orgs of half the threshold each (and one key more): split in two parts of one org each.
async function twoOrgs(db: Db): Promise<[Org, Org]> {
  const orgs: Org[] = [];
  for (const name of ['first', 'second']) {
    const orgId = await createOrg(db, name);
    orgs.push({ orgId, keyIds: await insertKeys(db, orgId, SPLIT_MIN_KEYS / 2 + 1, `${name}-`) });
  }
  return orgs as [Org, Org];
}

function batchOf(orgs: readonly Org[]): PendingBatch {
  const aggregator = new Aggregator({ maxKeys: 2 * SPLIT_MIN_KEYS, now: () => Date.now() });
  for (const { orgId, keyIds } of orgs) for (const keyId of keyIds) aggregator.add({ orgId, keyId, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  return { id: randomUUID(), batch: aggregator.drain() };
}

// Two orgs whose rows exist (a first write), and a store that splits.
async function written(t: Test) {
  const { db, url } = await freshDatabase(t);
  const [first, second] = await twoOrgs(db);
  const store = createPgUsageStore(db, { parallelism: 2 });
  await store.write([batchOf([first, second])]);
  return { db, url, first, second, store };
}

// The org's first key's totals row, locked from another connection as a slow writer would.
async function holdRow(t: Test, url: string, org: Org) {
  const holder = createDb(url, { poolMax: 1 });
  t.teardown(() => holder.destroy());
  const held = await holder.transaction();
  await held.raw('select 1 from api_key_usage where org_id = ? and key_id = ? for update', [org.orgId, org.keyIds[0]]);
  return held;
}

// PostgreSQL refuses every write of the org's usage totals (a trigger) until end(): one part of a
// split write fails while the others commit.
async function refuseUsageOf(db: Db, orgId: string) {
  await db.raw(`create function refuse_usage_of_org() returns trigger language plpgsql as $$
    begin
      if new.org_id = '${orgId}' then raise exception 'refused for the test'; end if;
      return new;
    end $$`);
  await db.raw('create trigger refuse_usage_of_org before insert or update on api_key_usage for each row execute function refuse_usage_of_org()');
  return { end: () => db.raw('drop trigger refuse_usage_of_org on api_key_usage') };
}

const usesOf = async (db: Db, org: Org) => Number((await db('api_key_usage').where({ org_id: org.orgId }).sum({ n: 'request_count' }).first())?.n ?? 0);

t.test('each org group commits on its own transaction, at once', async (t) => {
  const { db, url, first, second, store } = await written(t);
  const held = await holdRow(t, url, first);
  const writing = store.write([batchOf([first, second])]);
  try {
    // The second org's part commits while the first org's waits for the held row.
    await waitFor('the second org to be written', async () => ((await usesOf(db, second)) === 2 * second.keyIds.length ? true : undefined), 60_000);
    t.equal(await usesOf(db, first), first.keyIds.length, "the first org's part is still waiting");
  } finally {
    // Released however the wait ended, so the write (and the test's teardown) can finish.
    await held.commit();
  }
  const result = await writing;
  t.match(result, { appliedBatches: 1, duplicateBatches: 0, keysWritten: first.keyIds.length + second.keyIds.length, unknownKeys: 0 });
  t.equal(await usesOf(db, first), 2 * first.keyIds.length, 'then the first org too');
});

t.test('a part that fails beside one that commits leaves the batch in doubt; its retry writes the rest once', async (t) => {
  const { db } = await freshDatabase(t);
  const [first, second] = await twoOrgs(db);
  const refusal = await refuseUsageOf(db, first.orgId);
  const store = createPgUsageStore(db, { parallelism: 2 });
  const batch = batchOf([first, second]);

  const error = await store.write([batch]).catch((e: unknown) => e);
  t.type(error, CommitInDoubtError, 'in doubt: the flusher keeps the batch apart, under its id');
  t.type(error, PartlyWrittenError);
  t.match((error as Error).message, /another part of the flush committed; this part failed: refused for the test/);
  t.match((error as PartlyWrittenError).written, { keysWritten: second.keyIds.length, usesWritten: second.keyIds.length }, 'what the committed part wrote');
  t.same([await usesOf(db, first), await usesOf(db, second)], [0, second.keyIds.length], 'the second org was written');

  await refusal.end();
  const retried = await store.write([batch]);
  t.match(retried, { appliedBatches: 1, duplicateBatches: 0, duplicateUses: second.keyIds.length, usesWritten: first.keyIds.length });
  t.same([await usesOf(db, first), await usesOf(db, second)], [first.keyIds.length, second.keyIds.length], 'each org once');
  t.match(await store.write([batch]), { appliedBatches: 0, duplicateBatches: 1, usesWritten: 0 }, 'a third attempt writes nothing');
});

t.test('when every part fails, nothing committed: a plain error, the batch may absorb newer uses', async (t) => {
  const { db } = await freshDatabase(t);
  const orgs = await twoOrgs(db);
  await db.raw(`create function refuse_all() returns trigger language plpgsql as $$ begin raise exception 'refused for the test'; end $$`);
  await db.raw('create trigger refuse_all before insert or update on api_key_usage for each row execute function refuse_all()');
  const error = await createPgUsageStore(db, { parallelism: 2 })
    .write([batchOf(orgs)])
    .catch((e: unknown) => e);
  t.match(error, { message: 'refused for the test' });
  t.notOk(error instanceof CommitInDoubtError, 'not in doubt');
});

t.test('below the threshold a write of two orgs stays one transaction', async (t) => {
  const { db, url, first, second, store } = await written(t);
  const small: Org = { orgId: second.orgId, keyIds: second.keyIds.slice(0, 10) };
  const held = await holdRow(t, url, first);
  const writing = store.write([batchOf([{ orgId: first.orgId, keyIds: first.keyIds.slice(0, 10) }, small])]);
  try {
    await waitFor('the write to wait for the held row', async () =>
      (await db.raw("select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows.length > 0 ? true : undefined,
    );
    t.equal(await usesOf(db, second), second.keyIds.length, "the other org's keys wait with it: one transaction");
  } finally {
    await held.commit();
  }
  await writing;
  t.equal(await usesOf(db, second), second.keyIds.length + small.keyIds.length);
});

t.test('a commit in doubt beside a committed part is reported with what that part wrote; the retry writes nothing twice', async (t) => {
  const { db, url } = await freshDatabase(t);
  const [first, second] = await twoOrgs(db);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const proxied = createDb(proxy.url, { poolMax: 4 });
  t.teardown(() => proxied.destroy());
  const store = createPgUsageStore(proxied, { parallelism: 2 });
  const batch = batchOf([first, second]);

  // The first part to commit reaches PostgreSQL, then its connection drops before the reply.
  const cut = proxy.cutAt(/^COMMIT/i, 'after-forward');
  const error = await store.write([batch]).catch((e: unknown) => e);
  await cut;
  t.type(error, PartlyWrittenError, 'the other part committed');
  t.type((error as PartlyWrittenError).cause, CommitInDoubtError, 'the cut part is in doubt, not failed');
  const oneOrg = SPLIT_MIN_KEYS / 2 + 1;
  t.match((error as PartlyWrittenError).written, { keysWritten: oneOrg, usesWritten: oneOrg }, 'what the committed part wrote');
  t.same([await usesOf(db, first), await usesOf(db, second)], [oneOrg, oneOrg], 'both parts landed');

  t.match(await store.write([batch]), { appliedBatches: 0, duplicateBatches: 1, usesWritten: 0 }, 'the retry finds both orgs claimed');
  t.same([await usesOf(db, first), await usesOf(db, second)], [oneOrg, oneOrg], 'each org once');
});

// claimBatches keeps a batch's keys whole when the ledger took every one of its (batch, org) pairs,
// and filters them otherwise, one batch id at a time: two batches of one id (none are made today)
// must not count a pair that the other batch's org made look claimed.
t.test('claimBatches: a pair already in the ledger is not claimed again, even beside another batch of its id', async (t) => {
  const { db } = await freshDatabase(t);
  const [first, second] = await twoOrgs(db);
  const id = randomUUID();
  const ofOrg = (org: Org): PendingBatch => ({ id, batch: batchOf([{ orgId: org.orgId, keyIds: org.keyIds.slice(0, 2) }]).batch });
  await db('usage_flushes').insert({ id, org_id: first.orgId });
  const trx = await db.transaction();
  t.teardown(() => trx.rollback().catch(() => undefined));
  const claimed = await claimBatches(trx, [ofOrg(first), ofOrg(second)]);
  t.same(
    claimed.fresh.map((batch) => batch.keys.map((k) => k.orgId)),
    [[], [second.orgId, second.orgId]],
    "the first org's pair was in the ledger: its keys are not fresh",
  );
  t.equal(claimed.duplicateUses, 2);
});

// Only the last-used and last-failed addresses write '' (none) as null; an address in a key's list
// is written as it is, as the string encoder did (the parser lets no '' through today).
t.test("a listed address is written as its text: '' is not turned into null", async (t) => {
  const { db } = await freshDatabase(t);
  const [org] = await twoOrgs(db);
  const batch = batchOf([{ orgId: org.orgId, keyIds: org.keyIds.slice(0, 1) }]);
  const key = plainDelta(batch.batch.keys[0]);
  key.ips.set('', { count: 1, firstSeen: key.lastUsedAt, lastSeen: key.lastUsedAt });
  const store = createPgUsageStore(db, {});
  t.match(await store.write([{ id: batch.id, batch: { ...batch.batch, keys: [key] } }]), { keysWritten: 1, quarantined: [] });
  t.same(
    (await db(TABLE.recentIps).where({ key_id: key.keyId }).orderBy('ip')).map((row: { ip: string }) => row.ip),
    ['', '192.0.2.1'],
  );
});

// A flood of forged org ids wrote a ledger row for each (kept a day): the orgs that do not exist
// have one pair for them all per batch, which tells a retry whether their keys were counted.
t.test('orgs that do not exist: one ledger row for them all; their uses are counted unknown once, a retry skips them', async (t) => {
  const { db } = await freshDatabase(t);
  const [real] = await twoOrgs(db);
  const forged = [randomUUID(), randomUUID()].map((orgId) => ({ orgId, keyIds: [randomUUID()] }));
  const realPart = { orgId: real.orgId, keyIds: real.keyIds.slice(0, 2) };
  const batch = batchOf([realPart, ...forged]);
  const claim = async () => {
    const trx = await db.transaction();
    const claimed = await claimBatches(trx, [batch]);
    await trx.commit();
    return claimed;
  };
  const first = await claim();
  t.equal(first.fresh[0].keys.length, 4, 'every key fresh at the first attempt');
  const ledger = await db('usage_flushes').where({ id: batch.id }).select('org_id');
  t.same(ledger.map((row) => row.org_id).sort(), [real.orgId, forged.map((f) => f.orgId).sort()[0]].sort(), 'two rows: the real org, one for both forged');
  const retry = await claim();
  t.same(retry.fresh[0].keys, [], 'a retry of the committed batch: no key fresh, the forged ones included');
  t.equal(retry.duplicateUses, 4);
  t.same(retry.freshIds, [], 'the batch is a duplicate');

  const store = createUsageStore(db, { logMinKeys: undefined });
  for (const toLog of [false, true]) {
    const result = await store.write([batchOf([realPart, ...forged])], toLog);
    t.match(result, { usesWritten: 2, unknownKeys: 2, unknownUses: 2 }, `${toLog ? 'an append' : 'a direct write'}: the forged orgs' uses are unknown`);
  }
});

// A split write whose one part committed is retried; with newer batches beside it, the parts were
// drawn again, and the ledger pair standing for a part's orgs that do not exist no longer matched
// the first attempt's: the forged org Y's uses, never counted, were taken for duplicates of X's
// (found by a review; fails without the in-doubt batches retried alone). The database was exact
// all along: what this checks is what the metrics say.
t.test('a partly written flush is retried alone: forged orgs beside newer batches are counted unknown once', async (t) => {
  const { db } = await freshDatabase(t);
  const orgA = await createOrg(db, 'a');
  const orgB = await createOrg(db, 'b');
  const [keyA] = await insertKeys(db, orgA, 1, 'a-');
  const [keyB] = await insertKeys(db, orgB, 1, 'b-');
  const forged = (prefix: string, keys: number) => ({
    orgId: `${prefix}000000-0000-4000-8000-000000000000`,
    keyIds: Array.from({ length: keys }, (_, i) => `${prefix}000000-0000-4000-8000-${String(i).padStart(12, '0')}`),
  });
  // Parts {X, A} and {Y, B}; B refused, so {X, A} commits alone.
  const refusal = await refuseUsageOf(db, orgB);
  const aggregator = new Aggregator({ maxKeys: 100_000, now: () => Date.now() });
  const add = (orgs: readonly Org[]) => {
    for (const { orgId, keyIds } of orgs) for (const keyId of keyIds) aggregator.add({ orgId, keyId, ip: '192.0.2.1', outcome: 'ok', count: 1 });
  };
  const store = createUsageStore(db, { logMinKeys: undefined, parallelism: 2 });
  const flusher = new Flusher({ aggregator, store, intervalMs: 60_000, maxRetryKeys: 100_000, logger: createLogger({ level: 'silent', name: 'test' }) });
  add([forged('f1', 5000), forged('f2', 5000), { orgId: orgA, keyIds: [keyA] }, { orgId: orgB, keyIds: [keyB] }]);
  t.equal(await flusher.flush(), false, 'one part failed');
  t.equal(flusher.stats.unknownUses, 5000, "the committed part's forged uses");

  await refusal.end();
  add([forged('f3', 12_000)]);
  t.equal(await flusher.flush(), true);
  t.match(flusher.stats, { unknownUses: 22_000, usesPersisted: 2 }, 'every forged use unknown once; the two real ones persisted');
  t.same([await usesOf(db, { orgId: orgA, keyIds: [] }), await usesOf(db, { orgId: orgB, keyIds: [] })], [1, 1]);
});

// The flusher gives a written batch's keys back and new keys reuse them (Aggregator.recycle): with
// the real store, split writes and recent addresses, every key's totals, and its last address, are
// its own after each round, though its object held another org's key the round before.
t.test("keys reused after a split write: each key's rows are its own, round after round", async (t) => {
  const { db } = await freshDatabase(t);
  const [first, second] = await twoOrgs(db);
  const aggregator = new Aggregator({ maxKeys: 2 * SPLIT_MIN_KEYS, now: () => Date.now() });
  const store = createPgUsageStore(db, { parallelism: 2 });
  const flusher = new Flusher({
    aggregator,
    store,
    intervalMs: 60_000,
    maxRetryKeys: 2 * SPLIT_MIN_KEYS,
    logger: createLogger({ level: 'silent', name: 'test' }),
  });
  const rounds: Array<[Org, number, string]> = [
    [first, 1, '192.0.2.1'],
    [second, 2, '192.0.2.2'],
    [first, 3, '192.0.2.3'],
  ];
  for (const [{ orgId, keyIds }, count, ip] of rounds) {
    for (const keyId of keyIds) aggregator.add({ orgId, keyId, ip, outcome: 'ok', count });
    t.equal(await flusher.flush(), true);
  }
  const rows = async (org: Org) =>
    (
      await db.raw(
        `select count(*)::int as keys, min(request_count)::int as least, max(request_count)::int as most, array_agg(distinct last_used_ip) as last_ips
           from ${TABLE.usage} where org_id = ?`,
        [org.orgId],
      )
    ).rows[0];
  t.same(await rows(first), { keys: first.keyIds.length, least: 4, most: 4, last_ips: ['192.0.2.3'] });
  t.same(await rows(second), { keys: second.keyIds.length, least: 2, most: 2, last_ips: ['192.0.2.2'] });
  t.equal(flusher.stats.usesPersisted, 4 * first.keyIds.length + 2 * second.keyIds.length);
});
