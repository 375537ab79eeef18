import type { Response } from 'express';

// A CSV answer written as its lines are read, so a report of 100,000 keys is never whole in
// memory, and written no faster than the client takes it.

// A report holds its org's one place among the reports being written (api/usage/usage.routes.ts)
// until its end: a client that stopped reading, or read a few bytes now and then, would keep
// its org's reports refused for as long as its connection stayed open. A client that takes
// nothing for `stalledMs` is let go, and every download at `longestMs` (100,000 keys take about
// 10 s: docs/benchmarks.md §5).
export const CSV_LIMITS: Readonly<{ stalledMs: number; longestMs: number }> = Object.freeze({ stalledMs: 30_000, longestMs: 5 * 60_000 });

/** How a wait for the client ended: it took more, it left, or `waitMs` passed. */
type Waited = 'drained' | 'closed' | 'timed out';

// The connection's close too: an answer queued behind another on its connection (pipelined)
// never closes when its client leaves, and waited out `stalledMs` holding its org's report place.
const writable = (res: Response, waitMs: number) =>
  new Promise<Waited>((resolve) => {
    const socket = res.req.socket;
    const done = (how: Waited) => () => {
      clearTimeout(timer);
      res.off('drain', drained);
      res.off('close', closed);
      socket.off('close', closed);
      resolve(how);
    };
    const drained = done('drained');
    const closed = done('closed');
    const timer = setTimeout(done('timed out'), waitMs);
    res.on('drain', drained);
    res.on('close', closed);
    socket.on('close', closed);
  });

/** Writes a chunk: how that ended, waiting for the client at most `waitMs` if it must. */
async function deliver(res: Response, chunk: string, waitMs: number): Promise<Waited> {
  if (res.destroyed || res.req.socket.destroyed) return 'closed';
  if (waitMs <= 0) return 'timed out';
  return res.write(chunk) ? 'drained' : writable(res, waitMs);
}

/**
 * Sends `header`, then each chunk as it comes, each once the client took the one before (or
 * closes the answer, without its end, when the client took nothing for `limits.stalledMs`, or
 * `limits.longestMs` passed). The first chunk is read before the status is sent,
 * so a refusal there (a key of another org, the database down) is an error answer; a failure
 * after it rejects, and the error middleware closes the response before its end, which a client
 * reads as a failed download rather than a short report. `onStarted` runs once the status is sent.
 */
export async function sendCsv(
  res: Response,
  filename: string,
  header: string,
  chunks: AsyncIterable<string>,
  { limits = CSV_LIMITS, onStarted = () => {} } = {},
): Promise<void> {
  const iterator = chunks[Symbol.asyncIterator]();
  const endBy = Date.now() + limits.longestMs;
  let next = await iterator.next();
  res.status(200).type('text/csv; charset=utf-8').attachment(filename);
  res.write(header);
  onStarted();
  while (!next.done) {
    const left = endBy - Date.now();
    const waited = await deliver(res, next.value, Math.min(limits.stalledMs, left));
    if (waited !== 'drained') {
      // A report cut at its longest is the server's doing: 503 in the log, not a client gone.
      abandon(res, waited === 'timed out' && left <= limits.stalledMs ? 503 : CLIENT_CLOSED);
      await iterator.return?.(undefined);
      return;
    }
    next = await iterator.next();
  }
  res.end();
}

/** The request log's status of an answer its client left before its end (nginx's). */
export const CLIENT_CLOSED = 499;

/**
 * Closes an answer under way without its end, logged with `loggedStatus` (the request log took
 * it for finished: 200). end() after destroy() sends nothing, and is what gives the request's
 * org turn back (api/auth/authorize.ts, turnOf): without it, each download a client left held a
 * turn for good, and API_MAX_CONCURRENT_PER_ORG of them froze the org's API.
 */
export function abandon(res: Response, loggedStatus: number): void {
  res.locals.loggedStatus = loggedStatus;
  res.destroy();
  res.end();
}
