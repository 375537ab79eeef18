import type { Server } from 'node:http';
import { ConfigError } from './config';
import type { Logger } from './logger';

const stderrLine = (line: string) => void process.stderr.write(`${line}\n`);

/**
 * The setup of an entry point (its config first), or exit 1 after saying each problem on a line of
 * its own, a ConfigError's one per variable and named: thrown, it was an uncaught error's stack
 * trace, with every problem on one line.
 */
export function setupOrExit<T>(setup: () => T, say: (line: string) => void = stderrLine): T {
  try {
    return setup();
  } catch (error) {
    const problems = error instanceof ConfigError ? error.problems : [(error as Error).message];
    for (const problem of problems) say(problem);
    process.exit(1);
  }
}

// Listens, turning "address in use" into a message that names the port and the variable.
export function listen(server: Server, host: string, port: number, variable: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      if (error.code === 'EADDRINUSE') {
        reject(new Error(`Port ${port} on ${host} is already in use; set ${variable} to a free port`));
      } else {
        reject(error);
      }
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    });
  });
}

// How long requests in flight at a stop may take to finish before their connections are cut.
const CLOSE_GRACE_MS = 5000;
const IDLE_SWEEP_MS = 50;

/**
 * Stops taking connections and resolves once every one has ended. close() alone waits for
 * connections to end by themselves: one whose request was in flight stayed kept alive after its
 * answer, and a client that went on using it was served on it without end. So connections are
 * closed as they become idle, and all of them once `graceMs` have passed.
 */
export function closeServer(server: Server, graceMs = CLOSE_GRACE_MS): Promise<void> {
  return new Promise((resolve) => {
    const sweep = setInterval(() => server.closeIdleConnections(), IDLE_SWEEP_MS).unref();
    const cut = setTimeout(() => server.closeAllConnections(), graceMs).unref();
    server.close(() => {
      clearInterval(sweep);
      clearTimeout(cut);
      resolve();
    });
    server.closeIdleConnections();
  });
}

// SIGTERM and SIGINT run `stop` once; a second signal while stopping exits at once. Returns the
// same stop for other reasons to ask for (stopWhenSupervisorGone), which never exits early.
export function onShutdownSignal(logger: Logger, stop: () => Promise<void>): (reason: string) => void {
  let stopping = false;
  const requestStop = (why: { signal: NodeJS.Signals } | { reason: string }) => {
    if (stopping) return;
    stopping = true;
    logger.info(why, 'shutting down');
    stop().then(
      () => process.exit(0),
      (error) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    requestStop({ signal });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return (reason) => requestStop({ reason });
}

/**
 * Under `npm start` (config.supervised), calls `onGone` once the launcher is gone. A launcher killed
 * outright (SIGKILL, the OOM killer) cannot stop what it started, and the API and the collector, in
 * process groups of their own, served on with nobody to stop them; the next `npm start` took over
 * the data folder beside them. The kernel closes the launcher's end of the stdin pipe however it
 * dies: that end-of-file (or a read error on the pipe) is the word. `onGone` must be idempotent:
 * a stop already under way goes on, its final flush included.
 */
export function stopWhenSupervisorGone(supervised: boolean, onGone: (reason: string) => void): void {
  if (!supervised) return;
  process.stdin.once('end', () => onGone('the launcher is gone'));
  process.stdin.once('error', () => onGone('the launcher is gone'));
  process.stdin.resume();
  process.stdin.unref();
}
