import { spawn } from 'node:child_process';
import path from 'node:path';
import t from 'tap';
import { HEADINGS } from '../bench/headings';

// Keeps `npm run bench` from rotting: the quick mode runs every benchmark end to end (servers,
// collectors, Etsy statsd, PostgreSQL) and must exit 0 having printed every table. Nothing here
// asserts a timing: these machines are far too noisy for that, and the full run is where the
// numbers come from (docs/benchmarks.md).

const ROOT = path.resolve(__dirname, '..');
const LIMIT_MS = 200_000;

t.test('bench/run.ts --quick runs every benchmark and prints every table', async (t) => {
  // Set by test/run.ts (`npm test`); read here rather than through helpers/database so that this
  // file loads nothing of the project but the headings.
  const adminUrl = process.env.TEST_ADMIN_DATABASE_URL;
  if (!adminUrl) throw new Error('TEST_ADMIN_DATABASE_URL is not set: run tests through `npm test -- <file>`');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    // The bench creates (and drops) its own database through this admin connection.
    DATABASE_URL: adminUrl,
    // The benchmark's processes are not tests: leave them out of the coverage report rather than
    // let a smoke run inflate (collector, api) or dilute (bench/) the project's figures.
    _TAPJS_PROCESSINFO_COVERAGE_: '0',
  };
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGINT'), LIMIT_MS);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(timer);

  t.equal(code, 0, code === 0 ? 'exits 0' : `exits 0; its last words:\n${stderr.split('\n').slice(-30).join('\n')}`);
  for (const heading of Object.values(HEADINGS)) {
    t.ok(stdout.includes(`## ${heading}\n`), `prints "${heading}"`);
  }
  t.match(stdout, /Machine: \d+ cores × .+, Node v\d+/, 'records the machine with the tables');
  t.match(stderr, /results in bench\/results\/bench-.+-quick\.json/, 'writes the results file');
});
