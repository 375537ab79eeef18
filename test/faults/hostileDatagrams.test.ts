// Hostile input against the LIVE collector socket (a real process): fast-check generated datagrams
// — random bytes, oversized packets up to the 65,507-byte UDP maximum, embedded newlines and NULs,
// huge/negative/NaN/Infinity counts and rates, unknown and forged ids, IP fields that are not IPs,
// tag injection, key material — never crash it; its counters match the parser run locally as an
// oracle; and no forged line moves a counter of a real key in another org. Then a cardinality
// flood of random key ids, with PostgreSQL up and with it down: memory stays under the cap, the
// overflow is counted, and the real keys, in the collector's key list, lose none of their uses.
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { OUTCOMES, encodeUsageLine, packDatagrams, parsePacket, type UsageSample } from '../../shared/usageWire';
import dgram from 'node:dgram';
import type { CollectorMetrics } from '../../harness/collectorProcess';
import { mib } from '../../harness/processMemory';
import { waitFor } from '../../harness/wait';
import type { Db } from '../../shared/db';
import { freshDatabase } from '../helpers/database';
import {
  LONG,
  LeakScan,
  PgProxy,
  databaseWithKeys,
  persistedUsage,
  reportFigures,
  seedKeys,
  spawnCollector,
  type FaultCollector,
  type SeededKey,
} from '../helpers/faults';

const leaks = new LeakScan();
const MAX_UDP_PAYLOAD = 65_507;

/**
 * Sends raw datagrams, pausing every `window` until the collector has taken them in (so the kernel
 * drops none): these tests measure the parser and the aggregator's cap. Unpaced, a flood fills the
 * socket's buffer and the kernel drops genuine datagrams too (kernel_dropped_datagrams_total,
 * test/receiver.kernelDrops.test.ts).
 */
async function sendPaced(collector: FaultCollector, datagrams: readonly Buffer[], window = 200): Promise<void> {
  const socket = dgram.createSocket('udp4');
  const already = (await collector.metrics()).packets_total;
  try {
    for (let i = 0; i < datagrams.length; i += 1) {
      await new Promise<void>((resolve, reject) => socket.send(datagrams[i], collector.udpPort, '127.0.0.1', (error) => (error ? reject(error) : resolve())));
      if ((i + 1) % window === 0 || i === datagrams.length - 1) {
        const target = already + i + 1;
        await waitFor(
          'the collector to take the datagrams in',
          async () => ((await collector.metrics()).packets_total >= target ? true : undefined),
          30_000,
          10,
        );
      }
    }
  } finally {
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  }
}

interface SeededOrg {
  orgId: string;
  keys: SeededKey[];
}

