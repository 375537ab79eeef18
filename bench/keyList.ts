import { randomUUID } from 'node:crypto';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { KeyList } from '../collector/keyList';
import { createRecentKeysReader, hashesOfAllKeys } from '../collector/keyListSync';
import { settledHeapBytes } from './lib/heap';
import { median } from './lib/stats';
import { createKeysInOrgs, openBenchDatabase } from './lib/database';

// What the collector's key list (COLLECTOR_KEY_LIST_REFRESH_MS) costs, the figures behind
// docs/operations.md: V8 heap per key listed, the receive loop's time to hash and look up a key
// (once per new key per flush interval), and the reads from PostgreSQL: the full read (at start and
// hourly), with this process's CPU for it (the collector's receive loop pays it), and a refresh of
// the keys created in its window, the first and the next. One process per run.
// Run: node --expose-gc --import tsx bench/keyList.ts [memory|database] [keys]
//   memory: N keys in 100 orgs, in memory only (default 1,000,000);
//   database: N keys in 100 orgs in a throwaway PostgreSQL (default 1,000,000), all created at once
//   as by a bulk import, each read 3 times.

const part = process.argv[2] === 'database' ? 'database' : 'memory';
const keyCount = Number(process.argv[3] ?? 1_000_000);
// The list is a Float64Array: its slots are an ArrayBuffer outside the heap proper.
const heapUsed = () => settledHeapBytes(true);
const timed = <T>(work: () => T): [T, number] => {
  const started = performance.now();
  const result = work();
  return [result, performance.now() - started];
};

// Flat strings, as the parser's ids are: randomUUID() returns concatenations, which the first
// charCodeAt would flatten inside the timed hash (and free the parts inside the heap measured).
const flatUuid = () => Buffer.from(randomUUID(), 'latin1').toString('latin1');

function pairs(count: number) {
  const orgs = Array.from({ length: 100 }, flatUuid);
  return Array.from({ length: count }, (_, i) => ({ keyId: flatUuid(), orgId: orgs[i % 100] }));
}

function memory() {
  const keys = pairs(keyCount);
  const before = heapUsed();
  const list = new KeyList(1);
  const [hashes, hashMs] = timed(() => keys.map((k) => list.hash(k.keyId, k.orgId)));
  const [, replaceMs] = timed(() => list.replace(hashes));
  hashes.length = 0;
  const kept = heapUsed() - before;
  const [listed, listedMs] = timed(() => keys.filter((k) => list.admits(k.keyId, k.orgId)).length);
  const forged = pairs(keyCount);
  const [admittedForged, forgedMs] = timed(() => forged.filter((k) => list.admits(k.keyId, k.orgId)).length);
  const perKeyNs = (ms: number) => Math.round((ms * 1e6) / keyCount);
  return {
    keys: keyCount,
    heapBytesPerKey: +(kept / keyCount).toFixed(1),
    hashNsPerKey: perKeyNs(hashMs),
    replaceMs: Math.round(replaceMs),
    lookupNsPerListedKey: perKeyNs(listedMs),
    lookupNsPerForgedKey: perKeyNs(forgedMs),
    listed,
    admittedForged,
  };
}

// Wall and CPU time of `work`, in ms, and its longest event-loop stall: how long the collector's
// receive loop, which runs these reads, would leave the UDP socket unread at once.
async function measured<T>(work: () => Promise<T>): Promise<{ result: T; ms: number; cpuMs: number; stallMs: number }> {
  const stalls = monitorEventLoopDelay({ resolution: 5 });
  stalls.enable();
  const started = performance.now();
  const cpuStarted = process.cpuUsage();
  const result = await work();
  const cpu = process.cpuUsage(cpuStarted);
  const ms = performance.now() - started;
  stalls.disable();
  return { result, ms, cpuMs: (cpu.user + cpu.system) / 1000, stallMs: stalls.max / 1e6 };
}

async function database() {
  const bench = await openBenchDatabase(() => undefined);
  try {
    await createKeysInOrgs(bench.db, keyCount, 100, 'keylist');
    // Every key in the refresh's window, as after a bulk import in one transaction (one created_at).
    await bench.db.raw('update api_keys set created_at = now()');
    await bench.db.raw('vacuum analyze api_keys');
    const list = new KeyList(1);
    const reads: Record<'full' | 'refresh' | 'again', Array<{ ms: number; cpuMs: number; stallMs: number; keys: number }>> = {
      full: [],
      refresh: [],
      again: [],
    };
    for (let round = 0; round < 3; round++) {
      const { result: hashes, ...fullRead } = await measured(async () => (await hashesOfAllKeys(bench.db, list)) ?? []);
      list.replace(hashes);
      reads.full.push({ ...fullRead, keys: hashes.length });
      // A refresh's window: the keys created in the last 5 minutes and the refresh interval, every
      // key here. A collector's first refresh, or its first since they were imported, reads them
      // all; the next, as every refresh while none of them changes, only their slices' signatures.
      const recent = createRecentKeysReader(bench.db, list);
      for (const read of ['refresh', 'again'] as const) {
        const { result: keys, ...times } = await measured(() => recent.read(305_000));
        reads[read].push({ ...times, keys });
      }
    }
    const round = (values: number[]) => values.map(Math.round);
    const figures = (read: keyof typeof reads) => ({
      ms: round(reads[read].map((r) => r.ms)),
      medianMs: Math.round(median(reads[read].map((r) => r.ms))),
      cpuMs: round(reads[read].map((r) => r.cpuMs)),
      longestStallMs: round(reads[read].map((r) => r.stallMs)),
      keysRead: reads[read].map((r) => r.keys),
    });
    return { keys: keyCount, listed: list.size, fullRead: figures('full'), refresh: figures('refresh'), refreshAgain: figures('again') };
  } finally {
    await bench.close();
  }
}

const run = async () => console.log(JSON.stringify({ part, ...(part === 'memory' ? memory() : await database()) }));
run().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
