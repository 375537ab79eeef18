import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Aggregator, capHolding } from '../collector/aggregator';
import { chunksWritten } from '../collector/copyBytes';
import { writeLogLine } from '../collector/logDelta';

// The client's part of a usage-log append, without a database: the drain of one key's use each
// (100 orgs, one address per key), then each key's COPY line written into the chunks the append's COPY
// stream asks for. For profiling (`node --cpu-prof --import tsx
// bench/appendEncode.ts`) and for before/after runs in worktrees, one process per run.
// Usage: tsx bench/appendEncode.ts [keys=100000] [rounds=6]
const [keyCount = 100_000, rounds = 6] = process.argv.slice(2).map(Number);
const orgIds = Array.from({ length: 100 }, () => randomUUID());
const keyIds = Array.from({ length: keyCount }, () => randomUUID());

function round() {
  const aggregator = new Aggregator({ maxKeys: capHolding(keyCount), now: () => Date.now() });
  keyIds.forEach((keyId, i) =>
    aggregator.add({ orgId: orgIds[i % orgIds.length], keyId, ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, outcome: 'ok', count: 1 }),
  );
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const batch = aggregator.drain();
  const drained = performance.now();
  let bytes = 0;
  for (const chunk of chunksWritten(batch.keys, writeLogLine)) bytes += chunk.length;
  const cpu = process.cpuUsage(cpuBefore);
  const encodeMs = performance.now() - drained;
  return { drainMs: Math.round(drained - started), encodeMs: Math.round(encodeMs), cpuMs: Math.round((cpu.user + cpu.system) / 1000), bytes };
}

for (let r = 0; r < rounds; r++) console.log(JSON.stringify(round()));
