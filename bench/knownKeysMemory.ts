import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Aggregator, capHolding } from '../collector/aggregator';
import { KnownKeys } from '../collector/knownKeys';
import { createDatagramParser } from '../shared/usageDatagram';
import { encodeUsageLine, packDatagrams } from '../shared/usageWire';
import { settledHeapBytes } from './lib/heap';

// What the appends' known keys (COLLECTOR_KNOWN_KEYS_TTL_MS) cost, the figures behind
// docs/operations.md: V8 heap kept per key once the drained batch is gone, and the receive loop's
// time to confirm the keys and to look them up at an append. The keys come through the real parser
// and aggregator, so the ids are the strings a running collector holds.
// Run: node --expose-gc --import tsx bench/knownKeysMemory.ts [packed|padded]
//   packed: 100,000 keys in 100 orgs, one line each, in full datagrams;
//   padded: 2,000 keys, each line alone in a datagram padded with 60 KB of other StatsD lines.

const shape = process.argv[2] === 'padded' ? 'padded' : 'packed';
const heapUsed = () => settledHeapBytes();

function drainedKeys() {
  const orgs = Array.from({ length: 100 }, () => randomUUID());
  const count = shape === 'padded' ? 2_000 : 100_000;
  const padding = shape === 'padded' ? `\n${Array.from({ length: 6_000 }, () => 'pad.x:1|c').join('\n')}` : '';
  const lines = Array.from(
    { length: count },
    (_, i) => encodeUsageLine({ keyId: randomUUID(), orgId: orgs[i % 100], ip: '10.0.0.1', outcome: 'ok', count: 1 }) + padding,
  );
  const datagrams = shape === 'padded' ? lines : packDatagrams(lines);
  const parse = createDatagramParser();
  const aggregator = new Aggregator({ maxKeys: capHolding(count), now: () => 0 });
  for (const datagram of datagrams)
    parse(
      Buffer.from(datagram, 'latin1'),
      (sample) => aggregator.add(sample, 0),
      () => undefined,
    );
  return aggregator.drain().keys;
}

// The known keys and the times, with the batch out of scope once it returns.
function confirmAndLook() {
  const keys = drainedKeys();
  const known = new KnownKeys(60_000, () => 0);
  const confirmStarted = performance.now();
  known.confirm(keys);
  const confirmMs = performance.now() - confirmStarted;
  const lookupStarted = performance.now();
  const unconfirmed = known.unconfirmed(keys).length;
  const lookupMs = performance.now() - lookupStarted;
  return { known, keys: keys.length, unconfirmed, confirmMs: Math.round(confirmMs), lookupMs: Math.round(lookupMs) };
}

const before = heapUsed();
const { known, ...measured } = confirmAndLook();
const kept = heapUsed() - before;
console.log(JSON.stringify({ shape, ...measured, heapBytesPerKey: Math.round(kept / measured.keys), heapMiB: +(kept / 2 ** 20).toFixed(1) }));
// Held to here, so the heap above includes it.
known.confirm([]);
