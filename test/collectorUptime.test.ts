import { randomUUID } from 'node:crypto';
import t from 'tap';
import { collectorUptimeSince, latestGapEnd, SPAN_RETENTION_DAYS } from '../shared/collectorUptime';
import { createListeningSpan, expireListeningSpans, type SpanStore } from '../collector/listeningSpan';
import type { Db } from '../shared/db';
import { encodeUsageLine } from '../shared/usageWire';
import { DAY_MS } from '../shared/timeUnits';
import { sleep, waitFor } from '../harness/wait';
import { signDatagram } from '../shared/datagramSignature';
import { createPgUsageStore, type UsageStore } from '../collector/usageStore';
import { insertKeys } from '../bench/lib/database';
import { sweepTimeEvents } from '../collector/eventStore';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { freshDatabase } from './helpers/database';

// A key whose only uses fell where no collector listened looked dormant, and the clean-up could
// not tell: a collector now records when it listens (collector_listening_spans), and the
// revoke-dormant clean-up names the gaps and refuses to select keys again across them.

const MINUTE = 60_000;
const spans = (db: Db) => db('collector_listening_spans').orderBy('id');

async function insertSpan(db: Db, collector: string, startedAt: number, heardAt: number, lostUntil?: number) {
  const lost_until = lostUntil === undefined ? null : new Date(lostUntil);
  await db('collector_listening_spans').insert({ collector, started_at: new Date(startedAt), heard_at: new Date(heardAt), lost_until });
}

const shown = (gaps: Array<{ from: Date; to: Date | null; cause: string }>, base: number) =>
  gaps.map((gap) => [(gap.from.getTime() - base) / MINUTE, gap.to && (gap.to.getTime() - base) / MINUTE, gap.cause]);

t.test('gaps: a silence past the tolerance, not a restart; a loss whatever others heard; none heard lately', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.now();
  const base = now - 100 * MINUTE;
  t.strictSame(await collectorUptimeSince(db, new Date(base), new Date(now), 20), { trackedSince: null, gaps: [], moreGaps: false }, 'nothing known, no gap');
  // a: 0-30 min; restarted 20 s later (under the tolerance) until 50; b, another collector, 10-40 and a loss at 40.
  await insertSpan(db, 'a', base, base + 30 * MINUTE);
  await insertSpan(db, 'a', base + 30 * MINUTE + 20_000, base + 50 * MINUTE);
  await insertSpan(db, 'b', base + 10 * MINUTE, base + 40 * MINUTE, base + 41 * MINUTE);
  await insertSpan(db, 'b', base + 41 * MINUTE, base + 45 * MINUTE);
  // c refused uses just after 52 and stopped; nothing else from 52 to 70.
  await insertSpan(db, 'c', base + 45 * MINUTE, base + 52 * MINUTE, base + 52.25 * MINUTE);
  await insertSpan(db, 'a', base + 70 * MINUTE, now);
  const uptime = await collectorUptimeSince(db, new Date(base), new Date(now), 20);
  t.equal(uptime.trackedSince?.getTime(), base);
  t.strictSame(
    shown(uptime.gaps, base),
    [
      [40, 41, 'uses_lost'],
      [52, 70, 'no_collector'],
    ],
    'the loss (though a listened), the silence (the loss of c within it told once); not the 20 s restart',
  );

  t.strictSame(
    shown((await collectorUptimeSince(db, new Date(base), new Date(now + 5 * MINUTE), 20)).gaps, base).at(-1),
    [100, null, 'no_collector'],
    'none heard for 5 minutes: a gap still going on',
  );
  const window = await collectorUptimeSince(db, new Date(base + 60 * MINUTE), new Date(now), 20);
  t.strictSame(shown(window.gaps, base), [[60, 70, 'no_collector']], 'a window opening in a silence starts its gap at the window');
  const one = await collectorUptimeSince(db, new Date(base), new Date(now), 1);
  t.strictSame([shown(one.gaps, base), one.moreGaps], [[[52, 70, 'no_collector']], true], 'the newest first kept, and more told');
});

t.test('gaps: where tracking began within the window, the time before it is unknown, not a gap', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.now();
  await insertSpan(db, 'a', now - 10 * MINUTE, now);
  const uptime = await collectorUptimeSince(db, new Date(now - 90 * DAY_MS), new Date(now), 20);
  t.strictSame([uptime.trackedSince?.getTime(), uptime.gaps], [now - 10 * MINUTE, []]);
  // Tracking began before the window, and the first span in it starts late: a gap from the window's start.
  await insertSpan(db, 'a', now - 100 * DAY_MS, now - 95 * DAY_MS);
  const late = await collectorUptimeSince(db, new Date(now - 90 * DAY_MS), new Date(now), 20);
  t.strictSame(shown(late.gaps, now), [[(-90 * DAY_MS) / MINUTE, -10, 'no_collector']]);
});

