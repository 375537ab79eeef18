import { randomUUID } from 'node:crypto';
import { KeyList } from '../collector/keyList';
import { measureParseAggregate } from './lib/parseAggregate';
import type { Parser } from './lib/parseAggregate';
import type { IngestMode } from './lib/usageLines';

// Benchmark 3b on its own, with no database: for profiling (`node --cpu-prof --import tsx
// bench/parseAggregate.ts`) and for interleaved before/after runs, one process per run.
// `listed`: the aggregator looks each new key up in a key list holding every key (the collector's
// default, COLLECTOR_KEY_LIST_REFRESH_MS); `unlisted`: without one. `recycled`: each pass's keys are
// given back after it, as the flusher gives them back once written (the collector's way);
// `fresh`: every pass makes its keys anew (as before 2026-12-07).
// Usage: [BENCH_KEYS=1000] [BENCH_IPS_PER_KEY=3] tsx bench/parseAggregate.ts [lines per pass] [passes] [packed|single] [aggregate|parse] [bytes|text] [unlisted|listed] [recycled|fresh]
const [lines = '1000000', passes = '5', mode = 'packed', stage = 'aggregate', parser = 'bytes', list = 'unlisted', pendingKeys = 'recycled'] =
  process.argv.slice(2);
const orgId = randomUUID();
const keys = Array.from({ length: Number(process.env.BENCH_KEYS ?? 1000) }, () => ({ keyId: randomUUID(), orgId }));
const keyList = list === 'listed' ? new KeyList(1) : undefined;
keyList?.replace(keys.map((k) => keyList.hash(k.keyId, k.orgId)));
const shape = {
  mode: mode as IngestMode,
  ipsPerKey: Number(process.env.BENCH_IPS_PER_KEY ?? 3),
  parser: parser as Parser,
  keyList,
  recycle: pendingKeys === 'recycled',
};
const rates = measureParseAggregate(keys, shape, stage === 'parse' ? 'parse only' : 'parse + aggregate', Number(lines), Number(passes));
console.log(JSON.stringify({ mode, stage, parser, list, pendingKeys, wall: rates.wall.map(Math.round), cpu: rates.cpu.map(Math.round) }));
