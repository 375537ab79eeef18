// What DogStatsD clients send besides plain counters: sampled lines, whose count is value / rate
// rounded at random so that totals are right on average, and events and service checks, which are
// other lines for the relay. The live-socket counterparts are in test/statsdClients.test.ts.
import t from 'tap';
import { MAX_LINE_COUNT, parsePacket, type UsageSample } from '../shared/usageWire';
import { stubRandom } from './helpers/fixedRandom';
import { parseWithParity } from './helpers/parseParity';

const TAGS = '#key:3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f,org:9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19,ip:10.0.0.1,outcome:ok';

// The draws Math.random gives, in order; 0.5 once they run out. parsePacket alone reads these
// lines: the byte parser would take draws of its own from the same queue.
const draws: number[] = [];
let drawn = 0;
stubRandom(t, () => {
  drawn += 1;
  return draws.shift() ?? 0.5;
});

/** The count of each line, parsed with `queued` as the draws, and how many draws were taken. */
function counts(lines: readonly string[], queued: readonly number[]): { counts: number[]; drawn: number } {
  draws.splice(0, draws.length, ...queued);
  drawn = 0;
  const samples: UsageSample[] = [];
  const result = parsePacket(lines.join('\n'), (s) => samples.push(s));
  if (result.invalid > 0) throw new Error(`invalid: ${result.firstError}`);
  return { counts: samples.map((s) => s.count), drawn };
}

t.test('a fractional value / rate rounds up exactly when the draw is below its fraction', async (t) => {
  // @0.7: 1.428…, fraction 0.428…; @0.4: 2.5.
  const at07 = `apikey.used:1|c|@0.7|${TAGS}`;
  const at04 = `apikey.used:1|c|@0.4|${TAGS}`;
  t.strictSame(counts([at07, at07, at07, at07], [0, 0.4285, 0.4286, 0.99]), { counts: [2, 2, 1, 1], drawn: 4 }, '@0.7: ceil, ceil, floor, floor');
  t.strictSame(counts([at04, at04, at04], [0.49, 0.5, 0.51]), { counts: [3, 2, 2], drawn: 3 }, '@0.4: ceil below one half, floor from it');
  t.strictSame(counts([`apikey.used:2.25|c|${TAGS}`], [0.2]), { counts: [3], drawn: 1 }, 'a fractional value without a rate too');
});

t.test('a whole value / rate is exact and draws nothing', async (t) => {
  const lines = [`apikey.used:1|c|${TAGS}`, `apikey.used:3|c|@0.5|${TAGS}`, `apikey.used:1|c|@0.25|${TAGS}`, `apikey.used:1|c|@1|${TAGS}`];
  t.strictSame(counts(lines, []), { counts: [1, 6, 4, 1], drawn: 0 });
});

t.test("the bounds are the nearest count's, as before: at least 1, at most MAX_LINE_COUNT, whatever the draw", async (t) => {
  t.strictSame(counts([`apikey.used:0.5|c|${TAGS}`, `apikey.used:0.3|c|@0.5|${TAGS}`], [0.9, 0.9]).counts, [1, 1], 'below 1: 1, not 0');
  t.strictSame(counts([`apikey.used:${MAX_LINE_COUNT}.4|c|${TAGS}`], [0]).counts, [MAX_LINE_COUNT], 'rounded up past the cap: the cap');
  draws.length = 0;
  for (const [line, nearest] of [
    [`apikey.used:0.4|c|${TAGS}`, 0],
    [`apikey.used:${MAX_LINE_COUNT}.5|c|${TAGS}`, MAX_LINE_COUNT + 1],
  ] as const) {
    const result = parsePacket(line, () => t.fail('no sample'));
    t.equal(result.firstError, `count ${nearest} out of range`, `${nearest}: refused, whatever the draw would say`);
  }
});

t.test('a sampled stream sums to calls / rate on average', async (t) => {
  // 10,000 lines at @0.7 with evenly spread draws: exactly ⌊10,000 × 3/7⌉ of them round up.
  const lines = Array.from({ length: 10_000 }, () => `apikey.used:1|c|@0.7|${TAGS}`);
  const spread = Array.from({ length: 10_000 }, (_, i) => (i + 0.5) / 10_000);
  const total = counts(lines, spread).counts.reduce((sum, count) => sum + count, 0);
  t.equal(total, 14_286, '10,000 / 0.7 = 14,285.7');
});

t.test('DogStatsD events and service checks are other lines, relayed whole', async (t) => {
  const lines = [
    '_e{5,4}:hello|world|#env:prod',
    '_e{15,21}:Deploy finished|api 1.2 is now live|d:1764590400|p:low|t:success',
    '_sc|api.up|0',
    '_sc|db.reachable|2|h:web-1|#env:prod|m:connection refused: 10.0.0.5',
  ];
  const { result, samples, others } = parseWithParity(lines.join('\n'));
  t.strictSame(others, lines, 'byte for byte, in order');
  t.strictSame(samples, []);
  t.match(result, { lines: 4, other: 4, invalid: 0 });
});
