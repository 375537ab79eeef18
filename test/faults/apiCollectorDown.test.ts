// The API while its collector is killed, absent (port closed) and restarted: every request still
// succeeds, nothing is thrown or left unhandled, the coalescing map stays bounded, and the uses made
// while a collector listens are counted exactly. The API is in-process (its recorder's state can be
// read); the collector is a real process on a fixed UDP port.
import { Writable } from 'node:stream';
import t, { type Test } from 'tap';
import { createStatsdSink } from '../../api/usage/statsdSink';
import { UsageRecorder } from '../../api/usage/usageRecorder';
import type { Db } from '../../shared/db';
import { createLogger } from '../../shared/logger';
import { seedOrg, startTestApi } from '../helpers/api';
import { mib } from '../../harness/processMemory';
import { sleep, waitFor } from '../../harness/wait';
import { freeUdpPort } from '../../scripts/lib/freePort';
import { freshDatabase } from '../helpers/database';
import { LONG, LeakScan, collectGarbage, persistedUsage, recordingSink, reportFigures, spawnCollector } from '../helpers/faults';

const leaks = new LeakScan();

async function inBatches(total: number, concurrency: number, task: (i: number) => Promise<void>) {
  for (let start = 0; start < total; start += concurrency) {
    await Promise.all(Array.from({ length: Math.min(concurrency, total - start) }, (_, i) => task(start + i)));
  }
}

// The API in-process, its usage recorder sending to `udpPort` with a small coalescing map, and
// everything it says (bodies, log lines, datagrams) watched by the leak scan.
async function apiRecordingTo(t: Test, db: Db, udpPort: number, maxEntries: number) {
  const recorderLog: string[] = [];
  const datagrams: string[] = [];
  const recorder = new UsageRecorder({
    sink: recordingSink(
      createStatsdSink({ host: '127.0.0.1', port: udpPort, onError: (error) => recorderLog.push(`socket error ${error.message}`) }),
      datagrams,
    ),
    maxEntries,
    // Long enough that one drain interval of traffic holds more (key, ip, outcome) entries than maxEntries.
    drainIntervalMs: 500,
    logger: createLogger({
      level: 'info',
      name: 'api-recorder',
      destination: new Writable({
        write(chunk, _encoding, done) {
          recorderLog.push(...chunk.toString().split('\n').filter(Boolean));
          done();
        },
      }),
    }),
  });
  recorder.start();
  t.teardown(() => recorder.stop());
  const api = await startTestApi(t, db, { recordUse: recorder.record.bind(recorder) });
  leaks.watch('api bodies', () => api.evidence.bodies);
  leaks.watch('api log', () => api.evidence.logLines);
  leaks.watch('recorder log', () => recorderLog);
  leaks.watch('datagrams', () => datagrams);
  const { org, adminKey } = await seedOrg(api, db);
  leaks.plaintext(adminKey);
  return { api, recorder, orgId: org.id, adminKey };
}

type RecordingApi = Awaited<ReturnType<typeof apiRecordingTo>>;
type PhaseKey = { id: string; key: string };

// Three groups of keys, one per phase, so each phase's uses can be counted on their own. A
// reader key answers 200 on /api/whoami and 403 where keys:write is needed; a wrong secret 401.
async function phaseKeys({ api, orgId, adminKey }: RecordingApi, phase: string, n: number): Promise<PhaseKey[]> {
  const keys: PhaseKey[] = [];
  for (let i = 0; i < n; i += 1) {
    const created = await api.request('POST', `/api/orgs/${orgId}/api-keys`, { key: adminKey, body: { name: `${phase}-${i}`, scopes: ['keys:read'] } });
    keys.push({ id: created.body.id, key: created.body.key });
    leaks.plaintext(created.body.key);
  }
  return keys;
}

