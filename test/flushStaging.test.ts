import t, { type Test } from 'tap';
import { connectionOf, copyLine, copyLines, copyNumber, copyText, linesOf, prepareStaging } from '../collector/flushStaging';
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

// The flush writes COPY's text format by hand (one join of its fields per line): whatever a text
// field holds must come back from the staging table exactly, and the aggregator's "no such use"
// (-Infinity) and a missing value must arrive as null.

t.test('COPY lines round-trip tabs, newlines, backslashes and nulls through a staging table', async (t) => {
  const connection = await stagingConnection(t);
  const details = JSON.stringify({ note: 'tab\there, line\nbreak, back\\slash, cr\r' });
  const orgId = '00000000-0000-4000-8000-000000000001';
  const keyId = '00000000-0000-4000-8000-000000000002';
  const lines = [
    copyLine([orgId, keyId, copyText('a\tb\\c\nd'), copyNumber(1_700_000_000_123), copyText(details), copyText(null)]),
    copyLine([orgId, keyId, copyText('plain'), copyNumber(-Infinity), copyText('{}'), copyText('x')]),
  ];
  t.equal(await copyLines(connection, 'flush_events', lines), 1, 'one COPY');
  t.equal(await copyLines(connection, 'flush_events', []), 0, 'nothing sent for no lines');
  const { rows } = await connection.query('select type, occurred_ms, details, dedupe_key from flush_events order by type');
  t.same(rows, [
    { type: 'a\tb\\c\nd', occurred_ms: 1_700_000_000_123, details: JSON.parse(details), dedupe_key: null },
    { type: 'plain', occurred_ms: null, details: {}, dedupe_key: 'x' },
  ]);
});

// copyLines builds its chunks of 4,096 lines as the stream asks for them: every line of every
// chunk arrives, in order, and a line source that fails mid-way fails the COPY, not the process.
t.test('COPY lines from a generator: several chunks arrive whole and in order; a failing source fails the COPY', async (t) => {
  const connection = await stagingConnection(t);
  const orgId = '00000000-0000-4000-8000-000000000001';
  const count = 4096 * 2 + 7;
  function* lines(failAt?: number) {
    for (let i = 0; i < count; i++) {
      if (i === failAt) throw new Error('line source failed');
      yield copyLine([orgId, orgId, i, copyNumber(i), copyNumber(i), copyNumber(i), copyNumber(i), copyNumber(i), copyNumber(i), copyNumber(i)]);
    }
  }
  t.equal(await copyLines(connection, 'flush_hours', lines()), 1, 'one COPY');
  const { rows } = await connection.query<{ n: string; ordered: boolean }>(
    'select count(*) as n, bool_and(hour_ms = position - 1) as ordered from (select hour_ms, row_number() over () as position from flush_hours) r',
  );
  t.same(rows[0], { n: String(count), ordered: true }, 'every line, in the order sent');
  await t.rejects(copyLines(connection, 'flush_hours', lines(5000)), /line source failed/);
});

// The flush's callers hand copyLines linesOf(keys, line), not keys.map(line): with an array every
// line is built before the COPY starts, and PostgreSQL waits for the client instead of parsing the
// first chunks while the client builds the rest.
t.test('linesOf makes a line only when it is asked for', async (t) => {
  const made: number[] = [];
  const lines = linesOf([1, 2, 3], (n) => (made.push(n), `${n}\n`));
  t.same(made, [], 'nothing made before the first line is asked for');
  t.same(lines.next(), { value: '1\n', done: false });
  t.same(made, [1], 'one line asked for, one made');
  t.same([...lines], ['2\n', '3\n']);
});
