// The current hours' table (migrations/20261202000100): the flush adds to it with HOT updates, the
// upkeep moves closed hours into api_key_usage_hourly exactly once, and every reader sums both.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { Aggregator } from '../collector/aggregator';
import { closedBefore, moveClosedHours } from '../collector/hourMove';
import { createUpkeep } from '../collector/upkeep';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { sleep, waitFor } from '../harness/wait';
import { loadConfig } from '../shared/config';
import { createDb, poolState, type Db } from '../shared/db';
import { createLogger } from '../shared/logger';
import { TABLE } from '../shared/tables';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, hourRows, onCitus } from './helpers/database';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const thisHour = () => Math.floor(Date.now() / HOUR) * HOUR;

type Key = { orgId: string; keyId: string };

/** Flushes `count` proven uses of `key` received at `at` (its hour is the bucket). */
async function flushUses(db: Db, key: Key, count: number, at: number, events?: ReturnType<typeof spikeDetection>) {
  const aggregator = new Aggregator({ maxKeys: 10, now: () => at });
  aggregator.add({ ...key, ip: '127.0.0.1', outcome: 'ok', count }, at);
  return createPgUsageStore(db, { events }).write([{ id: randomUUID(), batch: aggregator.drain() }]);
}

/** (hour, request_count) of the key's rows in one bucket table. */
async function bucketsIn(db: Db, table: string, key: Key) {
  const rows = await db(table).where({ org_id: key.orgId, key_id: key.keyId }).orderBy('hour').select('hour', 'request_count');
  return rows.map((row: { hour: Date; request_count: string }) => [row.hour.getTime(), Number(row.request_count)]);
}

async function setUp(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  return { db, api, adminKey, key: { orgId: org.id, keyId: adminKeyId } };
}

type Intervals = { moveHoursMs: number; retentionMs: number; firstRetentionMs: number };

// A started upkeep on `db` with the test config (and `env`), stopped at the test's end.
function startUpkeep(t: Test, db: Db, store: UsageStore, intervals: Intervals, env: Record<string, string> = {}) {
  const config = loadConfig({ NODE_ENV: 'test', ...env });
  const logger = createLogger({ level: 'silent', name: 'upkeep-test' });
  const upkeep = createUpkeep({ db, store, config, logger, now: Date.now, intervals });
  upkeep.start();
  t.teardown(() => upkeep.stop());
  return upkeep;
}

t.test(
  'the flush adds to the current hours’ table, and its updates of a bucket are HOT',
  { skip: onCitus() && 'statistics live on the workers' },
  async (t) => {
    const { db, key } = await setUp(t);
    for (const count of [1, 2, 3]) await flushUses(db, key, count, Date.now());
    t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), [[thisHour(), 6]], 'one bucket of the hour, counting every flush');
    t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [], 'nothing in the hourly table before the hour is moved');
    // Statistics reach the shared view when the flush's backend reports them (within seconds).
    const stats = await waitFor(
      'the updates in the statistics',
      async () => {
        const { rows } = await db.raw('select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = ?', [TABLE.usageCurrentHours]);
        return Number(rows[0]?.n_tup_upd) >= 2 ? rows[0] : undefined;
      },
      20_000,
    );
    t.equal(Number(stats.n_tup_hot_upd), Number(stats.n_tup_upd), `every update was HOT (${stats.n_tup_hot_upd} of ${stats.n_tup_upd})`);
  },
);