// The i-th use of a key, cycling through three outcomes: ok, forbidden and bad_secret. A request
// that does not answer as it should is kept in `failures`.
function user({ api, orgId }: RecordingApi, failures: string[]) {
  const expect = async (status: number, path: string, key: string, method = 'GET') => {
    const response = await api.request(method, path, { key, body: method === 'POST' ? { name: 'x', scopes: ['keys:read'] } : undefined });
    if (response.status !== status) failures.push(`${method} ${path}: ${response.status}`);
  };
  return (k: PhaseKey, i: number) =>
    i % 3 === 0
      ? expect(200, '/api/whoami', k.key)
      : i % 3 === 1
        ? expect(403, `/api/orgs/${orgId}/api-keys`, k.key, 'POST')
        : expect(401, '/api/whoami', `${k.key.slice(0, 36)}${'Z'.repeat(43)}`);
}

// Requests go on while no collector listens: how many, how full the coalescing map got, what the
// heap kept, and what the recorder sent into the closed port.
async function whileDown(recorder: UsageRecorder, keys: PhaseKey[], use: ReturnType<typeof user>, downMs: number) {
  const downAt = Date.now();
  collectGarbage();
  const heapBefore = process.memoryUsage().heapUsed;
  let maxPending = 0;
  let requests = 0;
  const pendingSize = () => (recorder as unknown as { pending: Map<string, unknown> }).pending.size;
  const sentBeforeDown = recorder.stats.sentUses;
  const earlyDrainsBefore = recorder.stats.earlyDrains;
  for (let round = 0; round < 2 || Date.now() - downAt < downMs; round += 1) {
    await inBatches(keys.length * 3, 40, async (i) => {
      await use(keys[i % keys.length], Math.floor(i / keys.length));
      requests += 1;
      maxPending = Math.max(maxPending, pendingSize());
    });
  }
  await sleep(100); // the last drain into the closed port
  collectGarbage();
  return {
    requests,
    maxPending,
    earlyDrainsBefore,
    // What is retained: this test's own evidence (every body and log line, kept for the leak scan) included.
    heapGrowthMiB: mib(process.memoryUsage().heapUsed - heapBefore),
    sentIntoClosedPort: recorder.stats.sentUses - sentBeforeDown,
  };
}

// Uses made while a collector listened are persisted exactly, by outcome; those of the outage
// never more than were made. Returns what was persisted of the outage's.
async function assertCountedExactly(t: Test, db: Db, phases: Record<'before' | 'during' | 'after', PhaseKey[]>, perKey: number, requestsWhileDown: number) {
  const { before, during, after } = phases;
  const persistedBefore = await persistedUsage(
    db,
    before.map((k) => k.id),
  );
  const persistedAfter = await persistedUsage(
    db,
    after.map((k) => k.id),
  );
  const persistedDuring = await persistedUsage(
    db,
    during.map((k) => k.id),
  );
  t.equal(persistedBefore.total, before.length * perKey, 'uses made before the kill: exact');
  t.equal(persistedAfter.total, after.length * perKey, 'uses made after the restart: exact');
  const third = perKey / 3;
  t.same(
    [...before.map((k) => persistedBefore.outcomes(k.id)), ...after.map((k) => persistedAfter.outcomes(k.id))],
    Array.from({ length: before.length + after.length }, () => ({ ok: third, forbidden: third, expired: 0, revoked: 0, bad_secret: third, cross_org: 0 })),
    'and by outcome',
  );
  t.ok(persistedDuring.total <= requestsWhileDown, 'uses made while no collector listened are never over-counted');
  return persistedDuring;
}

