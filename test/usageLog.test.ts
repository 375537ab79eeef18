// The usage log (COLLECTOR_USAGE_LOG, collector/usageLog.ts): a flush appends one row per key
// and a fold applies the log to the usage tables, exactly once, coalescing every flush of a key.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { Aggregator, emptyDelta, type KeyUsageDelta } from '../collector/aggregator';
import { createUsageStore, FOLD_MAX_ROWS, TAKE_BATCH_ROWS } from '../collector/usageLog';
import { decodeDelta, writeLogLine } from '../collector/logDelta';
import { chunksWritten } from '../collector/copyBytes';
import { KeyList } from '../collector/keyList';
import { KnownKeys } from '../collector/knownKeys';
import { CommitInDoubtError, type PendingBatch } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import { createDb, type Db } from '../shared/db';
import { encodeUsageLine, OUTCOMES, provenCount } from '../shared/usageWire';
import { waitFor } from '../harness/wait';
import { eraseKeyIps } from '../shared/ipRetention';
import { sweepTimeEvents } from '../collector/eventStore';
import { TABLE } from '../shared/tables';
import { runCli } from '../scripts/cli';
import { deltaIpsSql, FOLD_LOCK_CLASS, LOG_DELTA, requeueUnreadable } from '../shared/usageLogDelta';
import { createOrg, insertKeys } from '../bench/lib/database';
import { freshDatabase, onCitus } from './helpers/database';
import { PgProxy } from './helpers/faults';
import { plainDelta } from './helpers/deltas';
import { sendDatagrams, startTestCollector } from './helpers/collector';

const HOUR = 3_600_000;
const NOW = Math.floor(Date.now() / HOUR) * HOUR + 1_000;
const events = () => ({ ...loadConfig({ NODE_ENV: 'development' }).collector.events, spikeMinUses: 20, spikeFactor: 5 });

type Keys = { orgId: string; keyIds: string[] };

// Every outcome, proven and failed addresses, two hours, revoked and expired uses: every field
// of a delta is set for some key. The first key also gets 6 networks of its own in each round, so
// more addresses than a flush keeps of a key (16) over three.
function batchOf({ orgId, keyIds }: Keys, round = 0, listedKeys?: KeyList): PendingBatch {
  // Room to spare: one org's keys stop short of the cap, at the part kept for other orgs.
  const aggregator = new Aggregator({ maxKeys: 2 * keyIds.length + 10, listedKeys, now: () => NOW });
  keyIds.forEach((keyId, i) => {
    OUTCOMES.forEach((outcome, j) => {
      const ip = j % 2 === 0 ? `192.0.2.${(i + j + round) % 7}` : `2001:db8::${(i * j + round) % 5}`;
      // Every use at its own time, later rounds later: the first address of a network is then
      // the same however flushes are merged.
      const at = NOW + 1000 * round + j;
      aggregator.add({ keyId, orgId, ip, outcome, count: 1 + ((i + j + round) % 4) }, at);
      aggregator.add({ keyId, orgId, ip, outcome, count: 1, timestamp: NOW - HOUR + 1000 * round + 10 * i + j }, at);
    });
    // A use of the key's previous secret (a rotation's grace period), and a wrong secret tagged so, which is none.
    aggregator.add({ keyId, orgId, ip: `198.51.100.${(i + round) % 7}`, outcome: 'ok', count: 1, previousSecret: true }, NOW + 1000 * round + 50 + i);
    aggregator.add({ keyId, orgId, ip: '203.0.113.99', outcome: 'bad_secret', count: 1, previousSecret: true }, NOW + 1000 * round + 60 + i);
  });
  for (let n = 0; n < 6; n++) aggregator.add({ keyId: keyIds[0], orgId, ip: `10.${round}.${n}.1`, outcome: 'ok', count: 1 }, NOW + 1000 * round + 100 + n);
  return { id: randomUUID(), batch: aggregator.drain() };
}

async function orgWithKeys(db: Db, count: number, name = 'logged'): Promise<Keys> {
  const orgId = await createOrg(db, name);
  return { orgId, keyIds: await insertKeys(db, orgId, count, `${name}-`) };
}

const logRows = async (db: Db) => Number((await db(TABLE.usageLog).count({ n: '*' }))[0].n);
const provenIn = (batches: readonly PendingBatch[]) => batches.reduce((sum, b) => sum + b.batch.keys.reduce((n, k) => n + provenCount(k.byOutcome), 0), 0);
const usesOf = async (db: Db, orgId: string) => Number((await db(TABLE.usage).where({ org_id: orgId }).sum({ n: 'request_count' }).first())?.n ?? 0);

// Every row of the usage tables a flush writes, in one comparable form (updated_at and event ids
// say when, not what).
async function usageTables(db: Db) {
  const rows = async (table: string, order: string[], omit: string[] = []) =>
    (await db(table).orderBy(order)).map((row: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(row).filter(([column]) => !omit.includes(column))),
    );
  return {
    totals: await rows(TABLE.usage, ['key_id'], ['updated_at']),
    hours: await rows(TABLE.usageCurrentHours, ['key_id', 'hour']),
    recentIps: await rows(TABLE.recentIps, ['key_id', 'ip']),
    failedIps: await rows(TABLE.failedIps, ['key_id', 'ip']),
    history: await rows(TABLE.ipHistory, ['key_id', 'prefix']),
    events: await rows(TABLE.keyEvents, ['key_id', 'dedupe_key'], ['id', 'created_at']),
  };
}

// A network's last_seen moves only when it is an hour behind (collector/eventStore.ts), so it is
// the first flush's after direct flushes and the last one's after a fold. An event raised for the
// hour of a revoked or expired key's use carries that use's time and address: the first flush's
// latest after direct flushes (later ones find it recorded), the latest of all after a fold.
const LATEST_OF_FOLD = ['key.expired_used', 'key.revoked_used'];
function alike(tables: Awaited<ReturnType<typeof usageTables>>) {
  return {
    ...tables,
    history: tables.history.map(({ last_seen: _, ...row }) => row),
    events: tables.events.map(({ occurred_at: _, details: __, ...row }) =>
      LATEST_OF_FOLD.includes(String(row.type)) ? row : { ...row, occurred_at: _, details: __ },
    ),
  };
}

