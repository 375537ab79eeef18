import os from 'node:os';

// Servers that pg_ctl starts run in a session of their own: a terminal's Ctrl-C does not reach
// them, and a script that dies of a signal skips its `finally`. A script that starts such servers
// (the Citus cluster, a throwaway PostgreSQL) stops them itself when signalled.

const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Runs every step even when one fails (one node that will not stop must not keep the others running), then throws what failed. */
export function runEvery(what: string, steps: ReadonlyArray<() => void>): void {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      step();
    } catch (error) {
      errors.push(error);
    }
  }
  if (errors.length > 0) throw new AggregateError(errors, `${what}: ${errors.map((error) => (error as Error).message).join('; ')}`);
}

/**
 * Until the function it returns is called (which runs `stop` too), SIGINT, SIGTERM and SIGHUP run
 * `stop` and exit with 128 + the signal's number, as a shell reports a process the signal ended.
 */
export function stopOnSignal(stop: () => void): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    // After the signal's other listeners (test/runTap.ts forwards it to tap), so the tests end
    // before their database does.
    process.nextTick(() => {
      try {
        stop();
      } catch (error) {
        console.error(`after ${signal}: ${(error as Error).message}`);
      }
      process.exit(128 + os.constants.signals[signal]);
    });
  };
  for (const signal of SIGNALS) process.on(signal, onSignal);
  return () => {
    for (const signal of SIGNALS) process.off(signal, onSignal);
    stop();
  };
}
