import { randomUUID } from 'node:crypto';
import { measureParseAggregate } from './lib/parseAggregate';
import type { IngestMode } from './lib/usageLines';

// Benchmark 3b on its own, with no database: for profiling (`node --cpu-prof --import tsx
// bench/parseAggregate.ts`) and for interleaved before/after runs, one process per run.
// Usage: [BENCH_KEYS=1000] tsx bench/parseAggregate.ts [lines per pass] [passes] [packed|single] [aggregate|parse]
const [lines = '1000000', passes = '5', mode = 'packed', stage = 'aggregate'] = process.argv.slice(2);
const orgId = randomUUID();
const keys = Array.from({ length: Number(process.env.BENCH_KEYS ?? 1000) }, () => ({ keyId: randomUUID(), orgId }));
const rates = measureParseAggregate(keys, mode as IngestMode, stage === 'parse' ? 'parse only' : 'parse + aggregate', Number(lines), Number(passes));
console.log(JSON.stringify({ mode, stage, wall: rates.wall.map(Math.round), cpu: rates.cpu.map(Math.round) }));
