import t from 'tap';
import { chunksWritten, CopyBytes } from '../collector/copyBytes';
import { connectionOf, copyChunks } from '../collector/flushStaging';
import { freshDatabase } from './helpers/database';

// The writer must produce exactly COPY's text format and, in the usage log's deltas, the bytes of
// JSON.stringify: the log's rows are read back by folds of any version.

const STRINGS = [
  '',
  'plain',
  '10.0.0.1',
  '2001:db8::1',
  'a\tb',
  'line\nbreak',
  'cr\r',
  'back\\slash',
  'say "hi"',
  '\u0001ctl',
  'é',
  '漢字',
  '😀',
  '\ud800lone',
  '~\u007f',
];
// COPY's text format escapes backslash, tab, newline and carriage return (as \\, \t, \n, \r).
const COPY_TEXT: Array<[string, string]> = [
  ['a\tb', 'a\\tb'],
  ['line\nbreak', 'line\\nbreak'],
  ['cr\r', 'cr\\r'],
  ['back\\slash', 'back\\\\slash'],
  ['\\\t\n\r', '\\\\\\t\\n\\r'],
];
const written = (write: (out: CopyBytes) => void) => {
  const out = new CopyBytes();
  write(out);
  return out.take().toString('hex');
};
// Strings go out as UTF-8 (a lone surrogate as U+FFFD), as the COPY stream sent strings before.
const utf8 = (text: string) => Buffer.from(text).toString('hex');

t.test('a text field is escaped as COPY reads it; null is \\N', async (t) => {
  for (const value of STRINGS) {
    const expected = COPY_TEXT.find(([raw]) => raw === value)?.[1] ?? value;
    t.equal(
      written((out) => out.text(value)),
      utf8(expected),
      `text ${JSON.stringify(value)}`,
    );
  }
  for (const [raw, expected] of COPY_TEXT)
    t.equal(
      written((out) => out.text(raw)),
      utf8(expected),
      JSON.stringify(raw),
    );
  t.equal(
    written((out) => out.text(null)),
    utf8('\\N'),
  );
});

t.test('a JSON string is written as JSON.stringify writes it, its backslashes escaped for COPY', async (t) => {
  // JSON.stringify writes no raw tab, newline or carriage return: only its backslashes need COPY's escape.
  for (const value of STRINGS)
    t.equal(
      written((out) => out.jsonString(value)),
      utf8(JSON.stringify(value).replaceAll('\\', '\\\\')),
      JSON.stringify(value),
    );
});

t.test('a number is written as String() writes it (-Infinity is \\N); a JSON number as JSON.stringify does', async (t) => {
  const edges = [0, -0, 1, -1, 9, 10, 11, 99_999_999, 100_000_000, 100_000_001, 2 ** 31, 2 ** 31 - 1, 1_700_000_000_123, -1_700_000_000_123];
  const others = [Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 2 ** 53 + 2, 0.5, -2.25, 1e21, 1e-7, Infinity, NaN];
  for (const value of [...edges, ...others]) {
    t.equal(
      written((out) => out.number(value)),
      utf8(String(value)),
      `${value}`,
    );
    t.equal(
      written((out) => out.jsonNumber(value)),
      utf8(JSON.stringify(value)),
      `JSON ${value}`,
    );
  }
  t.equal(
    written((out) => out.number(-Infinity)),
    utf8('\\N'),
  );
  t.equal(
    written((out) => out.jsonNumber(-Infinity)),
    utf8('null'),
  );
  // Integers of every magnitude, with zeros inside and at the ends of the low part.
  let mismatches = 0;
  for (let digits = 1; digits <= 16; digits++) {
    for (let i = 0; i < 500; i++) {
      const value = Math.floor(Math.random() * 10 ** digits) * (i % 2 === 0 ? 1 : -1);
      const rounded = i % 5 === 0 ? value - (value % 10 ** Math.min(digits, 9)) : value;
      if (written((out) => out.number(rounded)) !== utf8(String(rounded))) mismatches++;
    }
  }
  t.equal(mismatches, 0, '8,000 random integers up to 16 digits');
});

t.test('chunks: each of at least chunkBytes but the last, in order; a field longer than the buffer grows it', async (t) => {
  const long = 'x'.repeat(5000);
  const items = Array.from({ length: 1000 }, (_, i) => (i === 500 ? long : `item ${i}`));
  const chunks = [...chunksWritten(items, (out, item) => (out.text(item), out.byte(10)), 256)];
  t.ok(chunks.length > 10, `${chunks.length} chunks`);
  t.ok(
    chunks.slice(0, -1).every((chunk) => chunk.length >= 256),
    'every chunk but the last is full',
  );
  t.equal(Buffer.concat(chunks).toString(), items.map((item) => `${item}\n`).join(''));
  t.same([...chunksWritten([], () => undefined)], [], 'no items, no chunk');
});

t.test('PostgreSQL reads the written fields back as they were', async (t) => {
  const { db } = await freshDatabase(t);
  const trx = await db.transaction();
  t.teardown(() => trx.rollback().catch(() => undefined));
  const connection = await connectionOf(trx);
  await connection.query('create temporary table copied (position int, value text, json text)');
  const rows = STRINGS.map((value, position) => ({ position, value, json: [value, position, -Infinity, 1_700_000_000_123] }));
  const chunks = chunksWritten(
    rows,
    (out, row) => {
      out.number(row.position);
      out.byte(9);
      out.text(row.value);
      out.byte(9);
      out.byte(0x5b);
      out.jsonString(row.json[0] as string);
      for (const value of row.json.slice(1) as number[]) {
        out.byte(0x2c);
        out.jsonNumber(value);
      }
      out.byte(0x5d);
      out.byte(10);
    },
    64,
  );
  t.equal(await copyChunks(connection, 'copied (position, value, json)', chunks), 1, 'one COPY');
  const back = await connection.query<{ value: string; json: string }>('select value, json from copied order by position');
  t.same(
    back.rows.map((row) => row.value),
    STRINGS.map((value) => Buffer.from(value).toString()),
  );
  t.same(
    back.rows.map((row) => JSON.parse(row.json) as unknown),
    rows.map((row) => [row.value, row.position, null, 1_700_000_000_123]),
  );
});
