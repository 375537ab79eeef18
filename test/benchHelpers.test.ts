import t from 'tap';
import { benchServerEnv } from '../bench/lib/benchServer';
import { firstLoss, losslessRate } from '../bench/lib/ladder';

// Pure parts of the benchmarks: the ingest ladder's verdicts (bench/ingest.ts), behind the
// "× statsd" ratio, and the bench servers' environment.

const step = (offeredRate: number, achievedRate: number, sentLines: number, received: number) => ({ offeredRate, achievedRate, sentLines, received });

t.test('a step the sender could not keep up with is not a lossless rate, even with nothing lost', async (t) => {
  const ladder = [step(400_000, 400_100, 4_000_000, 4_000_000), step(800_000, 550_000, 6_050_000, 6_050_000), step(1_000_000, 560_000, 6_160_000, 6_100_000)];
  t.equal(losslessRate(ladder), 400_000, 'credited 800 k before, achieved 550 k');
  t.equal(firstLoss(ladder)?.offeredRate, 1_000_000);
});

t.test('every step clean: the top one; none: 0', async (t) => {
  t.equal(losslessRate([step(100, 99, 1_000, 1_000), step(200, 199, 2_000, 2_000)]), 200);
  t.equal(losslessRate([step(100, 100, 1_000, 999)]), 0);
  t.equal(firstLoss([step(100, 100, 1_000, 1_000)]), undefined);
});

t.test("a bench server sends its datagrams to loopback, whatever COLLECTOR_HOST the bench's shell exported", async (t) => {
  const env = benchServerEnv('hotshots', { COLLECTOR_PORT: '9999' }, { COLLECTOR_HOST: '192.0.2.1', PATH: '/bin' });
  t.match(env, { COLLECTOR_HOST: '127.0.0.1', COLLECTOR_PORT: '9999', BENCH_VARIANT: 'hotshots', PATH: '/bin' });
});
