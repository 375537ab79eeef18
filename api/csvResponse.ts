import type { Response } from 'express';

// A CSV answer written as its lines are read, so a report of 100,000 keys is never whole in
// memory, and written no faster than the client takes it.

/** Resolves when the response can take more, or is closed (the client gone). */
const writable = (res: Response) =>
  new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });

/**
 * Sends `header`, then each chunk as it comes. The first chunk is read before the status is sent,
 * so a refusal there (a key of another org, the database down) is an error answer; a failure
 * after it rejects, and the error middleware closes the response before its end, which a client
 * reads as a failed download rather than a short report.
 */
export async function sendCsv(res: Response, filename: string, header: string, chunks: AsyncIterable<string>): Promise<void> {
  const iterator = chunks[Symbol.asyncIterator]();
  let next = await iterator.next();
  res.status(200).type('text/csv; charset=utf-8').attachment(filename);
  res.write(header);
  while (!next.done) {
    if (!res.write(next.value)) await writable(res);
    if (res.destroyed) {
      await iterator.return?.(undefined);
      return;
    }
    next = await iterator.next();
  }
  res.end();
}