// The same org and keys (same ids) in a second database.
async function copyOrg(from: Db, to: Db, orgId: string) {
  await to(TABLE.organizations).insert(await from(TABLE.organizations).where({ id: orgId }));
  await to(TABLE.apiKeys).insert(await from(TABLE.apiKeys).where({ org_id: orgId }));
}

// The delta field of a key's usage log line, checked to be the line's third and last field.
function deltaOfLine(k: KeyUsageDelta): string {
  const line = Buffer.concat([...chunksWritten([k], writeLogLine)]).toString();
  const [orgId, keyId, delta, ...rest] = line.split('\t');
  if (orgId !== k.orgId || keyId !== k.keyId || rest.length > 0 || !delta.endsWith('\n')) throw new Error(`not a log line: ${line}`);
  return delta.slice(0, -1);
}

// The log's rows are read by folds of every version in a rolling deploy: a line's bytes are pinned
// to those the string encoder of cf701c9 wrote for the same delta (quotes, backslashes, a tab and a
// newline in addresses, non-ASCII, a lone surrogate, nulls, two hours, both address lists).
t.test("a usage log line's bytes are those the earlier encoder wrote", async (t) => {
  const counts = (first: number) => Object.fromEntries(OUTCOMES.map((outcome, i) => [outcome, first + i])) as KeyUsageDelta['byOutcome'];
  const delta: KeyUsageDelta = {
    keyId: '00000000-0000-4000-8000-000000000002',
    orgId: '00000000-0000-4000-8000-000000000001',
    total: 12,
    byOutcome: counts(1),
    lastUsedAt: 1_700_000_000_123,
    lastIp: '2001:db8::1',
    lastFailedAt: -Infinity,
    lastFailedIp: 'a"b\\c\td',
    lastRevokedUseAt: 1_700_000_000_000,
    lastExpiredUseAt: -Infinity,
    lastPreviousSecretAt: -Infinity,
    lastPreviousSecretIp: '',
    hours: new Map([
      [1_699_999_200_000, counts(0)],
      [1_700_002_800_000, counts(7)],
    ]),
    ips: new Map([
      ['10.0.0.1', { count: 2, firstSeen: 1_699_999_999_999, lastSeen: 1_700_000_000_123 }],
      ['é漢\ud800', { count: 1, firstSeen: 5, lastSeen: 100_000_000 }],
    ]),
    failedIps: new Map([['x\ny', { count: 3, firstSeen: 1_700_000_000_001, lastSeen: 1_700_000_000_002 }]]),
  };
  const earlier = Buffer.from(
    'MDAwMDAwMDAtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDAwMDAxCTAwMDAwMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMglbMTIsMSwyLDMsNCw1LDYsMTcwMDAwMDAwMDEyMywiMjAwMTpkYjg6OjEiLG51bGwsImFcXCJiXFxcXGNcXHRkIiwxNzAwMDAwMDAwMDAwLG51bGwsMiwxNjk5OTk5MjAwMDAwLDAsMSwyLDMsNCw1LDE3MDAwMDI4MDAwMDAsNyw4LDksMTAsMTEsMTIsMiwiMTAuMC4wLjEiLDIsMTY5OTk5OTk5OTk5OSwxNzAwMDAwMDAwMTIzLCLDqea8olxcdWQ4MDAiLDEsNSwxMDAwMDAwMDAsMSwieFxcbnkiLDMsMTcwMDAwMDAwMDAwMSwxNzAwMDAwMDAwMDAyXQo=',
    'base64',
  );
  t.equal(Buffer.concat([...chunksWritten([delta], writeLogLine)]).toString('hex'), earlier.toString('hex'));
});

t.test('a delta survives its log row: every field, -Infinity included', async (t) => {
  const { keys } = batchOf({ orgId: randomUUID(), keyIds: [randomUUID(), randomUUID()] }).batch;
  const never = {
    ...plainDelta(keys[0]),
    lastFailedAt: -Infinity,
    lastFailedIp: '',
    lastRevokedUseAt: -Infinity,
    failedIps: new Map(),
  } satisfies KeyUsageDelta;
  // A key used from one address holds it in itself, not in a list (collector/pendingKey.ts).
  const single = new Aggregator({ maxKeys: 1, now: () => NOW });
  const sample = { keyId: randomUUID(), orgId: randomUUID(), ip: '192.0.2.1', outcome: 'ok', count: 3 } as const;
  single.add(sample, NOW + 5);
  single.add({ ...sample, timestamp: NOW + 2 }, NOW + 6);
  single.add({ ...sample, outcome: 'bad_secret' }, NOW + 7);
  const oneAddress = single.drain().keys;
  // Each line is written before plainDelta reads the key's Maps, which moves its address.
  for (const delta of [...keys, ...oneAddress, never]) t.strictSame(decodeDelta(delta.keyId, delta.orgId, deltaOfLine(delta)), plainDelta(delta));
  t.strictSame([...oneAddress[0].ips], [['192.0.2.1', { count: 6, firstSeen: NOW + 2, lastSeen: NOW + 5 }]]);
  t.throws(() => decodeDelta(keys[0].keyId, keys[0].orgId, '[1, [1, 2]]'), /not a usage log delta/);
});