// Datagrams a hostile or broken client could send, built around two real orgs' ids: forged and
// mangled ids, absurd counts and rates, IP fields that are not IPs, tag injection, key material,
// other StatsD metrics and raw bytes.
function hostileDatagram(a: SeededOrg, b: SeededOrg): fc.Arbitrary<Buffer> {
  const [a1, a2] = a.keys;
  const [b1] = b.keys;
  const uuid = fc.oneof(
    fc.constantFrom(a1.id, a2.id, b1.id, a.orgId, b.orgId), // real ids, in every combination
    fc.uuid(), // unknown
    fc.constantFrom(a1.id.toUpperCase(), `{${a1.id}}`, a1.id.replace(/-/g, ''), a1.id.slice(0, 35), `${a1.id}0`, a1.plaintext, ''),
  );
  const value = fc.oneof(
    fc.constantFrom(
      '1',
      '2',
      '7',
      '1e9',
      '1000000001',
      '1e10',
      '0',
      '-1',
      '-0',
      'NaN',
      'Infinity',
      '-Infinity',
      '1e999',
      '0x10',
      '9'.repeat(400),
      '.5',
      '1.5e2',
      '',
      '+3',
    ),
    fc.double().map(String),
    fc.integer().map(String),
  );
  const rate = fc.option(
    fc.oneof(
      fc.constantFrom('@0', '@1', '@0.5', '@-1', '@NaN', '@Infinity', '@1e-300', '@2', '@', '@0.001'),
      fc.double().map((d) => `@${d}`),
    ),
    { nil: undefined },
  );
  const ip = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.constantFrom('not-an-ip', '999.1.1.1', 'fe80::1%eth0', '[::1]', `1.2.3.4,key:${b1.id}`, `1.2.3.4|#key:${b1.id}`, '1.2.3.4\nx', ''),
    fc.string({ maxLength: 40 }),
  );
  const outcome = fc.oneof(fc.constantFrom(...OUTCOMES), fc.constantFrom('OK', 'maybe', 'ok\0', ''));
  const usageLine = fc
    .record({
      value,
      rate,
      key: uuid,
      org: uuid,
      ip,
      outcome,
      extraTag: fc.option(fc.constantFrom(`key:${b1.id}`, `org:${b.orgId}`, `key:${a1.id}`, 'env:prod', 'key', '#'), { nil: undefined }),
    })
    .map(({ value, rate, key, org, ip, outcome, extraTag }) =>
      [`apikey.used:${value}|c`, rate, `#key:${key},org:${org},ip:${ip},outcome:${outcome}${extraTag ? `,${extraTag}` : ''}`].filter(Boolean).join('|'),
    );
  const influxLine = fc
    .record({ key: uuid, org: uuid, ip, value })
    .map(({ key, org, ip, value }) => `apikey.used,key=${key},org=${org},ip=${ip},outcome=ok:${value}|c`);
  const validLine = fc
    .record({ key: fc.constantFrom(a1, a2, b.keys[0], b.keys[1]), count: fc.integer({ min: 1, max: 1000 }) })
    .map(({ key, count }) => encodeUsageLine({ keyId: key.id, orgId: [...a.keys].includes(key) ? a.orgId : b.orgId, ip: '192.0.2.7', outcome: 'ok', count }));
  const otherLine = fc.constantFrom('requests:1|c', 'latency:12|ms|@0.5', 'users:alice|s', 'cpu,host=a:0.5|g', 'x:1|c|#a:b');
  const line = fc.oneof(
    { arbitrary: usageLine, weight: 4 },
    { arbitrary: influxLine, weight: 1 },
    { arbitrary: validLine, weight: 2 },
    { arbitrary: otherLine, weight: 1 },
    { arbitrary: fc.string({ maxLength: 200, unit: 'binary' }), weight: 1 },
  );
  const separator = fc.constantFrom('\n', '\n', '\r\n', '\0', '\n\n', '\n\0\n');
  const textDatagram = fc
    .array(fc.tuple(line, separator), { minLength: 1, maxLength: 12 })
    .map((parts) => Buffer.from(parts.map(([l, s]) => l + s).join(''), 'utf8'));
  const bytesDatagram = fc.uint8Array({ minLength: 1, maxLength: 3000 }).map((bytes) => Buffer.from(bytes));
  return fc.oneof({ arbitrary: textDatagram, weight: 6 }, { arbitrary: bytesDatagram, weight: 2 });
}

// Oversized: up to the UDP maximum, full of valid lines, of garbage, of newlines and NULs.
function oversizedDatagrams(a: SeededOrg, b: SeededOrg): Buffer[] {
  const [a1] = a.keys;
  const fill = (unit: string) => Buffer.from(unit.repeat(Math.ceil(MAX_UDP_PAYLOAD / unit.length)).slice(0, MAX_UDP_PAYLOAD), 'latin1');
  const validForA1 = `${encodeUsageLine({ keyId: a1.id, orgId: a.orgId, ip: '2001:db8::9', outcome: 'ok', count: 3 })}\n`;
  return [
    fill(validForA1),
    fill('\n'),
    fill('\0'),
    fill('x'),
    fill('|'),
    fill(`apikey.used:1|c|#key:${b.keys[0].id},org:${a.orgId},ip:10.0.0.1,outcome:ok\n`),
    fill(`${a1.plaintext}\n`),
  ];
}

