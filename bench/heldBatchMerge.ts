import { emptyDelta, mergeBatches, type KeyUsageDelta, type UsageBatch } from '../collector/aggregator';
import { median } from './lib/stats';

// What merging a held batch costs while PostgreSQL is down (collector/flusher.ts takeDrain: each
// drain is merged into the batch waiting for its retry, on the receive loop), in the worst shape:
// every key brings 16 new proven and 16 new failed addresses per drain. Since the held batch keeps
// the first address of other networks too (collector/aggregator.ts keptIps), a key holds 32 proven
// addresses in it, not 16. The eighth and later merges are timed, scaled to 100,000 keys.
// Run: npx tsx bench/heldBatchMerge.ts v4|v6 [keys] [merges]
const [family = 'v4', keyArg = '20000', mergeArg = '12'] = process.argv.slice(2);
const keyCount = Number(keyArg);
const merges = Number(mergeArg);
const T0 = 1_700_000_000_000;
const ORG = '00000000-0000-4000-8000-000000000001';
const keyId = (i: number) => `${i.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`;
const address = (network: number, key: number) =>
  family === 'v6'
    ? `2001:db8:${(network & 0xffff).toString(16)}:${(key & 0xffff).toString(16)}::1`
    : `10.${(network >> 8) & 255}.${network & 255}.${key & 255}`;

function drain(round: number): UsageBatch {
  const keys: KeyUsageDelta[] = [];
  for (let k = 0; k < keyCount; k++) {
    const delta = emptyDelta(keyId(k), ORG);
    for (let j = 0; j < 16; j++) {
      const at = T0 + round * 1000 + j;
      const network = round * 16 + j;
      delta.ips.set(address(network, k), { count: 1, firstSeen: at, lastSeen: at });
      delta.failedIps.set(address(network + 5000, k), { count: 1, firstSeen: at, lastSeen: at });
    }
    delta.total = 32;
    delta.lastUsedAt = T0 + round * 1000 + 15;
    delta.lastIp = address(round * 16 + 15, k);
    keys.push(delta);
  }
  return { keys, uses: keyCount * 32 };
}

let held = mergeBatches([drain(0)]);
const timed: number[] = [];
for (let round = 1; round <= merges; round++) {
  const next = drain(round);
  const started = process.hrtime.bigint();
  held = mergeBatches([held, next]);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (round >= 8) timed.push((ms * 100_000) / keyCount / 1000);
}
console.log(
  `${family}: ${keyCount} keys, proven addresses per held key ${held.keys[0].ips.size}, failed ${held.keys[0].failedIps.size}; ` +
    `merge per 100,000 keys: median ${median(timed).toFixed(2)} s, worst ${Math.max(...timed).toFixed(2)} s (merges 8-${merges})`,
);