// Two databases: the Citus run has one (TEST_SHARED_DATABASE_URL); the others run there too.
t.test('append then fold writes exactly the rows a direct flush writes', { skip: onCitus() && 'needs two databases' }, async (t) => {
  const direct = await freshDatabase(t);
  const logged = await freshDatabase(t);
  const keys = await orgWithKeys(direct.db, 30);
  await copyOrg(direct.db, logged.db, keys.orgId);
  // The first key was used before: its networks of the three flushes raise key.new_ip (a fold's
  // are one first use otherwise, where a direct write's first flush alone is).
  for (const db of [direct.db, logged.db]) await db(TABLE.usage).insert({ org_id: keys.orgId, key_id: keys.keyIds[0], request_count: 1 });
  const batches = [batchOf(keys, 0), batchOf(keys, 1), batchOf(keys, 2)];

  const directStore = createUsageStore(direct.db, { events: events(), logMinKeys: undefined });
  for (const batch of batches) await directStore.write([batch]);
  const store = createUsageStore(logged.db, { events: events(), logMinKeys: 1 });
  for (const batch of batches) t.match(await store.write([batch]), { appliedBatches: 1, keysWritten: 30, keysLogged: 30, usesWritten: batch.batch.uses });

  t.equal(await logRows(logged.db), 90, 'one log row per key and flush');
  t.equal(await usesOf(logged.db, keys.orgId), 1, "nothing in the usage tables before the fold (the first key's use before them)");
  const folded = await store.fold();
  t.match(
    folded,
    { keysWritten: 30, keysLogged: 0, unknownKeys: 0, usesWritten: batches.reduce((sum, b) => sum + b.batch.uses, 0) },
    'the three flushes of a key in one upsert',
  );
  t.ok(folded.eventsRecorded > 0, `events detected at the fold (${folded.eventsRecorded})`);
  t.equal(await logRows(logged.db), 0, 'the fold emptied the log');
  const [afterFold, written] = [await usageTables(logged.db), await usageTables(direct.db)];
  t.same(alike(afterFold), alike(written), 'totals, hours, addresses, networks and events alike');
  const latest = (tables: typeof written) => tables.events.filter((e) => LATEST_OF_FOLD.includes(String(e.type))).map((e) => (e.occurred_at as Date).getTime());
  t.ok(
    latest(afterFold).every((at, i) => at >= latest(written)[i]) && latest(afterFold).length > 0,
    'a revoked or expired use is reported with the latest such use of the fold',
  );
  // Every key's revoked and expired uses came from two addresses in each flush (batchOf).
  const refusedIps = (tables: typeof written) =>
    tables.events.filter((e) => LATEST_OF_FOLD.includes(String(e.type))).map((e) => (e.details as { ips: string[] }).ips);
  t.ok(
    refusedIps(afterFold).every((ips, i) => refusedIps(written)[i].every((ip) => ips.includes(ip))),
    "the fold's events name every address the direct write's first flush named: the addresses survive the log",
  );
  t.match(await store.fold(), { keysWritten: 0, usesWritten: 0, statements: 0 }, 'a fold of an empty log writes nothing');
});

t.test('a retried append whose commit landed is logged once', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 5);
  const store = createUsageStore(db, { logMinKeys: 1 });
  const batch = batchOf(keys);
  await store.write([batch]);
  t.match(await store.write([batch]), { appliedBatches: 0, duplicateBatches: 1, duplicateUses: batch.batch.uses, keysLogged: 0 });
  t.equal(await logRows(db), 5);
  await store.fold();
  t.equal(await usesOf(db, keys.orgId), provenIn([batch]), 'proven uses, once');
});

t.test('from logMinKeys keys a write appends, below it writes the usage tables; a retry sent the other way applies once', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const small = batchOf({ orgId: keys.orgId, keyIds: keys.keyIds.slice(0, 2) });
  const auto = createUsageStore(db, { logMinKeys: 3 });
  t.match(await auto.write([small]), { appliedBatches: 1, keysWritten: 2, keysLogged: 0 }, 'two keys: written directly');
  t.equal(await logRows(db), 0);
  t.equal(await usesOf(db, keys.orgId), provenIn([small]), 'visible at the write');

  const large = batchOf(keys, 1);
  t.match(await auto.write([large]), { appliedBatches: 1, keysWritten: 3, keysLogged: 3 }, 'three keys: appended');
  t.equal(await logRows(db), 3);
  t.match(
    await auto.write([large], false),
    { appliedBatches: 0, duplicateBatches: 1, keysWritten: 0 },
    'the retry of an append, written directly, finds its claims',
  );
  t.match(await auto.write([small], true), { appliedBatches: 0, duplicateBatches: 1, keysLogged: 0 }, 'and the retry of a direct write, appended');
  t.equal(await logRows(db), 3, 'nothing appended again');
  await auto.fold();
  t.equal(await usesOf(db, keys.orgId), provenIn([small, large]), 'each batch once');
});

t.test('keys that do not exist in the org they named are dropped at the append, and at the fold if deleted since', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const other = await orgWithKeys(db, 1, 'other');
  const store = createUsageStore(db, { logMinKeys: 1 });
  const forged = batchOf({ orgId: keys.orgId, keyIds: [randomUUID(), other.keyIds[0]] });
  const real = batchOf(keys);
  t.match(await store.write([real, forged]), { keysWritten: 3, keysLogged: 3, unknownKeys: 2, unknownUses: forged.batch.uses, usesWritten: real.batch.uses });
  t.equal(await logRows(db), 3, 'no row for a forged key');
  await db(TABLE.apiKeys).where({ id: keys.keyIds[0] }).delete();
  const folded = await store.fold();
  t.match(folded, { keysWritten: 2, unknownKeys: 1 }, 'a key deleted after its append');
  t.equal(await usesOf(db, other.orgId), 0, "the other org's key gained nothing");
  t.equal(await logRows(db), 0, 'every row left the log');
});

t.test('an append counts its keys in api_keys, and reads them only when some are missing', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const other = await orgWithKeys(db, 1, 'other');
  const store = createUsageStore(db, { logMinKeys: 1 });
  const all = await store.write([batchOf(keys, 0)]);
  t.match(
    await store.write([batchOf(keys, 1), batchOf({ orgId: keys.orgId, keyIds: [other.keyIds[0]] })]),
    {
      keysLogged: 3,
      unknownKeys: 1,
      statements: all.statements + 1,
    },
    "another org's key under this org: counted short, then read, and dropped",
  );
  // On Citus the tests share one database: a row left in the log would be another test's fold's.
  await store.fold();
  t.equal(await logRows(db), 0);
});