// The oracle: the same parser over the same bytes, decoded as the receiver decodes them (latin1).
// A fractional count is rounded at random (usageWire.ts, unbiasedRound), in the collector with
// draws of its own: `draw` fixes the oracle's, 0 giving every line its ceiling and the largest
// draw below 1 its floor.
const CEILINGS = 0;
const FLOORS = 1 - 2 ** -53;
function parseLocally(datagrams: readonly Buffer[], draw: number) {
  const counts = { lines: 0, usage: 0, other: 0, invalid: 0 };
  const uses = new Map<string, number>(); // `${orgId}/${keyId}` → uses
  const random = Math.random;
  Math.random = () => draw;
  try {
    for (const d of datagrams) {
      const result = parsePacket(d.toString('latin1'), (s: UsageSample) =>
        uses.set(`${s.orgId}/${s.keyId}`, (uses.get(`${s.orgId}/${s.keyId}`) ?? 0) + s.count),
      );
      counts.lines += result.lines;
      counts.usage += result.usage;
      counts.other += result.other;
      counts.invalid += result.invalid;
    }
  } finally {
    Math.random = random;
  }
  return { counts, uses };
}

// Only a line naming a real key with its own org counts; a forged id creates no row.
async function assertNoCrossOrgCount(t: Test, db: Db, a: SeededOrg, b: SeededOrg, floors: Map<string, number>, ceilings: Map<string, number>) {
  const persisted = await persistedUsage(
    db,
    [...a.keys, ...b.keys].map((k) => k.id),
  );
  for (const [owner, keys] of [
    [a.orgId, a.keys],
    [b.orgId, b.keys],
  ] as const) {
    for (const key of keys) {
      const count = persisted.count(key.id);
      const [low, high] = [floors, ceilings].map((uses) => uses.get(`${owner}/${key.id}`) ?? 0);
      t.ok(
        count >= low && count <= high,
        `${owner === a.orgId ? 'victim' : 'attacker'} key: only lines naming it with its own org count (${count} in [${low}, ${high}])`,
      );
    }
  }
  const genuine = new Set([...a.keys.map((k) => `${a.orgId}/${k.id}`), ...b.keys.map((k) => `${b.orgId}/${k.id}`)]);
  const realIds = new Set([...a.keys, ...b.keys].map((k) => k.id));
  const forgedCrossOrg = [...ceilings.keys()].filter((id) => !genuine.has(id) && realIds.has(id.split('/')[1]));
  t.ok(forgedCrossOrg.length > 0, `the fuzz did send well-formed lines naming a real key under the wrong org (${forgedCrossOrg.length} distinct)`);
  const rows = Number((await db('api_key_usage').count({ n: '*' }))[0].n);
  t.ok(rows <= 4, `no row created for an unknown or forged id (${rows} rows, all real keys)`);
}