t.test('a closed hour moves exactly once; a late use of it is moved later into the same bucket; the endpoint sums both tables', async (t) => {
  const { db, api, adminKey, key } = await setUp(t);
  const closed = thisHour() - 2 * HOUR;
  const usage = async () => {
    const list = await api.request('GET', `/api/orgs/${key.orgId}/api-keys/usage?limit=100`, { key: adminKey });
    const row = list.body.data.find((k: { id: string }) => k.id === key.keyId);
    const from = new Date(closed - HOUR).toISOString();
    const series = await api.request('GET', `/api/orgs/${key.orgId}/api-keys/${key.keyId}/usage?granularity=hour&from=${from}`, { key: adminKey });
    const hours = series.body.buckets
      .filter((b: { requestCount: number }) => b.requestCount > 0)
      .map((b: { start: string; requestCount: number }) => [Date.parse(b.start), b.requestCount]);
    return { last24h: row.requests.last24h, last7Days: row.last7Days.reduce((a: number, b: number) => a + b, 0), hours };
  };
  await flushUses(db, key, 3, closed + 60_000);
  await flushUses(db, key, 5, Date.now());
  const before = await usage();
  t.strictSame(
    before,
    {
      last24h: 8,
      last7Days: 8,
      hours: [
        [closed, 3],
        [thisHour(), 5],
      ],
    },
    'before the move',
  );

  const moved = await moveClosedHours(db, closedBefore(Date.now()));
  // On Citus the other files' rows share the database: closed hours of theirs move too (tap orders
  // the files by their last run's times, so which ones ran before this one changes).
  if (!onCitus()) t.equal(moved, 1, 'the closed hour moves; the current one stays');
  t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [[closed, 3]]);
  t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), [[thisHour(), 5]]);
  t.strictSame(await usage(), before, 'the endpoint reads the same counts after the move');
  t.equal(await moveClosedHours(db, closedBefore(Date.now())), 0, 'a second move finds nothing');

  await flushUses(db, key, 2, closed + 120_000);
  t.strictSame(
    await bucketsIn(db, TABLE.usageCurrentHours, key),
    [
      [closed, 2],
      [thisHour(), 5],
    ],
    'a late use of the moved hour is a new current row',
  );
  const summed = {
    last24h: 10,
    last7Days: 10,
    hours: [
      [closed, 5],
      [thisHour(), 5],
    ],
  };
  t.strictSame(await usage(), summed, 'the endpoint sums the hour across both tables');
  t.equal(await moveClosedHours(db, closedBefore(Date.now())), 1);
  t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [[closed, 5]], 'added to the moved bucket');
  t.strictSame(await usage(), summed, 'and read the same');
});

/** Five keys of one org with uses in two closed hours and the current one: 10 closed rows, 5 open. */
async function fiveKeysThreeHours(db: Db) {
  const orgId = randomUUID();
  const keyIds: string[] = Array.from({ length: 5 }, () => randomUUID()).sort();
  const hours = [thisHour() - 3 * HOUR, thisHour() - 2 * HOUR, thisHour()];
  await db(TABLE.usageCurrentHours).insert(
    keyIds.flatMap((keyId, k) => hours.map((hour, h) => ({ org_id: orgId, key_id: keyId, hour: new Date(hour), request_count: 10 * k + h + 1 }))),
  );
  const rowsIn = async (table: string) =>
    (await db(table).where({ org_id: orgId }).orderBy(['key_id', 'hour']).select('key_id', 'hour', 'request_count')).map(
      (row: { key_id: string; hour: Date; request_count: string }) => [
        keyIds.indexOf(row.key_id),
        hours.indexOf(row.hour.getTime()),
        Number(row.request_count),
      ],
    );
  return { orgId, keyIds, hours, rowsIn };
}

/** Counts the move's statements as they are sent. */
function countMoves(t: Test, db: Db) {
  let statements = 0;
  const onQuery = (query: { sql: string }) => {
    if (query.sql.includes('with doomed as')) statements += 1;
  };
  db.on('query', onQuery);
  t.teardown(() => void db.off('query', onQuery));
  return () => statements;
}

t.test('an org’s closed hours move in chunks of at most HOUR_MOVE.chunkRows rows, each row once', async (t) => {
  const { db } = await freshDatabase(t);
  const { rowsIn } = await fiveKeysThreeHours(db);
  const statements = countMoves(t, db);
  t.equal(await moveClosedHours(db, closedBefore(Date.now()), 3), 10, 'every closed row');
  t.equal(statements(), 4, 'in chunks of 3, 3, 3 and 1 row');
  const closedRows = [0, 1, 2, 3, 4].flatMap((k) => [0, 1].map((h) => [k, h, 10 * k + h + 1]));
  t.strictSame(await rowsIn(TABLE.usageHourly), closedRows, 'each closed row in the hourly buckets once, a key’s hours across chunk ends included');
  t.strictSame(
    await rowsIn(TABLE.usageCurrentHours),
    [0, 1, 2, 3, 4].map((k) => [k, 2, 10 * k + 3]),
    'the current hour stays',
  );
  t.equal(await moveClosedHours(db, closedBefore(Date.now()), 3), 0, 'a second move finds nothing');
});

