import t, { type Test } from 'tap';
import { chunksWritten, type CopyBytes } from '../collector/copyBytes';
import { connectionOf, copyChunks, prepareStaging } from '../collector/flushStaging';
import { freshDatabase } from './helpers/database';

/** A connection in a transaction (rolled back at the end) with the staging tables ready. */
async function stagingConnection(t: Test) {
  const { db } = await freshDatabase(t);
  const trx = await db.transaction();
  t.teardown(() => trx.rollback().catch(() => undefined));
  const connection = await connectionOf(trx);
  await prepareStaging(connection);
  return connection;
}

const orgId = '00000000-0000-4000-8000-000000000001';
const keyId = '00000000-0000-4000-8000-000000000002';

// The flush writes COPY's text format by hand (collector/copyBytes.ts): whatever a text field
// holds must come back from the staging table exactly, and the aggregator's "no such use"
// (-Infinity) and a missing value must arrive as null.
t.test('COPY lines round-trip tabs, newlines, backslashes and nulls through a staging table', async (t) => {
  const connection = await stagingConnection(t);
  const details = JSON.stringify({ note: 'tab\there, line\nbreak, back\\slash, cr\r' });
  const rows = [
    [orgId, keyId, 'a\tb\\c\nd', 1_700_000_000_123, details, null],
    [orgId, keyId, 'plain', -Infinity, '{}', 'x'],
  ];
  t.equal(
    await copyChunks(
      connection,
      'flush_events',
      chunksWritten(rows, (out, row) => out.line(row)),
    ),
    1,
    'one COPY',
  );
  t.equal(
    await copyChunks(
      connection,
      'flush_events',
      chunksWritten([], () => undefined),
    ),
    0,
    'nothing sent for no lines',
  );
  const { rows: back } = await connection.query('select type, occurred_ms, details, dedupe_key from flush_events order by type');
  t.same(back, [
    { type: 'a\tb\\c\nd', occurred_ms: 1_700_000_000_123, details: JSON.parse(details), dedupe_key: null },
    { type: 'plain', occurred_ms: null, details: {}, dedupe_key: 'x' },
  ]);
});

// Chunks are written as the stream asks for them: every line of every chunk arrives, in order, and
// a line source that fails mid-way fails the COPY, not the process.
t.test('COPY chunks from a generator: several chunks arrive whole and in order; a failing source fails the COPY', async (t) => {
  const connection = await stagingConnection(t);
  const count = 4096 * 2 + 7;
  const line = (out: CopyBytes, i: number) => {
    if (i === 5000 && failing) throw new Error('line source failed');
    out.line([orgId, orgId, i, i, i, i, i, i, i, i]);
  };
  let failing = false;
  const items = Array.from({ length: count }, (_, i) => i);
  t.equal(await copyChunks(connection, 'flush_hours', chunksWritten(items, line)), 1, 'one COPY');
  const { rows } = await connection.query<{ n: string; ordered: boolean }>(
    'select count(*) as n, bool_and(hour_ms = position - 1) as ordered from (select hour_ms, row_number() over () as position from flush_hours) r',
  );
  t.same(rows[0], { n: String(count), ordered: true }, 'every line, in the order sent');
  failing = true;
  await t.rejects(copyChunks(connection, 'flush_hours', chunksWritten(items, line)), /line source failed/);
});

// The flush's callers hand copyChunks a generator, not every chunk made first: PostgreSQL parses
// the first chunks while the client writes the rest.
t.test('chunksWritten writes a chunk only when it is asked for', async (t) => {
  const written: number[] = [];
  const chunks = chunksWritten([1, 2, 3], (out, n) => (written.push(n), out.line([n])), 1);
  t.same(written, [], 'nothing written before the first chunk is asked for');
  t.same(chunks.next().value?.toString(), '1\n');
  t.same(written, [1], 'one chunk asked for, one line written');
  t.same(
    [...chunks].map((chunk) => chunk.toString()),
    ['2\n', '3\n'],
  );
});
