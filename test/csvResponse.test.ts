import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import express from 'express';
import t, { type Test } from 'tap';
import { CSV_LIMITS, sendCsv } from '../api/csvResponse';
import { errorMiddleware } from '../api/errors';
import { capturingLogger } from './helpers/logLines';

// The CSV writer on a real HTTP server on 127.0.0.1, with the app's error middleware, over chunk
// sources the test controls: what a client sees when the source fails before its first chunk or
// after, and that a client gone stops the reading.

async function serve(t: Test, source: () => AsyncIterable<string>, limits?: { stalledMs: number; longestMs: number }) {
  const lines: string[] = [];
  // The status the request log would take for each answer (api/app.ts reads it at the close).
  const logged: unknown[] = [];
  const app = express();
  app.get('/report.csv', async (_req, res) => {
    res.once('close', () => logged.push(res.locals.loggedStatus));
    await sendCsv(res, 'report.csv', 'a,b\r\n', source(), { limits });
  });
  app.use(errorMiddleware(capturingLogger(lines, 'csv-test')));
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/report.csv`, lines, logged };
}

// The limits are the product's, not a setting: a module that imported them could change every
// report's limits for the whole process.
t.test('the limits cannot be changed by a module that imports them', async (t) => {
  t.throws(() => Object.assign(CSV_LIMITS, { stalledMs: 1 }), TypeError);
  t.equal(CSV_LIMITS.stalledMs, 30_000);
});

t.test('a source that fails before its first chunk: an error answer, no CSV', async (t) => {
  const { url } = await serve(t, () => ({
    [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(new Error('the database is down')) }),
  }));
  const response = await fetch(url);
  t.equal(response.status, 500);
  t.match(response.headers.get('content-type'), /^application\/json/);
  t.match(await response.json(), { error: { code: 'internal_error' } });
});

t.test('a source that fails after its first chunk: the download fails, it does not end short', async (t) => {
  const { url, lines } = await serve(t, async function* () {
    yield '1,2\r\n';
    throw new Error('the keyset lost its place');
  });
  // Headers and the first chunk may or may not have left before the close: either way, no whole answer.
  await t.rejects(
    fetch(url).then((response) => response.text()),
    'the request fails: the answer has no end',
  );
  t.match(lines.find((line) => line.includes('answer cut short')) ?? '', /the keyset lost its place/, 'logged with the cause');
});

t.test('a whole source: the header, every chunk, then the end', async (t) => {
  const { url } = await serve(t, async function* () {
    yield '1,2\r\n';
    yield '3,4\r\n';
  });
  const response = await fetch(url);
  t.equal(await response.text(), 'a,b\r\n1,2\r\n3,4\r\n');
  t.equal(response.headers.get('content-disposition'), 'attachment; filename=report.csv');
});

t.test('a client gone mid-report: the source is read no further and closed', async (t) => {
  let chunksRead = 0;
  let closed = false;
  const chunk = `${'x'.repeat(1 << 20)}\r\n`;
  const { url } = await serve(t, async function* () {
    try {
      // Bounded: a source the writer never stopped would end here, and the check below fail.
      for (; chunksRead < 1000; chunksRead++) yield chunk;
    } finally {
      closed = true;
    }
  });
  const aborted = new AbortController();
  const response = await fetch(url, { signal: aborted.signal });
  const reader = response.body!.getReader();
  await reader.read();
  aborted.abort();
  await t.rejects(reader.read());
  const waitUntil = Date.now() + 10_000;
  while (!closed && Date.now() < waitUntil) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(closed, 'the source was closed');
  t.ok(chunksRead < 1000, `the source was read no further than the socket took (${chunksRead} of 1,000 chunks of 1 MiB)`);
});

t.test('a client that stops reading is let go after the stall limit, and the source closed', async (t) => {
  let closed = false;
  const chunk = `${'x'.repeat(1 << 20)}\r\n`;
  const { url, logged } = await serve(
    t,
    async function* () {
      try {
        for (let i = 0; i < 1000; i++) yield chunk;
      } finally {
        closed = true;
      }
    },
    { stalledMs: 300, longestMs: 60_000 },
  );
  const response = await fetch(url);
  const reader = response.body!.getReader();
  await reader.read();
  // Read no further: the server's writes back up, and nothing drains them.
  const waitUntil = Date.now() + 10_000;
  while (!closed && Date.now() < waitUntil) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(closed, 'the source was closed though the client is still connected');
  t.strictSame(logged, [499], "logged as the client's (499)");
  await t.rejects(
    (async () => {
      for (;;) if ((await reader.read()).done) return;
    })(),
    'the answer ends without its end',
  );
});

t.test('a download that reads now and then is let go at the longest a report may take', async (t) => {
  let chunksRead = 0;
  const { url, logged } = await serve(
    t,
    async function* () {
      for (; chunksRead < 1000; chunksRead++) yield `${'x'.repeat(1 << 16)}\r\n`;
    },
    { stalledMs: 60_000, longestMs: 500 },
  );
  const response = await fetch(url);
  const reader = response.body!.getReader();
  // Slowly: a chunk every 50 ms, never long enough to count as stalled.
  const slowly = (async () => {
    for (;;) {
      if ((await reader.read()).done) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  await t.rejects(slowly, 'the answer ends without its end');
  t.ok(chunksRead < 1000, `cut off after ${chunksRead} of 1,000 chunks`);
  t.strictSame(logged, [503], "logged as the server's cut (503), not as a client gone");
});