t.test('a row a flush holds is skipped without ending the chunks early', { skip: onCitus() && 'the lock wait is on a worker' }, async (t) => {
  const { db } = await freshDatabase(t);
  const { orgId, keyIds, hours, rowsIn } = await fiveKeysThreeHours(db);
  const flush = await db.transaction();
  t.teardown(() => flush.rollback().catch(() => undefined));
  await flush(TABLE.usageCurrentHours)
    .where({ org_id: orgId, key_id: keyIds[1], hour: new Date(hours[0]) })
    .increment('request_count', 100);
  t.equal(await moveClosedHours(db, closedBefore(Date.now()), 3), 9, 'every closed row but the held one, in one run');
  await flush.commit();
  t.equal(await moveClosedHours(db, closedBefore(Date.now()), 3), 1, 'the held row at the next run');
  t.strictSame(
    (await rowsIn(TABLE.usageHourly)).filter(([k]) => k === 1),
    [
      [1, 0, 111],
      [1, 1, 12],
    ],
    'with the flush’s uses',
  );
});

/** 3 uses flushed into an hour closed two hours ago, and an open transaction (rolled back at the end). */
async function closedHourAndTransaction(t: Test) {
  const { db, key } = await setUp(t);
  const closed = thisHour() - 2 * HOUR;
  await flushUses(db, key, 3, closed);
  const trx = await db.transaction();
  t.teardown(() => trx.rollback().catch(() => undefined));
  return { db, key, closed, trx };
}

// A flush holds a row of a closed hour (a late use) while the move runs: the move skips it rather
// than wait, and takes it, with the flush's count, at its next run.
t.test('a move skips the rows a flush holds, and moves them with their new count later', { skip: onCitus() && 'the lock wait is on a worker' }, async (t) => {
  const { db, key, closed, trx: flush } = await closedHourAndTransaction(t);
  await flush(TABLE.usageCurrentHours).where({ org_id: key.orgId, key_id: key.keyId }).increment('request_count', 4);
  t.equal(await moveClosedHours(db, closedBefore(Date.now())), 0, 'the held row is left, without waiting');
  await flush.commit();
  t.equal(await moveClosedHours(db, closedBefore(Date.now())), 1);
  t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [[closed, 7]], 'moved once, with the flush’s uses');
  t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), []);
});

// The move has deleted the row (not committed yet) when a flush of the same key and hour arrives:
// the flush waits for the move, then inserts a new current row. Nothing is lost or counted twice.
t.test('a flush of an hour the move is taking waits for it and starts a new row', { skip: onCitus() && 'the lock wait is on a worker' }, async (t) => {
  const { db, key, closed, trx: move } = await closedHourAndTransaction(t);
  t.equal(await moveClosedHours(move, closedBefore(Date.now())), 1);
  const flushing = flushUses(db, key, 4, closed);
  await waitFor('the flush to wait for the move', async () => {
    const { rows } = await db.raw(`select 1 from pg_locks where not granted and pid <> pg_backend_pid()`);
    return rows.length > 0 ? true : undefined;
  });
  await move.commit();
  t.equal((await flushing).usesWritten, 4);
  t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [[closed, 3]]);
  t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), [[closed, 4]]);
  t.equal(
    (await hourRows(db, [key.keyId])).reduce((sum, row) => sum + row.request_count, 0),
    7,
    'every use in exactly one table',
  );
});

const spikeDetection = () => ({ ...loadConfig({ NODE_ENV: 'development' }).collector.events, spikeMinUses: 20, spikeFactor: 5 });

