import t from 'tap';
import { HEADINGS } from '../bench/headings';
import { exitMessage, runBenchScript } from './helpers/benchScript';

// Keeps `npm run bench` from rotting: the quick mode runs every benchmark end to end (servers,
// collectors, Etsy statsd, PostgreSQL) and must exit 0 having printed every table. Nothing here
// asserts a timing: these machines are far too noisy for that, and the full run is where the
// numbers come from (docs/benchmarks.md).

t.test('bench/run.ts --quick runs every benchmark and prints every table', async (t) => {
  const run = await runBenchScript('bench/run.ts', ['--quick'], 200_000);
  t.equal(run.code, 0, exitMessage(run));
  for (const heading of Object.values(HEADINGS)) {
    t.ok(run.stdout.includes(`## ${heading}\n`), `prints "${heading}"`);
  }
  t.match(run.stdout, /Machine: \d+ cores × .+, Node v\d+/, 'records the machine with the tables');
  t.match(run.stderr, /results in bench\/results\/bench-.+-quick\.json/, 'writes the results file');
});

// The receive-path probe (docs/benchmarks.md §3) is not part of `npm run bench`: one short run
// of it, with and without the loop probe, the whole system started and stopped each time.
t.test('bench/ingestStalls.ts runs and reports the collector CPU per line', async (t) => {
  const run = await runBenchScript('bench/ingestStalls.ts', ['--rate=20000', '--seconds=0.5', '--runs=1', '--probe=off'], 150_000);
  t.equal(run.code, 0, exitMessage(run));
  t.match(
    run.stderr,
    /default at 20,000\/s: lost [\d,]+ of [\d,]+ .*collector CPU \d+ ms user \+ \d+ ms system \([\d.]+ µs\/line\).*exit 0/,
    'reports the run',
  );
  t.match(run.stderr, /summary default at 20,000\/s, 1 runs: CPU [\d.]+ µs\/line median/, 'summarises it');
  t.match(run.stdout, /"cpuUsPerLine":/, 'writes the run as JSON');
});
