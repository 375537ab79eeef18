import { spawn } from 'node:child_process';
import path from 'node:path';

// A benchmark script run end to end in its own process, for the smoke tests that keep the
// benchmarks from rotting: the benchmark database comes from the test run's admin connection.

const ROOT = path.resolve(__dirname, '..', '..');

export interface ScriptRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node --import tsx <script> <args>`; SIGINT after `limitMs`. */
export async function runBenchScript(script: string, args: string[], limitMs: number): Promise<ScriptRun> {
  // Set by test/run.ts (`npm test`); read here rather than through helpers/database so that a smoke
  // test loads nothing of the project but what it checks.
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
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGINT'), limitMs);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** The test's message for an exit code: on failure, the script's last words. */
export const exitMessage = (run: ScriptRun) => (run.code === 0 ? 'exits 0' : `exits 0; its last words:\n${run.stderr.split('\n').slice(-30).join('\n')}`);
