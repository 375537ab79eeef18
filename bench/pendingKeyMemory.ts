import { randomUUID } from 'node:crypto';
import { Aggregator, capHolding } from '../collector/aggregator';

// Memory per pending key in the collector's aggregator, the figure behind the README's memory
// bound. Run: node --expose-gc --import tsx bench/pendingKeyMemory.ts [typical|worst] [keys]
//   typical: one address, one outcome, one hour per key (a flood of forged ids looks like this);
//   worst:   16 proven and 16 failed addresses (the per-key cap), three hour buckets (the ±1 h
//            timestamp window) and every outcome.
// Each key's strings are new, as those of a parsed packet are. Prints heap and RSS growth per key,
// and the heap per key of the batch a drain hands over.

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
const mode = process.argv[2] === 'worst' ? 'worst' : 'typical';
const keys = Number(process.argv[3] ?? (mode === 'worst' ? 20_000 : 100_000));
const now = Date.UTC(2026, 11, 1, 12, 30);
const WORST_SAMPLES = [
  [-1, 'ok'],
  [0, 'bad_secret'],
  [1, 'forbidden'],
  [0, 'revoked'],
  [0, 'expired'],
] as const;

function fill(aggregator: Aggregator, k: number) {
  const keyId = randomUUID();
  const orgId = randomUUID();
  if (mode === 'typical') {
    aggregator.add({ keyId, orgId, ip: `10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`, outcome: 'ok', count: 1 });
    return;
  }
  for (let i = 0; i < 16; i++) {
    for (const [hour, outcome] of WORST_SAMPLES) {
      aggregator.add({ keyId, orgId, ip: `10.${k & 255}.${(k >> 8) & 255}.${i}`, outcome, count: 1, timestamp: now + hour * 3_500_000 });
    }
  }
}

gc();
const before = process.memoryUsage();
const aggregator = new Aggregator({ maxKeys: capHolding(keys), now: () => now });
for (let k = 0; k < keys; k++) fill(aggregator, k);
gc();
const after = process.memoryUsage();
const pendingKeys = aggregator.pendingKeys;
// A drained batch (what the flusher holds while PostgreSQL is unreachable) is the pending keys
// themselves; a failed direct write has read their Maps, which each key then keeps instead of its
// address list: measured so, apart, the aggregator emptied.
const batch = aggregator.drain();
for (const key of batch.keys) void [key.ips, key.failedIps, key.hours];
gc();
const drained = process.memoryUsage();
console.log(
  JSON.stringify({
    mode,
    keys: pendingKeys,
    heapBytesPerKey: Math.round((after.heapUsed - before.heapUsed) / keys),
    rssBytesPerKey: Math.round((after.rss - before.rss) / keys),
    rssMiB: Math.round(after.rss / 2 ** 20),
    drainedHeapBytesPerKey: Math.round((drained.heapUsed - before.heapUsed) / batch.keys.length),
  }),
);