// The spike rule reads the hour's count: with part of the hour moved, it is the sum of both rows.
t.test('spike detection counts an hour across both tables', async (t) => {
  const { db, key } = await setUp(t);
  const closed = thisHour() - 2 * HOUR;
  // A key used 2 times in this hour of each of the last 7 days, from the network it uses now.
  await db(TABLE.apiKeys)
    .where({ id: key.keyId })
    .update({ created_at: new Date(closed - 30 * DAY) });
  await db(TABLE.usageHourly).insert(
    Array.from({ length: 7 }, (_, i) => ({ org_id: key.orgId, key_id: key.keyId, hour: new Date(closed - (i + 1) * DAY), request_count: 2, ok_count: 2 })),
  );
  await db(TABLE.usage).insert({ org_id: key.orgId, key_id: key.keyId, request_count: 14, ok_count: 14, last_used_at: new Date(closed - DAY) });
  await db(TABLE.ipHistory).insert({
    org_id: key.orgId,
    key_id: key.keyId,
    prefix: '127.0.0.0/24',
    first_ip: '127.0.0.1',
    first_seen: new Date(closed - 7 * DAY),
    last_seen: new Date(closed),
  });
  const spikes = async () => (await db(TABLE.keyEvents).where({ key_id: key.keyId, type: 'key.spike' })).map((e: { details: object }) => e.details);

  await flushUses(db, key, 15, closed + 60_000, spikeDetection());
  t.strictSame(await spikes(), [], '15 uses: below the minimum of 20');
  await moveClosedHours(db, closedBefore(Date.now()));
  await flushUses(db, key, 10, closed + 120_000, spikeDetection());
  t.match(await spikes(), [{ hour: new Date(closed).toISOString(), uses: 25, baselineMedian: 2 }], '15 moved + 10 late = 25 > 5 × 2');
});

// Retention runs one cleanup at a time: cleanups started on every tick while an earlier one still
// ran piled up on the pool (on Citus every one of their deletes goes to every shard).
t.test('the upkeep runs one retention cleanup at a time', async (t) => {
  const { db } = await freshDatabase(t);
  const running = { now: 0, most: 0, calls: 0 };
  const store = {
    ...createPgUsageStore(db),
    async expireOldRows() {
      running.calls += 1;
      running.most = Math.max(running.most, ++running.now);
      await new Promise((resolve) => setTimeout(resolve, 60));
      running.now -= 1;
    },
  };
  const upkeep = startUpkeep(t, db, store, { moveHoursMs: 60_000, retentionMs: 5, firstRetentionMs: 5 });
  await waitFor('three cleanups', () => (running.calls >= 3 ? true : undefined));
  await upkeep.stop();
  t.equal(running.most, 1, `one at a time over ${running.calls} cleanups, ticks every 5 ms`);
  t.equal(running.now, 0, 'stop() waited for the cleanup in progress');
});

// Retention ran only an hour after start: a collector restarted more often never erased an
// address or expired a row.
t.test('retention first runs soon after start, not an interval later', async (t) => {
  const { db } = await setUp(t);
  let calls = 0;
  const store = {
    ...createPgUsageStore(db),
    async expireOldRows() {
      calls += 1;
    },
  };
  const upkeep = startUpkeep(t, db, store, { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 10 });
  await waitFor('the first retention run', () => (calls === 1 ? true : undefined));
  await upkeep.stop();
  t.equal(calls, 1, 'once, then hourly');
});

// The move first ran an interval (5 minutes) after start: a collector restarted more often never
// moved a closed hour.
t.test('the hour move first runs with the first retention, not an interval later', async (t) => {
  const { db, key } = await setUp(t);
  const closed = thisHour() - 2 * HOUR;
  await flushUses(db, key, 3, closed + 60_000);
  startUpkeep(t, db, createPgUsageStore(db), { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 10 });
  await waitFor('the closed hour moved', async () => ((await bucketsIn(db, TABLE.usageHourly, key)).length === 1 ? true : undefined));
  t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), [], 'no longer in the current hours');
});

const OTHER_UPKEEP = /api_key_usage_current_hours|delete from "?(key_events|api_key_recent_ips)/;

// A store whose usage-row expiry takes 200 ms, telling whether it runs.
function slowExpiry(db: Db) {
  const expiry = { running: false, runs: 0 };
  const store = {
    ...createPgUsageStore(db),
    async expireOldRows() {
      expiry.running = true;
      await new Promise((resolve) => setTimeout(resolve, 200));
      expiry.running = false;
      expiry.runs += 1;
    },
  };
  return { expiry, store };
}