t.test('fuzzed datagrams against the live collector: no crash, counters match the parser, no cross-org count', async (t) => {
  const { db, url } = await freshDatabase(t);
  const a = await seedKeys(db, 'victim', 2);
  const b = await seedKeys(db, 'attacker', 2);
  await leaks.hashesFrom(db);
  for (const key of [...a.keys, ...b.keys]) leaks.plaintext(key.plaintext);
  const collector = await spawnCollector(t, { databaseUrl: url, flushIntervalMs: 100, maxPendingKeys: 10_000 });
  leaks.watch('collector log (fuzz)', () => collector.output);

  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);
  t.comment(`fast-check seed ${seed} (FUZZ_SEED=${seed} reproduces this run)`);
  const datagrams = [...fc.sample(hostileDatagram(a, b), { numRuns: LONG ? 20_000 : 1_500, seed }), ...oversizedDatagrams(a, b)];
  // The control for this file's leak scan: the collector is handed plaintext keys, and the scan
  // finds one where it is.
  const handed = new LeakScan();
  handed.plaintext(a.keys[0].plaintext);
  handed.watch('the datagrams sent', () => datagrams.map((d) => d.toString('latin1')));
  t.ok(handed.scan().hits.length > 0, 'the datagrams carry a plaintext key, and the scan finds it there');
  const oracle = parseLocally(datagrams, FLOORS);
  const ceilings = parseLocally(datagrams, CEILINGS).uses;
  await sendPaced(collector, datagrams);
  const m = await waitFor('everything flushed', async () => {
    const metrics = await collector.metrics();
    return metrics.packets_total === datagrams.length && metrics.pending_keys === 0 ? metrics : undefined;
  });

  t.equal(collector.child.proc.exitCode, null, 'the collector is still running');
  t.equal(await collector.health(), 200, 'and healthy');
  t.same(
    { lines: m.lines_total, usage: m.usage_lines_total, other: m.other_lines_total, invalid: m.bad_lines_total },
    oracle.counts,
    `its counters equal the parser's over the same bytes (${datagrams.length} datagrams, ${oracle.counts.lines} lines, ${oracle.counts.invalid} bad)`,
  );
  await assertNoCrossOrgCount(t, db, a, b, oracle.uses, ceilings);
  const [usesLow, usesHigh] = [oracle.uses, ceilings].map((uses) => [...uses.values()].reduce((x, y) => x + y, 0));
  t.ok(
    m.uses_received_total >= usesLow && m.uses_received_total <= usesHigh,
    `uses received = the sum of accepted samples (${m.uses_received_total} in [${usesLow}, ${usesHigh}])`,
  );
  t.equal(
    m.uses_persisted_total + m.unknown_uses_total + m.overflow_uses_total,
    m.uses_received_total,
    'every received use is persisted, dropped as unknown, or overflowed',
  );
  t.notOk(
    collector.output.some((line) => /at .+\.ts:\d+/.test(line) || /uncaught|unhandled/i.test(line)),
    'no stack trace or unhandled error in its output',
  );
  const badLineLogs = collector.logs().filter((l) => l.msg === 'dropped malformed StatsD lines');
  t.ok(
    badLineLogs.length >= 1 && badLineLogs.length <= 3,
    `bad lines logged, rate-limited (${badLineLogs.length} lines for ${oracle.counts.invalid} bad lines)`,
  );
  t.equal((await collector.sigterm()).code, 0, 'exits 0 on SIGTERM afterwards');
  reportFigures(t, 'fuzz-live-socket', {
    seed,
    datagrams: datagrams.length,
    bytes: datagrams.reduce((sum, d) => sum + d.length, 0),
    lines: oracle.counts.lines,
    badLines: oracle.counts.invalid,
    otherLines: oracle.counts.other,
    usageLines: oracle.counts.usage,
    usesPersisted: m.uses_persisted_total,
    unknownUses: m.unknown_uses_total,
    crashes: 0,
    peakRssMiB: mib(collector.peakRssBytes()),
  });
});

const FLOOD_KEYS = LONG ? 1_000_000 : 100_000;
const FLOOD_CAP = 10_000;
const FLOOD_BATCH = 20_000;
// A real key first used after the flood, while the aggregator is full of forged keys.
const LATE_USES = 100;

// A collector behind a PostgreSQL proxy (so the database can go away), with a pending-key cap far
// below the flood, and two real keys, in its key list before the flood begins.
async function floodTarget(t: Test, databaseDown: boolean) {
  const { db, url, orgId, keys } = await databaseWithKeys(t, 'flooded', 2, { leaks });
  const proxy = await PgProxy.start(url);
  t.teardown(() => proxy.close());
  const collector = await spawnCollector(t, { databaseUrl: proxy.url, flushIntervalMs: 500, maxPendingKeys: FLOOD_CAP });
  leaks.watch(`collector log (flood${databaseDown ? ', database down' : ''})`, () => collector.output);
  await waitFor('the key list to be read', async () => ((await collector.metrics()).key_list_keys >= keys.length ? true : undefined), 30_000, 50);
  if (databaseDown) await proxy.down();
  return { db, proxy, collector, real: { orgId, keys } };
}