t.test('a loss found by its end: one that began before the window counts, and the latest end is the one that ended last', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.now();
  const base = now - 100 * MINUTE;
  // b listens throughout but for a restart from 20 to 22; a lost uses from 10 to 40 (its database away).
  await insertSpan(db, 'b', base - 60 * MINUTE, base + 20 * MINUTE);
  await insertSpan(db, 'b', base + 22 * MINUTE, now);
  await insertSpan(db, 'a', base - 60 * MINUTE, base + 10 * MINUTE, base + 40 * MINUTE);
  await insertSpan(db, 'a', base + 40 * MINUTE, now);
  const straddling = await collectorUptimeSince(db, new Date(base + 30 * MINUTE), new Date(now), 20);
  t.strictSame(shown(straddling.gaps, base), [[30, 40, 'uses_lost']], 'a loss begun before the window and ended in it');
  t.equal(
    await latestGapEnd(db, new Date(now)).then((end) => (end instanceof Date ? (end.getTime() - base) / MINUTE : end)),
    40,
    'the loss, which ends after the restart that starts after it',
  );
});

t.test('retention deletes spans that ended before the longest window a clean-up may ask about', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.now();
  const old = now - (SPAN_RETENTION_DAYS + 1) * DAY_MS;
  await insertSpan(db, 'old', old, old + MINUTE);
  await insertSpan(db, 'kept', old, now - (SPAN_RETENTION_DAYS - 1) * DAY_MS);
  t.equal(await expireListeningSpans(db, now), 1);
  t.strictSame(
    (await spans(db)).map((row) => row.collector),
    ['kept'],
  );
});

t.test('a collector opens its span once it listens, moves it while it writes, and closes it at stop', async (t) => {
  const { db, url } = await freshDatabase(t);
  const before = Date.now();
  const collector = await startTestCollector(t, url, {}, { listeningHeartbeatMs: 20 });
  const [opened] = await waitFor('the span', async () => ((await spans(db)).length === 1 ? spans(db) : undefined));
  t.match(opened.collector, new RegExp(`:${collector.receiver.port}$`), 'named by host and port');
  t.ok(opened.started_at.getTime() >= before);
  const moved = await waitFor('a heartbeat', async () => {
    const [row] = await spans(db);
    return row.heard_at.getTime() > opened.heard_at.getTime() ? row : undefined;
  });
  t.equal(moved.lost_until, null);
  t.ok(await collector.stop());
  const [closed] = await spans(db);
  t.ok(
    closed.heard_at.getTime() >= moved.heard_at.getTime() && closed.heard_at.getTime() <= Date.now(),
    'heard no later than the stop (its close: the unit test below)',
  );
  t.equal((await spans(db)).length, 1);
});

t.test('a collector whose aggregator refuses uses closes its span on the loss and opens another', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(
    t,
    url,
    { COLLECTOR_MAX_PENDING_KEYS: '1', COLLECTOR_KEY_LIST_REFRESH_MS: '0', COLLECTOR_FLUSH_INTERVAL_MS: '600000' },
    { listeningHeartbeatMs: 20 },
  );
  await waitFor('the span', async () => ((await spans(db)).length === 1 ? true : undefined));
  const orgId = randomUUID();
  const lines = [randomUUID(), randomUUID()].map((keyId) => encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 }));
  await sendDatagrams(collector.receiver.port, lines);
  await waitFor('the refusal', () => (collector.aggregator.overflowUses === 1 ? true : undefined));
  const [lost, next] = await waitFor('a second span', async () => ((await spans(db)).length === 2 ? spans(db) : undefined));
  t.equal(next.lost_until, null);
  t.ok(
    lost.lost_until.getTime() >= lost.heard_at.getTime() && next.started_at.getTime() >= lost.lost_until.getTime(),
    'closed when the loss was noticed, then the next',
  );
  const uptime = await collectorUptimeSince(db, new Date(Date.now() - DAY_MS), new Date(), 20);
  t.strictSame(
    uptime.gaps.map((gap) => [gap.cause, gap.from.getTime(), gap.to?.getTime()]),
    [['uses_lost', lost.heard_at.getTime(), lost.lost_until.getTime()]],
    'a gap however short',
  );
});