t.test('collector killed, absent and restarted: the API serves every request and stays bounded', async (t) => {
  const { db, url } = await freshDatabase(t);
  const udpPort = await freeUdpPort();
  const flushIntervalMs = 200;
  let collector = await spawnCollector(t, { databaseUrl: url, udpPort, flushIntervalMs });
  const firstCollector = collector;
  leaks.watch('collector log (before)', () => firstCollector.output);

  const unhandled: unknown[] = [];
  const onUnhandled = (error: unknown) => unhandled.push(error);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));

  const maxEntries = 64;
  const recording = await apiRecordingTo(t, db, udpPort, maxEntries);
  const { api, recorder } = recording;
  const before = await phaseKeys(recording, 'before', 4);
  const during = await phaseKeys(recording, 'during', 60);
  const after = await phaseKeys(recording, 'after', 4);
  await leaks.hashesFrom(db);
  const failures: string[] = [];
  const use = user(recording, failures);

  // Phase 1: collector up.
  const PER_KEY = 30;
  await inBatches(before.length * PER_KEY, 20, (i) => use(before[i % before.length], Math.floor(i / before.length)));
  await waitFor('the first phase persisted', async () =>
    (
      await persistedUsage(
        db,
        before.map((k) => k.id),
      )
    ).total ===
    before.length * PER_KEY
      ? true
      : undefined,
  );

  // Phase 2: collector killed; its port stays closed.
  await collector.sigkill();
  const downMs = LONG ? 10_000 : 1_500;
  const { requests: requestsWhileDown, maxPending, earlyDrainsBefore, heapGrowthMiB, sentIntoClosedPort } = await whileDown(recorder, during, use, downMs);

  // Phase 3: a collector restarted on the same port.
  collector = await spawnCollector(t, { databaseUrl: url, udpPort, flushIntervalMs });
  const restarted = collector;
  leaks.watch('collector log (after)', () => restarted.output);
  await inBatches(after.length * PER_KEY, 20, (i) => use(after[i % after.length], Math.floor(i / after.length)));
  recorder.drain();
  await waitFor('the third phase persisted', async () =>
    (
      await persistedUsage(
        db,
        after.map((k) => k.id),
      )
    ).total ===
    after.length * PER_KEY
      ? true
      : undefined,
  );
  await sleep(2 * flushIntervalMs);

  t.same(failures, [], `0 failed requests out of ${before.length * PER_KEY + requestsWhileDown + after.length * PER_KEY}`);
  t.same(unhandled, [], 'no unhandled rejection');
  t.notOk(
    api.evidence.logLines.some((line) => line.includes('unhandled error')),
    'no unhandled error logged by the API',
  );
  t.ok(maxPending <= maxEntries, `the coalescing map never held more than maxEntries (${maxPending} ≤ ${maxEntries})`);
  t.ok(recorder.stats.earlyDrains > earlyDrainsBefore, 'a full map drained early instead of growing');
  t.ok(heapGrowthMiB < 32, `heap retained across the outage: ${heapGrowthMiB} MiB (the evidence kept for the leak scan included)`);

  const persistedDuring = await assertCountedExactly(t, db, { before, during, after }, PER_KEY, requestsWhileDown);
  await recorder.stop();
  t.equal(recorder.stats.recordedUses, recorder.stats.sentUses + recorder.stats.failedUses, 'the recorder accounts for every use: sent or failed');
  // UDP is connectionless: a datagram to a closed port is "sent" as far as the API can tell. The
  // uses of an outage show up as the gap between the API's sentUses and the collector's counters.
  t.equal(recorder.stats.failedUses, 0, 'a closed port is invisible to the sender: no send error');

  reportFigures(t, 'api-collector-down', {
    downMs,
    requests: before.length * PER_KEY + requestsWhileDown + after.length * PER_KEY,
    failedRequests: failures.length,
    unhandledErrors: unhandled.length,
    usesWhileDown: requestsWhileDown,
    usesSentIntoClosedPort: sentIntoClosedPort,
    usesPersistedFromOutage: persistedDuring.total,
    failedUses: recorder.stats.failedUses,
    maxPendingEntries: maxPending,
    maxEntries,
    earlyDrains: recorder.stats.earlyDrains,
    heapGrowthMiB,
    datagrams: recorder.stats.datagrams,
  });
});

t.test('leak scan: no key or hash in any response body, log line or datagram of this file', async (t) => {
  const result = leaks.scan();
  t.ok(result.texts > 0 && result.secrets > 0, `scanned ${result.texts} texts (${result.bytes} bytes) for ${result.secrets} secrets`);
  t.same(result.hits, [], 'zero hits');
});