// Random key ids (forged: none exists), one use each; a real key's line rides in every 50th
// datagram, so it competes for a slot in the aggregator like any key that was not pending yet:
// once forged ids hold half the cap, only keys in the key list get one.
async function sendFlood(collector: FaultCollector, real: SeededOrg) {
  let realUses = 0;
  let maxPending = 0;
  const started = Date.now();
  const rssTimeline: number[] = []; // peak RSS (MiB) after each batch of keys
  for (let sent = 0; sent < FLOOD_KEYS; sent += FLOOD_BATCH) {
    const lines: string[] = [];
    for (let i = 0; i < FLOOD_BATCH; i += 1) {
      lines.push(encodeUsageLine({ keyId: randomUUID(), orgId: real.orgId, ip: `10.${i % 256}.0.1`, outcome: 'ok', count: 1 }));
    }
    const datagrams = packDatagrams(lines).map((d, i) => {
      if (i % 50 !== 0) return Buffer.from(d, 'latin1');
      realUses += 1;
      return Buffer.from(`${d}\n${encodeUsageLine({ keyId: real.keys[0].id, orgId: real.orgId, ip: '192.0.2.1', outcome: 'ok', count: 1 })}`, 'latin1');
    });
    await sendPaced(collector, datagrams, 500);
    maxPending = Math.max(maxPending, (await collector.metrics()).pending_keys);
    rssTimeline.push(mib(collector.peakRssBytes()));
  }
  const floodMs = Date.now() - started;
  await sendPaced(collector, [
    Buffer.from(encodeUsageLine({ keyId: real.keys[1].id, orgId: real.orgId, ip: '192.0.2.2', outcome: 'ok', count: LATE_USES }), 'latin1'),
  ]);
  return { realUses, maxPending, floodMs, rssTimeline, during: await collector.metrics(), peakDuringFlood: collector.peakRssBytes() };
}

type FloodRun = Awaited<ReturnType<typeof sendFlood>>;

async function drained(collector: FaultCollector, run: FloodRun) {
  return waitFor(
    'the collector to drain',
    async () => {
      const metrics = await collector.metrics();
      run.maxPending = Math.max(run.maxPending, metrics.pending_keys);
      return metrics.pending_keys === 0 && metrics.uses_received_total === FLOOD_KEYS + run.realUses + LATE_USES ? metrics : undefined;
    },
    LONG ? 180_000 : 60_000,
    100,
  );
}

// Bounded by the cap, not by the flood: at most 2 × cap entries pending whatever the number of
// keys sent. RSS climbs while V8 sizes its heap for the flush work (20,000-row statements), then
// stays flat: the second half of the flood adds nothing.
function assertMemoryBounded(t: Test, run: FloodRun, baseline: number) {
  const growthMiB = mib(run.peakDuringFlood - baseline);
  t.ok(
    run.maxPending <= 2 * FLOOD_CAP,
    `pending keys never above twice the cap (${run.maxPending} ≤ ${2 * FLOOD_CAP}): the aggregator's cap and the retained batch`,
  );
  t.ok(growthMiB < 256, `peak RSS ${mib(run.peakDuringFlood)} MiB, ${growthMiB} MiB above the idle collector`);
  const { rssTimeline } = run;
  if (rssTimeline.length >= 20) {
    // Only the long flood (1,000,000 keys) runs long enough to see the plateau.
    const half = rssTimeline[Math.floor(rssTimeline.length / 2) - 1];
    t.ok(rssTimeline[rssTimeline.length - 1] - half <= 32, `flat in the second half of the flood (${half} → ${rssTimeline[rssTimeline.length - 1]} MiB)`);
  }
  return growthMiB;
}

function assertOverflowCounted(t: Test, collector: FaultCollector, m: CollectorMetrics, floodMs: number) {
  t.ok(m.overflow_uses_total > 0, `overflow counted in /metrics (${m.overflow_uses_total} uses)`);
  t.equal(m.overflow_unlisted_uses_total, m.overflow_uses_total, 'every use overflowed was refused by the key list, none at the cap');
  t.equal(
    m.uses_persisted_total + m.unknown_uses_total + m.overflow_uses_total,
    m.uses_received_total,
    'every received use is persisted, dropped as unknown, or overflowed',
  );
  const capLines = collector
    .logs()
    .filter((l) => l.msg === 'keys missing from the key list hold half the pending-key cap; uses of further such keys dropped (forged ids?)');
  t.ok(
    capLines.some((l) => l.maxPendingKeys === FLOOD_CAP),
    'the overflow is logged',
  );
  t.ok(capLines.length <= 2 + floodMs / 10_000, 'rate-limited');
}