t.test('with known keys an append asks only about keys it has not confirmed within the TTL', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const other = await orgWithKeys(db, 1, 'other');
  let now = 0;
  const store = createUsageStore(db, { logMinKeys: 1 }, new KnownKeys(60_000, () => now));
  const forged = () => batchOf({ orgId: keys.orgId, keyIds: [other.keyIds[0], randomUUID()] });
  const first = await store.write([batchOf(keys, 0), forged()]);
  t.match(first, { keysLogged: 3, unknownKeys: 2 }, 'the first append asks about every key');
  const known = await store.write([batchOf(keys, 1)]);
  t.match(known, { keysLogged: 3, unknownKeys: 0, statements: first.statements - 2 }, 'then asks nothing about confirmed keys');
  t.match(await store.write([batchOf(keys, 2), forged()]), { keysLogged: 3, unknownKeys: 2 }, 'forged keys are never trusted');
  await db(TABLE.apiKeys).where({ id: keys.keyIds[0] }).delete();
  t.match(await store.write([batchOf(keys, 3)]), { keysLogged: 3, unknownKeys: 0 }, 'a key deleted while trusted reaches the log');
  t.match(await store.fold(), { keysWritten: 2, unknownKeys: 1 }, 'and its fold drops it');
  now = 60_000;
  t.match(await store.write([batchOf(keys, 4)]), { keysLogged: 2, unknownKeys: 1 }, 'a TTL later it is asked about again');
  await store.fold();
  t.equal(await logRows(db), 0);
});

// A store that appends every write, trusting the keys `vouching` lists.
const storeTrusting = (db: Db, vouching: () => KeyList | undefined) => createUsageStore(db, { logMinKeys: 1 }, new KnownKeys(60_000, () => 0, vouching));

t.test('an append asks nothing about keys the key list vouches for, and their fold still checks them', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const other = await orgWithKeys(db, 1, 'other');
  const list = new KeyList(7);
  list.replace([...keys.keyIds.map((id) => list.hash(id, keys.orgId)), list.hash(other.keyIds[0], other.orgId)]);
  let vouching = true;
  const store = storeTrusting(db, () => (vouching ? list : undefined));
  const asking = await createUsageStore(db, { logMinKeys: 1 }).write([batchOf(keys, 0)]);
  t.match(await store.write([batchOf(keys, 1)]), { keysLogged: 3, unknownKeys: 0, statements: asking.statements - 1 }, 'listed keys: no question');
  const forged = batchOf({ orgId: keys.orgId, keyIds: [randomUUID(), other.keyIds[0]] });
  t.match(await store.write([batchOf(keys, 2), forged]), { keysLogged: 3, unknownKeys: 2 }, "an unlisted id, and another org's key, are asked about");
  await db(TABLE.apiKeys).where({ id: keys.keyIds[0] }).delete();
  t.match(await store.write([batchOf(keys, 3)]), { keysLogged: 3, unknownKeys: 0 }, 'a key deleted since the list was read reaches the log');
  t.match(await store.fold(), { keysWritten: 2, unknownKeys: 1 }, 'and its fold drops it');
  vouching = false;
  t.match(await store.write([batchOf(keys, 4)]), { keysLogged: 2, unknownKeys: 1 }, 'once the list no longer vouches, every key is asked about');
  await store.fold();
  t.equal(await logRows(db), 0);
});

t.test('keys the aggregator found in the key list are asked about again once a full read has replaced it', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const list = new KeyList(7);
  const hashes = keys.keyIds.map((id) => list.hash(id, keys.orgId));
  list.replace(hashes);
  const store = storeTrusting(db, () => list);
  const asking = await createUsageStore(db, { logMinKeys: 1 }).write([batchOf(keys, 0)]);
  const admitted = batchOf(keys, 1, list);
  t.ok(
    admitted.batch.keys.every((k) => k.listedIn === list.generation),
    'each key carries the generation that listed it',
  );
  t.match(await store.write([admitted]), { keysLogged: 3, unknownKeys: 0, statements: asking.statements - 1 }, 'no question');
  const before = batchOf(keys, 2, list);
  await db(TABLE.apiKeys).where({ id: keys.keyIds[0] }).delete();
  list.replace(hashes.slice(1));
  t.match(await store.write([before]), { keysLogged: 2, unknownKeys: 1 }, 'a key admitted before the full read that forgot it is asked about, and dropped');
  t.match(await store.fold(), { keysWritten: 2, unknownKeys: 1 }, 'its uses appended before the deletion are dropped by the fold');
});

// The fold reads the rows it deletes in batches of TAKE_BATCH_ROWS: a row of a later batch, or a
// key whose rows span two, is applied like any other.
t.test('a fold of more rows than it reads at once applies every one, each key once', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, Math.ceil(TAKE_BATCH_ROWS / 3) + 7);
  const store = createUsageStore(db, { logMinKeys: 1 });
  const batches = [0, 1, 2].map((round) => batchOf(keys, round));
  for (const batch of batches) await store.write([batch]);
  t.ok((await logRows(db)) > TAKE_BATCH_ROWS, `${await logRows(db)} rows, more than one read`);
  t.match(await store.fold(), { keysWritten: keys.keyIds.length, usesWritten: batches.reduce((sum, b) => sum + b.batch.uses, 0) });
  t.equal(await logRows(db), 0, 'every row left the log');
  t.equal(await usesOf(db, keys.orgId), provenIn(batches), 'and every proven use reached the totals');
});

t.test("a fold counts the orgs another collector's fold held, whose rows it left", async (t) => {
  const { db, url } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const store = createUsageStore(db, { logMinKeys: 1 });
  await store.write([batchOf(keys)]);
  const other = createDb(url, { poolMax: 1 });
  t.teardown(() => other.destroy());
  const otherFold = await other.transaction();
  await otherFold.raw('select pg_advisory_xact_lock(?, hashtext(cast(? as text)))', [FOLD_LOCK_CLASS, keys.orgId]);
  t.match(await store.fold(), { keysWritten: 0, logRowsLeft: 0, orgsSkipped: 1 });
  await otherFold.rollback();
  t.match(await store.fold(), { keysWritten: 3, orgsSkipped: 0 }, 'folded once the lock is free');
  t.equal(await logRows(db), 0);
});

