// Waiting, for tests and benchmarks alike: a fixed pause, and polling a probe until it answers.

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Calls `probe` every `stepMs` until it returns something other than undefined, and resolves with
 * that; rejects once `timeoutMs` has passed. A probe that throws ends the wait at once (a process
 * that exited will not start listening later): a probe that may fail for a while, such as a
 * connection refused before a server listens, catches that itself (see `httpStatus`).
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000, stepMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

/** A probe for waitFor: the status `url` answers with, or undefined while nothing listens there. */
export async function httpStatus(url: string): Promise<number | undefined> {
  try {
    const response = await fetch(url);
    await response.arrayBuffer();
    return response.status;
  } catch {
    return undefined;
  }
}