// A flush of 5,000 keys or more goes through the usage log: the real keys' uses reach the usage
// tables at the fold after it. Waits for them all, then gives what was persisted (fewer if lost).
async function realUsesPersisted(db: Db, real: SeededOrg, realUses: number): Promise<[number, number]> {
  let counts: [number, number] = [0, 0];
  const whole = async () => {
    const usage = await persistedUsage(
      db,
      real.keys.map((k) => k.id),
    );
    counts = [usage.count(real.keys[0].id), usage.count(real.keys[1].id)];
    return counts[0] === realUses && counts[1] === LATE_USES ? true : undefined;
  };
  await waitFor("the real keys' uses to be folded", whole, 15_000, 100).catch(() => undefined);
  return counts;
}

async function flood(t: Test, databaseDown: boolean) {
  const { db, proxy, collector, real } = await floodTarget(t, databaseDown);
  const baseline = collector.baselineRssBytes;
  const run = await sendFlood(collector, real);
  if (databaseDown) await proxy.up();
  const m = await drained(collector, run);
  assertOverflowCounted(t, collector, m, run.floodMs);
  const growthMiB = assertMemoryBounded(t, run, baseline);
  const rows = Number((await db('api_key_usage').count({ n: '*' }))[0].n);
  t.ok(rows <= 2, 'no row created for any of the random ids');
  const [realPersisted, latePersisted] = await realUsesPersisted(db, real, run.realUses);
  t.equal(realPersisted, run.realUses, 'the real key lost none of its uses to the flood');
  t.equal(latePersisted, LATE_USES, 'nor did a real key first used after it, with the aggregator full of forged ids');
  t.equal(collector.child.proc.exitCode, null, 'no crash');
  t.equal((await collector.sigterm()).code, 0, 'exits 0 on SIGTERM');
  reportFigures(t, databaseDown ? 'flood-database-down' : 'flood', {
    distinctKeys: FLOOD_KEYS,
    maxPendingKeysSetting: FLOOD_CAP,
    floodMs: run.floodMs,
    datagrams: m.packets_total,
    usesReceived: m.uses_received_total,
    overflowUses: m.overflow_uses_total,
    unknownUses: m.unknown_uses_total,
    usesPersisted: m.uses_persisted_total,
    maxPendingKeys: run.maxPending,
    pendingKeysAtFloodEnd: run.during.pending_keys,
    idleRssMiB: mib(baseline),
    peakRssMiB: mib(run.peakDuringFlood),
    rssGrowthMiB: growthMiB,
    peakRssAfterEach20kKeysMiB: run.rssTimeline,
    // The key list keeps half the cap for keys that exist: a forged flood takes the other half.
    overflowUnlistedUses: m.overflow_unlisted_uses_total,
    realKeyUsesSent: run.realUses,
    realKeyUsesPersisted: realPersisted,
    realKeyUsesLost: run.realUses - realPersisted,
    lateRealKeyUsesSent: LATE_USES,
    lateRealKeyUsesLost: LATE_USES - latePersisted,
  });
}

t.test(`cardinality flood of ${LONG ? '1,000,000' : '100,000'} random key ids: memory under the cap, overflow counted`, (t) => flood(t, false));
t.test(`the same flood while PostgreSQL is down: nothing drains, memory still bounded`, (t) => flood(t, true));

t.test('leak scan: no key or hash in any collector log line of this file (hostile datagrams carried plaintext keys)', async (t) => {
  const result = leaks.scan();
  t.ok(result.texts > 0 && result.secrets > 0, `scanned ${result.texts} texts (${result.bytes} bytes) for ${result.secrets} secrets`);
  t.same(result.hits, [], 'zero hits');
});