// Oldest first, the org another collector was folding was picked again and again (alone, when
// large), and skipped: while one org was folded anywhere, no other collector folded anything
// (found by a review; fails without the fix).
t.test('an org another collector is folding is left out: the fold takes the next orgs', async (t) => {
  const { db, url } = await freshDatabase(t);
  const held = await orgWithKeys(db, 3);
  const next = await orgWithKeys(db, 2);
  const store = createUsageStore(db, { logMinKeys: 1, foldMaxRows: 3 });
  await store.write([batchOf(held)]);
  await store.write([batchOf(next)]);
  const other = createDb(url, { poolMax: 1 });
  t.teardown(() => other.destroy());
  const otherFold = await other.transaction();
  await otherFold.raw('select pg_advisory_xact_lock(?, hashtext(cast(? as text)))', [FOLD_LOCK_CLASS, held.orgId]);
  t.match(await store.fold(), { keysWritten: 2, orgsSkipped: 1 }, "the next org's keys, the held org counted as skipped");
  t.equal(await usesOf(db, next.orgId), provenIn([batchOf(next)]));
  await otherFold.rollback();
  // The log is shared with the other files on Citus: none of this test's rows left behind.
  t.match(await store.fold(), { keysWritten: 3, orgsSkipped: 0 }, 'the held org once free');
});