// The statements of each part of a retention run: the usage rows' last, the events' first, and
// the addresses' last (the usage log's).
const RETENTION_PARTS = { 'usage rows': /^delete from usage_flushes/, events: /^delete from key_events/, addresses: /api_key_usage_log/ };

// Its three parts ran at once, on three of the pool's connections (sized with one for upkeep).
// The upkeep has a pool of its own here, and every statement of the run, whichever part sends it,
// is watched: as it is sent and as it answers, that pool holds its connection and no other, and
// no query waits for one.
t.test('a retention run takes one connection at a time: its parts run in turn', async (t) => {
  const { url } = await freshDatabase(t);
  const db = createDb(url, { poolMax: 5 });
  t.teardown(() => db.destroy());
  const pool = poolState(db);
  const sent: string[] = [];
  let most = 0;
  const held = () => (most = Math.max(most, pool.used() + pool.pendingAcquires()));
  db.on('query', ({ sql }: { sql: string }) => (sent.push(sql), held())).on('query-response', held);
  // No webhook poll or sweep within the test: the run (and the move after it) alone use the pool.
  const upkeep = startUpkeep(
    t,
    db,
    createPgUsageStore(db),
    { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 1 },
    { WEBHOOK_POLL_INTERVAL_MS: '60000', EVENTS_SWEEP_INTERVAL_MS: '3600000' },
  );
  await waitFor('every part of the run', () => (Object.values(RETENTION_PARTS).every((part) => sent.some((sql) => part.test(sql))) ? true : undefined));
  await upkeep.stop();
  t.ok(sent.length > 10, `${sent.length} statements watched`);
  t.equal(most, 1, 'one connection at a time: no part ran beside another');
});

// The first move started beside the first retention (and the sweep's first tick): upkeep held
// more than the connection the pool keeps for it.
t.test('the first move waits for the first retention run', async (t) => {
  const { db } = await setUp(t);
  const { expiry, store } = slowExpiry(db);
  const beside: string[] = [];
  let moved = false;
  db.on('query', ({ sql }: { sql: string }) => {
    if (expiry.running && /api_key_usage_current_hours/.test(sql)) beside.push(sql);
    if (/api_key_usage_current_hours/.test(sql)) moved = true;
  });
  startUpkeep(t, db, store, { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 1 });
  await waitFor('the first move', () => (moved ? true : undefined));
  t.equal(expiry.runs, 1);
  t.strictSame(beside, [], 'not while the retention ran');
});

// A stop during a run let its next parts (and the first move) start beside the final flush.
t.test('a stop during a retention run starts none of its other parts', async (t) => {
  const { db } = await setUp(t);
  const { expiry, store } = slowExpiry(db);
  const upkeep = startUpkeep(t, db, store, { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 1 });
  await waitFor('the run', () => (expiry.running ? true : undefined));
  const afterStop: string[] = [];
  db.on('query', ({ sql }: { sql: string }) => {
    if (OTHER_UPKEEP.test(sql)) afterStop.push(sql);
  });
  await upkeep.stop();
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.equal(expiry.runs, 1, 'the part running ended');
  t.strictSame(afterStop, [], 'no other part, and no move, began');
});

