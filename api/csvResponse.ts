import type { Response } from 'express';

// A CSV answer written as its lines are read, so a report of 100,000 keys is never whole in
// memory, and written no faster than the client takes it.

// A report holds its org's turn (API_MAX_CONCURRENT_PER_ORG) until its end: a client that
// stopped reading would hold it for as long as its connection stayed open, and a few such
// downloads by a keys:read key froze its org's API. A client that takes nothing for this long is
// let go.
export const STALLED_CLIENT_MS = 30_000;

/** Resolves true when the response can take more, false when closed or stalled past `stalledMs`. */
const writable = (res: Response, stalledMs: number) =>
  new Promise<boolean>((resolve) => {
    const done = (more: boolean) => () => {
      clearTimeout(stalled);
      res.off('drain', drained);
      res.off('close', closed);
      resolve(more);
    };
    const drained = done(true);
    const closed = done(false);
    const stalled = setTimeout(closed, stalledMs);
    res.on('drain', drained);
    res.on('close', closed);
  });

/**
 * Sends `header`, then each chunk as it comes, each once the client took the one before (or
 * closes the answer, without its end, when the client took nothing for `stalledMs`). The first chunk is read before the status is sent,
 * so a refusal there (a key of another org, the database down) is an error answer; a failure
 * after it rejects, and the error middleware closes the response before its end, which a client
 * reads as a failed download rather than a short report.
 */
export async function sendCsv(res: Response, filename: string, header: string, chunks: AsyncIterable<string>, stalledMs = STALLED_CLIENT_MS): Promise<void> {
  const iterator = chunks[Symbol.asyncIterator]();
  let next = await iterator.next();
  res.status(200).type('text/csv; charset=utf-8').attachment(filename);
  res.write(header);
  while (!next.done) {
    const taken = !res.destroyed && (res.write(next.value) || (await writable(res, stalledMs)));
    if (!taken) {
      abandon(res);
      await iterator.return?.(undefined);
      return;
    }
    next = await iterator.next();
  }
  res.end();
}

/**
 * Closes an answer under way without its end. end() after destroy() sends nothing, and is what
 * gives the request's org turn back (api/auth/authorize.ts, turnOf): without it, each download a
 * client left held a turn for good, and API_MAX_CONCURRENT_PER_ORG of them froze the org's API.
 */
export function abandon(res: Response): void {
  res.destroy();
  res.end();
}