// A fold takes a key's rows out of the log and writes their addresses in one transaction: an
// erasure running beside it saw neither, and the addresses outlived it.
t.test("an erasure waits for a fold of the key's org in progress: the addresses the fold writes do not outlive it", async (t) => {
  const { db, url } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 1);
  const [keyId] = keys.keyIds;
  const other = createDb(url, { poolMax: 1 });
  t.teardown(() => other.destroy());
  const fold = await other.transaction();
  await fold.raw('select pg_advisory_xact_lock(?, hashtext(cast(? as text)))', [FOLD_LOCK_CLASS, keys.orgId]);
  await fold(TABLE.recentIps).insert({ org_id: keys.orgId, key_id: keyId, ip: '203.0.113.7', first_seen: new Date(), last_seen: new Date(), request_count: 1 });
  const erasing = db.transaction((trx) => eraseKeyIps(trx, keys.orgId, keyId));
  await waitFor(
    'the erasure to wait for the fold',
    async () => (await db.raw(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and wait_event = 'advisory'`)).rows[0],
    10_000,
    20,
  );
  await fold.commit();
  t.match(await erasing, { [TABLE.recentIps]: 1 }, "the fold's address, committed, is erased");
  t.equal(Number((await db(TABLE.recentIps).where({ key_id: keyId }).count({ n: '*' }))[0].n), 0);
});

// Another collector version's row (a rolling deploy, a rollback) was deleted with the fold's
// other rows, its uses lost for good.
t.test('a log row that cannot be read is set aside, the rest of its org applied; requeued, a collector that reads it folds it', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const store = createUsageStore(db, { logMinKeys: 1 });
  const batch = batchOf(keys);
  await store.write([batch]);
  const unreadable = { key_id: keys.keyIds[0] };
  const [{ delta: readable, logged_at: loggedAt }] = await db(TABLE.usageLog).where(unreadable).select('delta', 'logged_at');
  await db(TABLE.usageLog).where(unreadable).update({ delta: '{"not": "a delta"}' });
  const folded = await store.fold();
  t.match(folded, { keysWritten: 2, quarantined: [{ keyId: keys.keyIds[0], orgId: keys.orgId, uses: 0 }] });
  t.equal(await logRows(db), 0);
  const setAside = await db(TABLE.usageSetAside).where({ org_id: keys.orgId }).select('org_id', 'key_id', 'logged_at', 'delta');
  t.strictSame(setAside, [{ org_id: keys.orgId, ...unreadable, logged_at: loggedAt, delta: '{"not": "a delta"}' }], 'kept whole, in its own table');

  const out: string[] = [];
  const requeue = () => runCli(['usage-log', 'requeue'], { db, pepper: 'p'.repeat(32), now: Date.now, out: (text) => out.push(text), err: () => undefined });
  // Every org's rows (on Citus other files' share the table).
  const held = Number((await db(TABLE.usageSetAside).count({ n: '*' }))[0].n);
  t.equal(await requeue(), 0);
  t.match(out[0], `Moved ${held} row(s) set aside back into the usage log.`);
  const ours = (result: { quarantined: Array<{ orgId: string; keyId: string }> }) =>
    result.quarantined.filter((q) => q.orgId === keys.orgId).map((q) => q.keyId);
  t.same(ours(await store.fold()), [keys.keyIds[0]], 'still unreadable here: set aside again, not lost');
  t.equal(await logRows(db), 0, 'and not folded for ever');

  // As a collector of the version that wrote it reads it.
  await db(TABLE.usageSetAside).where({ org_id: keys.orgId }).update({ delta: readable });
  t.equal(await requeue(), 0);
  t.same(ours(await store.fold()), [], 'read this time');
  t.equal(await usesOf(db, keys.orgId), provenIn([batch]), 'every proven use of the batch applied');
  t.equal(Number((await db(TABLE.usageSetAside).where({ org_id: keys.orgId }).count({ n: '*' }))[0].n), 0);
});

// Rows set aside are held whole until the fold's cursor ends: a collector folding another
// version's appends held every row of them in memory.
t.test('beyond foldMaxUnreadableRows the part fails and every row stays in the log', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  await createUsageStore(db, { logMinKeys: 1 }).write([batchOf(keys)]);
  await db(TABLE.usageLog).whereIn('key_id', keys.keyIds.slice(0, 2)).update({ delta: '["a form to come"]' });
  await t.rejects(createUsageStore(db, { logMinKeys: 1, foldMaxUnreadableRows: 1 }).fold(), /more than 1 usage log rows of the orgs folded cannot be decoded/);
  t.equal(await logRows(db), 3, 'nothing taken');
  t.equal(Number((await db(TABLE.usageSetAside).where({ org_id: keys.orgId }).count({ n: '*' }))[0].n), 0, 'nothing set aside');
  t.match(await createUsageStore(db, { logMinKeys: 1, foldMaxUnreadableRows: 2 }).fold(), {
    keysWritten: 1,
    quarantined: [{ unreadable: true }, { unreadable: true }],
  });
  t.equal(await logRows(db), 0);
});

t.test('two folds at once: each org is folded by one of them, every use once', async (t) => {
  const { db, url } = await freshDatabase(t);
  const orgs = [await orgWithKeys(db, 200, 'a'), await orgWithKeys(db, 200, 'b'), await orgWithKeys(db, 200, 'c')];
  const writer = createUsageStore(db, { logMinKeys: 1 });
  const batches = orgs.flatMap((org) => [batchOf(org, 0), batchOf(org, 1)]);
  for (const batch of batches) await writer.write([batch]);
  const second = createDb(url, { poolMax: 3 });
  t.teardown(() => second.destroy());
  const folds = await Promise.all([writer.fold(), createUsageStore(second, { logMinKeys: 1, parallelism: 2 }).fold()]);
  const again = await writer.fold();
  for (const org of orgs) t.equal(await usesOf(db, org.orgId), provenIn(batches.filter((b) => b.batch.keys[0].orgId === org.orgId)), 'each org once');
  t.equal(
    [...folds, again].reduce((sum, fold) => sum + fold.keysWritten, 0),
    600,
    `every key folded once between them (${folds.map((f) => f.keysWritten).join(' + ')} + ${again.keysWritten})`,
  );
  t.equal(await logRows(db), 0);
});

t.test('a fold whose COMMIT reply is lost is in doubt, and applied exactly once', async (t) => {
  const { db, url } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 10);
  const batch = batchOf(keys);
  await createUsageStore(db, { logMinKeys: 1 }).write([batch]);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const proxied = createDb(proxy.url, { poolMax: 3 });
  t.teardown(() => proxied.destroy());
  const store = createUsageStore(proxied, { logMinKeys: 1 });
  const cut = proxy.cutAt(/^COMMIT/i, 'after-forward');
  const error = await store.fold().catch((e: unknown) => e);
  await cut;
  t.type(error, CommitInDoubtError);
  const proven = provenIn([batch]);
  // On Citus the coordinator may still be committing on the workers when the reply is lost.
  await waitFor('the commit to land', async () => ((await usesOf(db, keys.orgId)) === proven ? true : undefined));
  t.pass('it landed');
  t.equal(await logRows(db), 0, 'with its delete: nothing to fold twice');
  t.match(await store.fold(), { keysWritten: 0 });
  t.equal(await usesOf(db, keys.orgId), proven, 'once');
});

// The upkeep deletes flush claims a day old. A batch whose COMMIT was in doubt and whose retries
// kept failing for a day while PostgreSQL answered (a lock a forgotten session held) lost its
// claims, and the retry that succeeded applied it again (found by a review; fails without the
// claims' refresh at each retry). A day passing is the claims' age moved back.
t.test('a batch in doubt keeps its claims while it is retried, past their retention', async (t) => {
  const { db, url } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 3);
  const batch = batchOf(keys);
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const proxied = createDb(proxy.url, { poolMax: 3 });
  t.teardown(() => proxied.destroy());
  const store = createUsageStore(proxied, { logMinKeys: undefined, lockTimeoutMs: 300 });
  const cut = proxy.cutAt(/^COMMIT/i, 'after-forward');
  t.type(await store.write([batch]).catch((e: unknown) => e), CommitInDoubtError);
  await cut;
  const proven = provenIn([batch]);
  await waitFor('the commit to land', async () => ((await usesOf(db, keys.orgId)) === proven ? true : undefined));
  // Retried with the next drain, which has uses to write.
  const retry = [{ ...batch, inDoubt: true }, batchOf(keys, 1)];

  // A constant: Citus refuses a column reference beside now() in an UPDATE.
  await db.raw(`update usage_flushes set applied_at = ?`, [new Date(Date.now() - 25 * 3_600_000)]);
  const held = await db.transaction();
  await held.raw(`lock table ${TABLE.usage} in share mode`);
  t.ok((await store.write(retry).catch((e: unknown) => e)) instanceof Error, 'a retry fails on the lock');
  await held.rollback();
  await store.expireOldRows(90);
  t.match(await store.write(retry), { appliedBatches: 1, duplicateBatches: 1 }, 'the next finds its claims');
  t.equal(await usesOf(db, keys.orgId), provenIn(retry), 'each batch once');
});

t.test('a fold takes whole orgs up to its bound, oldest first', async (t) => {
  const { db } = await freshDatabase(t);
  const first = await orgWithKeys(db, 2, 'first');
  const second = await orgWithKeys(db, 2, 'second');
  const store = createUsageStore(db, { logMinKeys: 1 });
  await store.write([batchOf(first)]);
  await store.write([batchOf(second)]);
  // As if the first org had FOLD_MAX_ROWS rows: the fold stops before the second.
  // A literal time: Citus refuses a stable function of a column in an UPDATE.
  await db(TABLE.usageLog)
    .where({ org_id: first.orgId })
    .update({ logged_at: new Date(Date.now() - 3_600_000) });
  await db.raw(
    `insert into ${TABLE.usageLog} (org_id, key_id, logged_at, delta)
     select org_id, key_id, logged_at, delta from ${TABLE.usageLog} cross join generate_series(2, ?) where org_id = ?`,
    [FOLD_MAX_ROWS / 2, first.orgId],
  );
  t.match(await store.fold(), { keysWritten: 2, logRowsLeft: 2 }, "the first org alone; the second's rows left");
  t.ok((await usesOf(db, first.orgId)) > 0);
  t.equal(await usesOf(db, second.orgId), 0, 'the second waits for the next fold');
  t.match(await store.fold(), { keysWritten: 2, logRowsLeft: 0 });
  t.ok((await usesOf(db, second.orgId)) > 0);
});

t.test('the delta keeps its addresses where shared/usageLogDelta.ts says, for erasure', async (t) => {
  const [key] = batchOf({ orgId: randomUUID(), keyIds: [randomUUID()] }).batch.keys;
  const fields = JSON.parse(deltaOfLine(key)) as unknown[];
  t.equal(fields[LOG_DELTA.lastIp], key.lastIp);
  t.equal(fields[LOG_DELTA.lastFailedIp], key.lastFailedIp);
  t.equal(fields[LOG_DELTA.hourCount], key.hours.size);
  const ips = LOG_DELTA.hourCount + 1 + LOG_DELTA.hourWidth * key.hours.size;
  t.equal(fields[ips], key.ips.size, 'the proven addresses follow the hours');
  t.equal(fields[ips + 1], [...key.ips.keys()][0]);
});

t.test("an erasure of a key's addresses reaches its rows in the usage log: the fold writes its uses without them", async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 2);
  const [erased, kept] = keys.keyIds;
  const store = createUsageStore(db, { logMinKeys: 1, events: events() });
  const batch = batchOf(keys);
  await store.write([batch]);
  t.match(await eraseKeyIps(db, keys.orgId, erased), { [TABLE.usageLog]: 1 });
  t.match(await eraseKeyIps(db, keys.orgId, erased), { [TABLE.usageLog]: 0 }, 'erased once');
  await store.fold();
  const addresses = async (keyId: string) => ({
    recent: Number((await db(TABLE.recentIps).where({ key_id: keyId }).count({ n: '*' }))[0].n),
    failed: Number((await db(TABLE.failedIps).where({ key_id: keyId }).count({ n: '*' }))[0].n),
    history: Number((await db(TABLE.ipHistory).where({ key_id: keyId }).count({ n: '*' }))[0].n),
    totals: await db(TABLE.usage)
      .where({ key_id: keyId })
      .first('last_used_ip', 'last_failed_ip', 'request_count', 'previous_secret_last_used_at', 'previous_secret_last_used_ip'),
  });
  const provenOf = (keyId: string) => provenCount(batch.batch.keys.find((k) => k.keyId === keyId)!.byOutcome);
  const previousAt = (keyId: string) => new Date(batch.batch.keys.find((k) => k.keyId === keyId)!.lastPreviousSecretAt);
  t.match(await addresses(erased), {
    recent: 0,
    failed: 0,
    history: 0,
    totals: { last_used_ip: null, last_failed_ip: null, request_count: provenOf(erased), previous_secret_last_used_ip: null },
  });
  t.same((await addresses(erased)).totals.previous_secret_last_used_at, previousAt(erased), "the previous secret's last use keeps its time");
  const other = await addresses(kept);
  t.ok(other.recent > 0 && other.failed > 0 && other.history > 0 && other.totals.last_used_ip, 'the other key keeps its addresses');
  t.match(other.totals, { previous_secret_last_used_ip: '198.51.100.1', previous_secret_last_used_at: previousAt(kept) }, "the previous secret's too");
  t.equal(Number(other.totals.request_count), provenOf(kept), 'and its uses');
  // The addresses of a revoked or expired key's uses ride in the row for their events (logDelta.ts).
  const refusedEvents = async (keyId: string) =>
    (await db(TABLE.keyEvents).where({ key_id: keyId }).whereIn('type', LATEST_OF_FOLD).orderBy('type')).map((e) => e.details as Record<string, unknown>);
  t.strictSame(await refusedEvents(erased), [{ ip: '' }, { ip: '' }], "the fold's events name none of the erased key's refused uses");
  const keptRefused = await refusedEvents(kept);
  t.ok(keptRefused.length === 2 && keptRefused.every((details) => Array.isArray(details.ips) && details.ips.length > 0), "the other key's name theirs");
});

// A merged batch keeps a key's newest refused addresses apart from its proven ones (mergeBatches),
// so one may be in no other field of the row: a row holding only such addresses is found too.
t.test("the erasure's SQL finds a row whose only address is a refused use's, and clears it", async (t) => {
  const { db } = await freshDatabase(t);
  const stat = { count: 2, firstSeen: NOW, lastSeen: NOW + 1 };
  const only = (field: 'revokedIps' | 'expiredIps', ip: string): KeyUsageDelta => ({
    ...emptyDelta(randomUUID(), randomUUID()),
    total: 2,
    byOutcome: { ...emptyDelta('', '').byOutcome, [field === 'revokedIps' ? 'revoked' : 'expired']: 2 },
    [field]: new Map([[ip, stat]]),
  });
  const sql = deltaIpsSql('d.delta');
  for (const delta of [only('revokedIps', '198.51.100.7'), only('expiredIps', '2001:db8::7')]) {
    const line = deltaOfLine(delta);
    const [row] = (await db.raw(`select ${sql.holdsIp} as holds, ${sql.erased} as erased from (select cast(? as text) as delta) d`, [line])).rows;
    t.equal(row.holds, true, 'found');
    const erased = decodeDelta(delta.keyId, delta.orgId, row.erased);
    t.strictSame([erased.revokedIps, erased.expiredIps, erased.total], [undefined, undefined, 2], 'no address left, the counts kept');
    const [again] = (await db.raw(`select ${sql.holdsIp} as holds from (select cast(? as text) as delta) d`, [row.erased])).rows;
    t.equal(again.holds, false, 'erased once');
  }
});

// A requeue committed while an erasure of the key ran: the erasure took the log first and the
// set-aside rows after, so the row the requeue carried between them kept its addresses, and the
// next fold wrote them back.
t.test(
  "an erasure beside a requeue of the key's set-aside row leaves no address in either table",
  { skip: onCitus() && 'the lock wait is on a worker' },
  async (t) => {
    const { db } = await freshDatabase(t, { poolMax: 4 });
    const keys = await orgWithKeys(db, 1);
    const store = createUsageStore(db, { logMinKeys: 1 });
    await store.write([batchOf(keys)]);
    await db.raw(
      `with moved as (delete from ${TABLE.usageLog} returning org_id, key_id, logged_at, delta) insert into ${TABLE.usageSetAside} (org_id, key_id, logged_at, delta, reason) select *, 'unreadable' from moved`,
    );
    const requeue = await db.transaction();
    t.equal(await requeueUnreadable(requeue), 1);
    const erasure = db.transaction((trx) => eraseKeyIps(trx, keys.orgId, keys.keyIds[0]));
    await waitFor('the erasure to wait for the requeue', async () =>
      (await db.raw("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n > 0
        ? true
        : undefined,
    );
    await requeue.commit();
    t.match(await erasure, { [TABLE.usageSetAside]: 0, [TABLE.usageLog]: 1 }, 'the erasure found the row where the requeue put it');
    await store.fold();
    t.equal(Number((await db(TABLE.recentIps).where({ key_id: keys.keyIds[0] }).count({ n: '*' }))[0].n), 0, 'the fold wrote no address');
    t.equal(Number((await db(TABLE.usage).where({ key_id: keys.keyIds[0] }).first('request_count'))?.request_count ?? 0) > 0, true, 'but its uses');
  },
);

// What COLLECTOR_KNOWN_KEYS_TTL_MS does in a running collector: a key deleted after its first
// append is trusted by the next one (its fold drops it), or, with 0, dropped at the append.
for (const [ttl, droppedBy] of [
  ['60000', 'unknownUsesAtFold'],
  ['0', 'unknownUses'],
] as const) {
  t.test(
    `a collector with COLLECTOR_KNOWN_KEYS_TTL_MS=${ttl} drops a deleted key's uses at the ${droppedBy === 'unknownUses' ? 'append' : 'fold'}`,
    async (t) => {
      const { db, url } = await freshDatabase(t);
      const keys = await orgWithKeys(db, 2);
      const collector = await startTestCollector(t, url, { COLLECTOR_USAGE_LOG: 'true', COLLECTOR_KNOWN_KEYS_TTL_MS: ttl });
      const lines = keys.keyIds.map((keyId) => encodeUsageLine({ keyId, orgId: keys.orgId, ip: '192.0.2.1', outcome: 'ok', count: 3 }));
      await sendDatagrams(collector.receiver.port, lines);
      await waitFor('the fold', () => (collector.flusher.stats.usesFolded === 6 ? true : undefined), 10_000);
      await db(TABLE.apiKeys).where({ id: keys.keyIds[0] }).delete();
      await sendDatagrams(collector.receiver.port, lines);
      await waitFor('the deleted key dropped', () => (collector.flusher.stats[droppedBy] === 3 ? true : undefined), 10_000);
      await waitFor('the live key folded', async () => ((await usesOf(db, keys.orgId)) === 6 ? true : undefined), 10_000);
      t.match(collector.flusher.stats, { unknownUses: droppedBy === 'unknownUses' ? 3 : 0, unknownUsesAtFold: droppedBy === 'unknownUses' ? 0 : 3 });
    },
  );
}

t.test('a collector with COLLECTOR_USAGE_LOG=true folds after its flushes, and at stop', async (t) => {
  const { db, url } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 4);
  const collector = await startTestCollector(t, url, { COLLECTOR_USAGE_LOG: 'true' });
  const lines = keys.keyIds.map((keyId) => encodeUsageLine({ keyId, orgId: keys.orgId, ip: '192.0.2.1', outcome: 'ok', count: 3 }));
  await sendDatagrams(collector.receiver.port, lines);
  await waitFor('the fold', async () => ((await usesOf(db, keys.orgId)) === 12 ? true : undefined), 10_000);
  // The fold's statistics follow its commit (on Citus, by a coordinator's two-phase commit).
  await waitFor('the fold to be counted', () => (collector.flusher.stats.usesFolded === 12 ? true : undefined));
  t.match(collector.flusher.stats, { usesPersisted: 12, usesFolded: 12 });
  t.ok(collector.flusher.stats.folds >= 1);
  t.match(
    collector.samples().find((s) => s.name === 'keyusage_collector_uses_folded_total'),
    { value: 12 },
  );
  await sendDatagrams(collector.receiver.port, lines.slice(0, 1));
  await waitFor('the last datagram', () => (collector.ingest.usesReceived === 15 ? true : undefined));
  await collector.stop();
  t.equal(await usesOf(db, keys.orgId), 15, 'the last flush was folded before the collector stopped');
  t.equal(await logRows(db), 0);
});

// The sweep raised key.dormant for a key whose use waited in the log for its fold, where the
// dormant clean-up, by the same rule, spared it: an operator was paged to revoke a key in use
// (fails without the fix).
t.test('the dormant sweep spares a key whose uses wait in the log, as the clean-up does', async (t) => {
  const { db } = await freshDatabase(t);
  const keys = await orgWithKeys(db, 2, 'sweep');
  const [waiting, idle] = keys.keyIds;
  await db(TABLE.apiKeys)
    .whereIn('id', keys.keyIds)
    .update({ created_at: new Date(NOW - 31 * 24 * HOUR) });
  const aggregator = new Aggregator({ maxKeys: 10, now: () => NOW });
  aggregator.add({ keyId: waiting, orgId: keys.orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 }, NOW);
  const store = createUsageStore(db, { logMinKeys: 1 });
  t.match(await store.write([{ id: randomUUID(), batch: aggregator.drain() }]), { keysLogged: 1 }, 'appended, not folded');
  await sweepTimeEvents(db, new Date(NOW + 1000), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });
  const dormant = await db(TABLE.keyEvents).where({ org_id: keys.orgId, type: 'key.dormant' }).pluck('key_id');
  t.strictSame(dormant, [idle], 'only the key with no use anywhere');
});
