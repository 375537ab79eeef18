import { spawn } from 'node:child_process';
import path from 'node:path';

// The coverage threshold (package.json) is for the whole suite: a run of chosen files covers
// part of the code by design, so it reports coverage but does not fail on it.
export function tapArguments(argv: readonly string[]): string[] {
  const choosesFiles = argv.some((arg) => !arg.startsWith('-'));
  return choosesFiles ? [...argv, '--allow-incomplete-coverage'] : [...argv];
}

// Runs tap with the given arguments and extra environment; resolves with its exit code.
// Signals sent to this process are forwarded, so Ctrl-C stops the tests before the database.
export async function runTap(args: readonly string[], env: Record<string, string>): Promise<number> {
  const tap = spawn(process.execPath, [path.join(path.dirname(require.resolve('tap/package.json')), 'dist', 'esm', 'run.mjs'), ...args], {
    stdio: 'inherit',
    // Tests say what they are, so the production guards of shared/config.ts stand aside.
    env: { ...process.env, NODE_ENV: process.env.NODE_ENV || 'test', ...env },
  });
  const forward = (signal: NodeJS.Signals) => tap.kill(signal);
  process.on('SIGINT', forward).on('SIGTERM', forward).on('SIGHUP', forward);
  try {
    return await new Promise<number>((resolve) => tap.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  } finally {
    process.off('SIGINT', forward).off('SIGTERM', forward).off('SIGHUP', forward);
  }
}