t.test('a loss noticed at stop ends there, though no collector of that name comes back', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(
    t,
    url,
    { COLLECTOR_MAX_PENDING_KEYS: '1', COLLECTOR_KEY_LIST_REFRESH_MS: '0' },
    { listeningHeartbeatMs: 600_000 },
  );
  await waitFor('the span', async () => ((await spans(db)).length === 1 ? true : undefined));
  const orgId = randomUUID();
  await sendDatagrams(
    collector.receiver.port,
    [randomUUID(), randomUUID()].map((keyId) => encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 })),
  );
  await waitFor('the refusal', () => (collector.aggregator.overflowUses === 1 ? true : undefined));
  t.ok(await collector.stop());
  const [closed] = await spans(db);
  t.ok(closed.lost_until !== null && closed.lost_until.getTime() <= Date.now(), 'closed on the loss, at the stop');
  await insertSpan(db, 'another', Date.now(), Date.now());
  const { gaps } = await collectorUptimeSince(db, new Date(Date.now() - DAY_MS), new Date(), 20);
  t.strictSame(
    gaps.map((gap) => [gap.cause, gap.from.getTime(), gap.to?.getTime()]),
    [['uses_lost', closed.heard_at.getTime(), closed.lost_until.getTime()]],
    'from its last beat to its stop, not until now',
  );
});

t.test('signed datagrams the replay cache had no room for are a loss too', async (t) => {
  const { db, url } = await freshDatabase(t);
  const secret = 'a'.repeat(64);
  const collector = await startTestCollector(t, url, { USAGE_SIGNING_SECRET: secret, COLLECTOR_REPLAY_CACHE_SIZE: '1' }, { listeningHeartbeatMs: 20 });
  await waitFor('the span', async () => ((await spans(db)).length === 1 ? true : undefined));
  const orgId = randomUUID();
  const datagrams = [randomUUID(), randomUUID(), randomUUID()].map((keyId) =>
    signDatagram(encodeUsageLine({ keyId, orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 }), secret, Date.now()),
  );
  await sendDatagrams(collector.receiver.port, datagrams);
  await waitFor('the refusals', () => (collector.ingest.rejectedPackets === 2 ? true : undefined));
  const [lost] = await waitFor('a second span', async () => ((await spans(db)).length === 2 ? spans(db) : undefined));
  const uptime = await collectorUptimeSince(db, new Date(Date.now() - DAY_MS), new Date(), 20);
  t.strictSame(
    uptime.gaps.map((gap) => [gap.cause, gap.from.getTime(), gap.to?.getTime()]),
    [['uses_lost', lost.heard_at.getTime(), lost.lost_until.getTime()]],
  );
});

t.test('a beat during a write that succeeds waits for it and moves the span', async (t) => {
  const { db, url } = await freshDatabase(t);
  const direct = createPgUsageStore(db);
  // Writes take longer than the interval: one is nearly always in progress when a beat comes.
  const store: UsageStore = {
    ...direct,
    async write(batches, toLog) {
      await sleep(250);
      return direct.write(batches, toLog);
    },
  };
  // Each write starts within 5 ms of the last one's end: a beat that did not wait fell in one.
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '5' }, { store, listeningHeartbeatMs: 50 });
  const heardTimes = new Set<number>();
  const line = encodeUsageLine({ keyId: randomUUID(), orgId: randomUUID(), ip: '192.0.2.1', outcome: 'ok', count: 1 });
  for (let sent = 0; sent < 60; sent += 1) {
    await sendDatagrams(collector.receiver.port, [line]);
    await sleep(50);
    for (const row of await spans(db)) heardTimes.add(row.heard_at.getTime());
  }
  t.ok(collector.flusher.stats.flushes >= 3, 'the writes succeed');
  t.equal(collector.flusher.stats.failedFlushes, 0);
  t.ok(heardTimes.size >= 6, `heard_at moved through the writes (${heardTimes.size} times in 3 s)`);
});

t.test('a span is not moved while a flush waits for its retry, a failed write is tried again, and a stop closes it', async (t) => {
  const writes: string[] = [];
  let caughtUp = false;
  let failNext = true;
  const store: SpanStore = {
    async open(collector, startedAt) {
      if (failNext) {
        failNext = false;
        throw new Error('database down');
      }
      writes.push(`open ${collector} ${startedAt.getTime()}`);
      return '1';
    },
    async heard(id, at, lostUntil) {
      writes.push(`heard ${id} ${at.getTime()} ${lostUntil?.getTime()}`);
    },
  };
  let clock = 1000;
  const warnings: string[] = [];
  const span = createListeningSpan({
    store,
    collector: 'c',
    now: () => clock,
    writtenSoFar: async () => caughtUp,
    losses: () => 0,
    warn: (_kind, _fields, message) => warnings.push(message),
    heartbeatMs: 5,
  });
  await span.start();
  t.equal(warnings.length, 1, 'the failed open is logged');
  clock = 2000;
  await waitFor('the open, retried', () => (writes.length > 0 ? true : undefined));
  t.strictSame(writes, ['open c 1000'], 'opened at its start, not moved while the flush waits');
  caughtUp = true;
  clock = 3000;
  await waitFor('a heard', () => (writes.includes('heard 1 3000 undefined') ? true : undefined));
  await span.stop(3500, true);
  t.equal(writes.at(-1), 'heard 1 3500 undefined', 'a stop whose final flush wrote everything closes the span when the socket closed');
  const count = writes.length;
  await span.stop(3600, true);
  t.equal(writes.length, count, 'a stop after the stop writes nothing');
});