// The webhook worker was stopped last, after a running retention pass: while the pass went on
// (and the collector, at its deadline, no longer waited) it kept claiming due deliveries.
t.test('stopping the upkeep stops the webhook worker at once, even while a retention pass runs', async (t) => {
  const { db, key } = await setUp(t);
  let release: (() => void) | undefined;
  const store = {
    ...createPgUsageStore(db),
    expireOldRows: () => new Promise<void>((resolve) => (release = resolve)),
  };
  const upkeep = startUpkeep(
    t,
    db,
    store,
    { moveHoursMs: 3_600_000, retentionMs: 3_600_000, firstRetentionMs: 1 },
    { WEBHOOK_POLL_INTERVAL_MS: '20', WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' },
  );
  await waitFor('the retention pass running', () => (release ? true : undefined));
  await db('webhooks').insert({ org_id: key.orgId, url: 'http://127.0.0.1:9/in', event_types: ['*'], secret_box: Buffer.alloc(44) });
  const event = (type: string) => db('key_events').insert({ org_id: key.orgId, key_id: key.keyId, type, occurred_at: new Date(), details: { ip: null } });
  // Claims seen by their statement: the secret (44 zero bytes) opens under no pepper, so each claim
  // is put back with its attempt given back, and the delivery's attempts say nothing.
  const claimsBeforeStop: string[] = [];
  const claimsAfterStop: string[] = [];
  let stopCalled = false;
  db.on('query', ({ sql }: { sql: string }) => {
    if (/for update skip locked/.test(sql)) (stopCalled ? claimsAfterStop : claimsBeforeStop).push(sql);
  });
  // The control: before the stop, the worker claims a delivery while the pass runs.
  await event('key.first_use');
  await waitFor('a delivery claimed before the stop', async () => (claimsBeforeStop.length >= 1 ? true : undefined));
  // A claim statement already sent at the stop ends; none starts after it.
  const stopped = upkeep.stop();
  stopCalled = true;
  await event('key.new_ip');
  await sleep(500);
  // A claim whose turn was checked just before the stop is sent once it has a connection, which
  // on a busy machine (a Citus run) came after it: at most that one. Before the fix, a claim every
  // 20 ms poll.
  t.ok(claimsAfterStop.length <= 1, `twenty-five polls later, no claim was begun after the stop (${claimsAfterStop.length} sent after it)`);
  release?.();
  await stopped;
});

// The collector's upkeep runs the move on its timer (and retention beside it): a closed hour
// reaches the hourly buckets, the current hour stays, and stop() waits for a move in progress.
t.test('the running upkeep moves closed hours on its timer', async (t) => {
  const { db, key } = await setUp(t);
  const closed = thisHour() - 2 * HOUR;
  await flushUses(db, key, 3, closed);
  await flushUses(db, key, 4, Date.now());
  const upkeep = startUpkeep(t, db, createPgUsageStore(db), { moveHoursMs: 20, retentionMs: 20, firstRetentionMs: 20 });
  await waitFor('the closed hour in the hourly buckets', async () => ((await bucketsIn(db, TABLE.usageHourly, key)).length > 0 ? true : undefined));
  await upkeep.stop();
  t.strictSame(await bucketsIn(db, TABLE.usageHourly, key), [[closed, 3]]);
  t.strictSame(await bucketsIn(db, TABLE.usageCurrentHours, key), [[thisHour(), 4]], 'the current hour stays where the flush adds to it');
});

t.test(
  'failures of the jobs that otherwise only log are counted: the hour move, retention, the webhook poll',
  { skip: onCitus() && 'renames a distributed table' },
  async (t) => {
    const { db } = await freshDatabase(t);
    // One retention run (the first), whose two parts both fail.
    const start = () =>
      startUpkeep(t, db, createPgUsageStore(db), { moveHoursMs: 20, retentionMs: 600_000, firstRetentionMs: 20 }, { WEBHOOK_POLL_INTERVAL_MS: '20' });
    const failures = (upkeep: ReturnType<typeof start>) => ({ ...upkeep.stats, failedPolls: upkeep.webhooks.stats.failedPolls });
    // Real failures: the tables the jobs need, renamed away, then back.
    const renames = [
      [TABLE.usageCurrentHours, 'gone_current_hours'],
      [TABLE.webhookDeliveries, 'gone_deliveries'],
    ];
    for (const [from, to] of renames) await db.raw(`alter table ${from} rename to ${to}`);
    const failing = start();
    await waitFor('failed hour moves, polls and the retention run', () => {
      const { failedHourMoves, failedPolls, failedRetentions } = failures(failing);
      return failedHourMoves >= 2 && failedPolls >= 2 && failedRetentions >= 1 ? true : undefined;
    });
    await failing.stop();
    t.equal(failing.stats.failedRetentions, 1, 'one run counted once, though both its parts failed');
    for (const [to, from] of renames) await db.raw(`alter table ${from} rename to ${to}`);
    const working = start();
    await sleep(300);
    t.strictSame(failures(working), { failedHourMoves: 0, failedRetentions: 0, failedPolls: 0 }, 'none once the tables are back');
  },
);