t.test('revoke-dormant: the gaps in every answer; an apply without keyIds is refused across one', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const idle = (await api.services.apiKeys.create(org.id, { name: 'idle', scopes: ['keys:read'], expiresAt: null })).key.id;
  await db('api_keys')
    .where({ id: idle })
    .update({ created_at: new Date(Date.now() - 200 * DAY_MS) });
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1, ok_count: 1, last_used_at: new Date(), last_used_ip: '192.0.2.1' });
  const now = Date.now();
  await insertSpan(db, 'a', now - 100 * DAY_MS, now - 30 * DAY_MS);
  await insertSpan(db, 'a', now - 29 * DAY_MS, now);
  const path = `/api/orgs/${org.id}/api-keys/revoke-dormant`;

  const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
  t.equal(dry.status, 200);
  t.strictSame(dry.body.collectorUptime, {
    trackedSince: new Date(now - 100 * DAY_MS).toISOString(),
    gaps: [{ from: new Date(now - 30 * DAY_MS).toISOString(), to: new Date(now - 29 * DAY_MS).toISOString(), cause: 'no_collector' }],
    moreGaps: false,
  });
  const refused = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.equal(refused.status, 409);
  t.match(
    refused.body.error.message,
    /uses may have been lost 1 time\(s\) in the last 90 days \(the latest from .* to .*: no collector listened\), so 1 key\(s\) used only then would look unused/,
  );
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 0, 'nothing revoked');
  t.equal((await api.request('POST', path, { key: adminKey, body: { dormantDays: 20, dryRun: false } })).status, 200, 'a window after the gap selects again');
  await db('api_keys').where({ id: idle }).update({ revoked_at: null });

  const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: [idle] } });
  t.strictSame([applied.status, applied.body.keys.map((k: { id: string }) => k.id)], [200, [idle]], 'the ids a dry run listed go through');
  t.equal(applied.body.collectorUptime.gaps.length, 1, 'and the apply says it too');
  const [entry] = await db('audit_log').where({ action: 'keys.revoke_dormant', target_key_id: idle }).orderBy('seq', 'desc').limit(1);
  t.equal(entry.details.collectorGaps, 1, 'the audit keeps the override');

  await db('api_keys').where({ id: idle }).update({ revoked_at: null });
  await db('collector_listening_spans')
    .where('heard_at', '<', new Date(now - 29 * DAY_MS))
    .delete();
  const tracked = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false } });
  t.strictSame([tracked.status, tracked.body.collectorUptime.gaps], [200, []], 'tracked only for 29 days, with no gap: not refused');
});

t.test("key.dormant says whether a gap came after the key's last use", async (t) => {
  const { db } = await freshDatabase(t);
  const [org] = await db('organizations').insert({ name: 'acme', dormancy_days: 30 }).returning('*');
  const [idleSinceCreation, usedAfterGap] = await insertKeys(db, org.id, 2, 'k');
  const now = Date.now();
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: new Date(now - 100 * DAY_MS) });
  await db('api_key_usage').insert({ org_id: org.id, key_id: usedAfterGap, request_count: 1, ok_count: 1, last_used_at: new Date(now - 50 * DAY_MS) });
  // No collector from 70 to 69 days ago.
  await insertSpan(db, 'a', now - 200 * DAY_MS, now - 70 * DAY_MS);
  await insertSpan(db, 'a', now - 69 * DAY_MS, now);
  const sweep = () => sweepTimeEvents(db, new Date(now), { expiringDays: [], retentionDays: 400, newIpPerKeyHour: 10 });
  t.equal((await sweep()).dormant, 2);
  const lost = async (keyId: string) => (await db('key_events').where({ key_id: keyId, type: 'key.dormant' }).first()).details.usesMayHaveBeenLost;
  t.strictSame([await lost(idleSinceCreation), await lost(usedAfterGap)], [true, false], 'idle across the gap, or only since after it');
});
