// The collector's byte parser (shared/usageDatagram.ts) against parsePacket, the definition: the
// edge cases its fast path introduces (reading bytes, four at a time, ids from a table, the line end
// found by the scanner) and a seeded differential over mutated usage lines. Every table in
// usageWire.test.ts and fuzz.usageWire.test.ts runs through both parsers too (helpers/parseParity).
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { seededRandom } from '../harness/random';
import { InternTable, canonicalUuid, createDatagramParser, parserTables, tableSlotBits, type Accept } from '../shared/usageDatagram';
import { MAX_LINE_COUNT, OUTCOMES, USAGE_METRIC, encodeUsageLine, packDatagrams, type UsageSample } from '../shared/usageWire';
import { collectGarbage } from './helpers/faults';
import { stubRandom } from './helpers/fixedRandom';
import { parseWithParity } from './helpers/parseParity';

const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const LINE = `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`;

function sample(fields: Partial<UsageSample> = {}): UsageSample {
  return { keyId: KEY, orgId: ORG, ip: '10.0.0.1', outcome: 'ok', count: 1, ...fields };
}

// Mutated lines may carry a fraction (`:1.5|c`), which the line parser rounds at random: one draw for both parsers.
stubRandom(t, () => 0.5);

t.equal(`${USAGE_METRIC}:`.length, 12, 'the fast path compares the metric name and its colon as three 4-byte words');

const edgeCases: Record<string, string> = {
  'trailing newline': `${LINE}\n`,
  'CRLF between and after lines': `${LINE}\r\n${LINE}\r\n`,
  'lone CR at the end of the datagram': `${LINE}\r`,
  'CR not before LF': `${LINE}\r${LINE}`,
  'two CRs before LF': `${LINE}\r\r\n${LINE}`,
  'empty lines around': `\n\n${LINE}\n\r\n\n${LINE}\n\n`,
  'a line split inside a two-byte character': `${LINE.replace('outcome:ok', 'outcome:\xc3')}\n\xa9${LINE}`,
  'a UTF-8 character in the address': LINE.replace('10.0.0.1', '10.0.0.1é'),
  'a UTF-8 character after the outcome': `${LINE}é`,
  'count 0': LINE.replace(':1|', ':0|'),
  'count with leading zeros': LINE.replace(':1|', ':0000001|'),
  'count of eight digits with leading zeros': LINE.replace(':1|', ':00000001|'),
  'count MAX_LINE_COUNT': LINE.replace(':1|', `:${MAX_LINE_COUNT}|`),
  'count MAX_LINE_COUNT + 1': LINE.replace(':1|', `:${MAX_LINE_COUNT + 1}|`),
  'count of seven nines': LINE.replace(':1|', ':9999999|'),
  'count of 20 digits': LINE.replace(':1|', `:${'9'.repeat(20)}|`),
  'count of 400 digits': LINE.replace(':1|', `:${'1'.repeat(400)}|`),
  'packed values': LINE.replace(':1|', ':1:2|'),
  'fractional count': LINE.replace(':1|', ':1.0|'),
  'signed count': LINE.replace(':1|', ':+1|'),
  'sample rate': LINE.replace('|c|', '|c|@0.5|'),
  'timestamp after the tags': `${LINE}|T1700000000`,
  'another tag after the outcome': `${LINE},env:prod`,
  'upper-case key': LINE.replace(KEY, KEY.toUpperCase()),
  'upper-case org': LINE.replace(ORG, ORG.toUpperCase()),
  'key one character short': LINE.replace(KEY, KEY.slice(1)),
  'key one character long': LINE.replace(KEY, `${KEY}0`),
  'key with a dash moved': LINE.replace(KEY, KEY.replace('-8a1d', '8-a1d')),
  IPv6: LINE.replace('10.0.0.1', '2001:db8::1'),
  'short IPv6': LINE.replace('10.0.0.1', '::1'),
  'longest IPv6 text (45 characters)': LINE.replace('10.0.0.1', 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255'),
  'address of 46 characters': LINE.replace('10.0.0.1', `${'1'.repeat(46)}`),
  'empty address': LINE.replace('10.0.0.1', ''),
  'IPv4 with a leading zero': LINE.replace('10.0.0.1', '10.0.0.01'),
  'an address seen again, then one that differs in its last byte only': [LINE, LINE, LINE.replace('10.0.0.1', '10.0.0.2'), LINE].join('\n'),
  'an address, then the same with a byte more': [LINE, LINE.replace('10.0.0.1', '10.0.0.10'), LINE, LINE.replace('10.0.0.1', '10.0.0.10')].join('\n'),
  'an address seen again in upper case': [1, 2].map(() => LINE.replace('10.0.0.1', '2001:DB8::A')).join('\n'),
  'outcome prefix': LINE.replace('outcome:ok', 'outcome:o'),
  'outcome with a suffix': LINE.replace('outcome:ok', 'outcome:okay'),
  'every outcome': OUTCOMES.map((outcome) => LINE.replace('outcome:ok', `outcome:${outcome}`)).join('\n'),
  'metric name prefix only': 'apikey.used:',
  'another metric': 'apikey.usedx:1|c',
  'NUL bytes': `${LINE}\0\n\0${LINE}`,
};

t.test('edge cases of the byte scanner: the same result as parsePacket', async (t) => {
  for (const [name, packet] of Object.entries(edgeCases)) {
    t.doesNotThrow(() => parseWithParity(packet), name);
  }
  t.strictSame(parseWithParity(edgeCases['CRLF between and after lines']).samples, [sample(), sample()], 'CRLF lines are usage lines');
  t.strictSame(parseWithParity(edgeCases['count with leading zeros']).samples, [sample()], 'leading zeros');
  t.strictSame(parseWithParity(edgeCases['upper-case key']).samples, [sample()], 'an upper-case key is the same key');
});

t.test('every truncation of a datagram of usage lines', async (t) => {
  const packet = [LINE, LINE.replace('10.0.0.1', '2001:db8::1'), LINE.replace(':1|', ':25|')].join('\n');
  for (let end = 0; end <= packet.length; end++) parseWithParity(packet.slice(0, end));
  t.pass(`${packet.length + 1} prefixes agree`);
});

t.test('a datagram that is part of a larger buffer is read only within its bounds', async (t) => {
  // The collector parses the body of a signed datagram as a view of the received bytes.
  const parse = createDatagramParser();
  const whole = Buffer.from(`${LINE}\n${LINE}\n${LINE}`, 'latin1');
  for (let end = 0; end <= whole.length; end++) {
    for (const start of [0, 1, LINE.length + 1]) {
      if (start > end) continue;
      const view = whole.subarray(start, end);
      const text = view.toString('latin1');
      const fromBytes: UsageSample[] = [];
      const result = parse(view, (s) => fromBytes.push(s));
      const expected = parseWithParity(text);
      if (JSON.stringify([result, fromBytes]) !== JSON.stringify([expected.result, expected.samples])) {
        t.fail(`bytes [${start}, ${end}) differ`);
        return;
      }
    }
  }
  t.pass('every view agrees with its own text');
});

t.test('ids that share a slot of the table are told apart', async (t) => {
  const parse = createDatagramParser();
  // The table hashes an id's last eight hex digits: these two differ only before them.
  const first = '00000000-0000-4000-8000-0000aaaaaaaa';
  const second = '11111111-1111-4111-8111-1111aaaaaaaa';
  const lines = [first, second, first, second.toUpperCase(), first].map((keyId) => encodeUsageLine(sample({ keyId })));
  const samples: UsageSample[] = [];
  parse(Buffer.from(lines.join('\n'), 'latin1'), (s) => samples.push(s));
  t.strictSame(
    samples.map((s) => s.keyId),
    [first, second, first, second, first],
  );
});

// Mutations of valid lines are what reach the fast path's every branch: a byte changed, dropped
// or doubled anywhere, from an alphabet of the characters that matter to the layout.
const ALPHABET = ['\n', '\r', '\0', '|', ':', ',', '#', '@', '-', '.', '0', '9', 'a', 'F', 'g', ' ', '\xc3', '\xff'];

function mutated(random: () => number, line: string): string {
  const at = Math.floor(random() * line.length);
  const char = ALPHABET[Math.floor(random() * ALPHABET.length)];
  switch (Math.floor(random() * 3)) {
    case 0:
      return line.slice(0, at) + char + line.slice(at + 1);
    case 1:
      return line.slice(0, at) + line.slice(at + 1);
    default:
      return line.slice(0, at) + char + line.slice(at);
  }
}

t.test('seeded differential: datagrams of valid and mutated usage lines', async (t) => {
  const random = seededRandom(20261201);
  const keys = Array.from({ length: 40 }, (_, i) => `${String(i).padStart(8, '0')}-1c3e-4a5b-8d7f-6e5d4c3b${String(i * 7).padStart(4, '0')}`);
  const ips = ['10.0.0.1', '192.168.100.200', '::1', '2001:db8::1', '255.255.255.255', '0.0.0.0'];
  let usage = 0;
  let invalid = 0;
  for (let round = 0; round < 3000; round++) {
    const lines = Array.from({ length: 1 + Math.floor(random() * 30) }, () => {
      const line = encodeUsageLine(
        sample({
          keyId: keys[Math.floor(random() * keys.length)],
          ip: ips[Math.floor(random() * ips.length)],
          outcome: OUTCOMES[Math.floor(random() * OUTCOMES.length)],
          count: 1 + Math.floor(random() * 20),
        }),
      );
      let out = line;
      while (random() < 0.3) out = mutated(random, out);
      return out;
    });
    for (const datagram of packDatagrams(lines)) {
      const { result } = parseWithParity(datagram);
      usage += result.usage;
      invalid += result.invalid;
    }
  }
  t.ok(usage > 10_000 && invalid > 1_000, `both valid and invalid lines reached (${usage} usage, ${invalid} invalid)`);
});

// The tables of strings already validated: InternTable directly, on small tables so that strings
// share slots and push each other out. `accept` counts its calls: a string found needs none.
function internIn(table: InternTable, value: string, before = 'xxxxxxxx,ip:', after = ',outcome:ok') {
  const packet = Buffer.from(`${before}${value}${after}`, 'latin1');
  const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  return table.intern(view, before.length, before.length + value.length, { packet, decoded: undefined });
}

function countingAccept(accept: (value: string) => boolean = () => true) {
  const calls = { count: 0 };
  const fn: Accept = (text, at, end) => {
    calls.count++;
    const value = text.packet.toString('latin1', at, end);
    return accept(value) ? value : undefined;
  };
  return { calls, fn };
}

t.test('an intern table: a string seen again is found, not validated again', async (t) => {
  const { calls, fn } = countingAccept();
  const table = new InternTable(16, 45, fn);
  for (let length = 1; length <= 45; length++) {
    const value = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ'.slice(0, length);
    t.equal(internIn(table, value), value);
    // Other bytes after the end: the last word is compared without them.
    t.equal(internIn(table, value, 'xxxxxxxx,ip:', ',outcome:forbidden'), value);
    t.equal(internIn(table, value), value);
  }
  t.equal(calls.count, 45, 'one validation per string');
});

t.test('an intern table tells apart strings that share a slot or differ in one byte', async (t) => {
  const { fn } = countingAccept();
  const table = new InternTable(1, 45, fn); // two slots: most strings share one
  const values = ['10.0.0.1', '10.0.0.2', '10.0.0.12', '10.0.0.13', '10.0.0.1', '::1', '::2', '2001:db8::1', '2001:db8::1'];
  for (let round = 0; round < 3; round++) {
    t.strictSame(
      values.map((value) => internIn(table, value)),
      values,
    );
  }
});

t.test('an intern table stays bounded: a flood of distinct strings is validated, never wrong', async (t) => {
  const { calls, fn } = countingAccept();
  const table = new InternTable(2, 45, fn); // four slots
  const random = seededRandom(13);
  const flood = Array.from({ length: 1000 }, () => `10.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}`);
  const distinct = [...new Set(flood)];
  for (const value of flood) if (internIn(table, value) !== value) t.fail(`${value} came back wrong`);
  calls.count = 0;
  for (const value of distinct) if (internIn(table, value) !== value) t.fail(`${value} came back wrong`);
  // At most four strings are held, so at most four of the distinct ones are found without validation.
  t.ok(calls.count >= distinct.length - 4, `${calls.count} of ${distinct.length} validated again`);
  t.equal(internIn(table, '10.0.0.1'), '10.0.0.1', 'a genuine address after the flood');
});

// The collector sizes its key and address tables by the pending-key cap. With 64 k slots for
// 100,000 keys, most keys were validated and made again at their next line; direct-mapped with
// 256 k slots, a third of them still were (docs/benchmarks.md §3d).
t.test('the key and address tables keep every key a collector holds at once', async (t) => {
  t.equal(tableSlotBits(0), 16, 'no fewer than 64 k slots');
  t.equal(tableSlotBits(100_000), 18, 'the default cap: 256 k slots, at least twice the keys');
  t.equal(tableSlotBits(1e9), 20, 'no more than 1 M slots');
  const tables = parserTables(100_000);
  t.strictSame([tables.keys.maxSlots, tables.ips.maxSlots, tables.orgs.maxSlots], [2 ** 18, 2 ** 18, 2 ** 8], 'addresses as many slots as ids');
  t.strictSame([tables.keys.slots, tables.ips.slots, tables.orgs.slots], [2 ** 12, 2 ** 12, 2 ** 8], 'each grows from 4 k');
  // The table hashes a string's first four and last eight bytes: random there, as in a real id;
  // addresses count up.
  const keys = Array.from({ length: 100_000 }, (_, i) => `3f0c6b7e-8a1d-4c2b-9e5f-${(i * 0x9e3779b1).toString(16).padStart(12, '0').slice(-12)}`);
  const addresses = Array.from({ length: 100_000 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
  const random = seededRandom(7);
  const octet = () => Math.floor(random() * 256);
  // Random ones too: those that differ only in their first octets differ only before the last eight bytes.
  const scattered = [...new Set(Array.from({ length: 100_000 }, () => `${1 + Math.floor(random() * 223)}.${octet()}.${octet()}.${octet()}`))];
  const validatedAgain = (bits: number, values: string[], maxLength: number) => {
    const { calls, fn } = countingAccept();
    const table = new InternTable(bits, maxLength, fn);
    for (const value of values) internIn(table, value);
    t.equal(table.slots, 2 ** bits, 'grown to its size, every string moved over');
    calls.count = 0;
    for (const value of values) internIn(table, value);
    return calls.count / values.length;
  };
  for (const [what, values, maxLength] of [
    ['keys', keys, 36],
    ['addresses counting up', addresses, 45],
    ['random addresses', scattered, 45],
  ] as const) {
    // A window of slots all taken is rare at a table well below half full, not impossible.
    const sized = validatedAgain(tableSlotBits(100_000), values, maxLength);
    t.ok(sized <= 0.0001, `sized for the cap, ${Math.round(sized * values.length)} of ${values.length} ${what} validated again at their second line`);
  }
});

t.test('an intern table finds every string while no more than a window of them share slots', async (t) => {
  const { calls, fn } = countingAccept();
  const table = new InternTable(4, 45, fn); // sixteen slots, a window's worth
  const values = Array.from({ length: 16 }, (_, i) => `192.0.2.${i * 13}`);
  for (const value of values) t.equal(internIn(table, value), value);
  calls.count = 0;
  for (let round = 0; round < 3; round++) for (const value of values) t.equal(internIn(table, value), value);
  t.equal(calls.count, 0, 'none validated again');
});

// Addresses that differ only in their first four bytes (their first octets) must not pile into one
// window, pushing out a genuine address of the same tail at every line.
t.test('an intern table spreads strings that differ only in their first bytes', async (t) => {
  const { calls, fn } = countingAccept();
  const table = new InternTable(16, 45, fn);
  const values = Array.from({ length: 124 }, (_, i) => `${100 + i}.168.1.100`);
  for (const value of values) internIn(table, value);
  calls.count = 0;
  for (const value of values) t.equal(internIn(table, value), value);
  t.equal(calls.count, 0, 'none validated again');
});

// A string under eight bytes got its slot from the bytes before it (not kept): it is left behind
// when the table grows, and found again, validated once more, when it comes back.
t.test('an intern table grows with what it holds, a short string left behind', async (t) => {
  const { calls, fn } = countingAccept();
  const table = new InternTable(14, 45, fn);
  const short = ['::1', '::2', '::a', '::ff', '::1:2'];
  for (const value of [...short, '10.0.0.1']) t.equal(internIn(table, value), value);
  // Up to half of the 4 k slots taken: no growth; the next string doubles the table.
  const many = Array.from({ length: 2048 - 1 - short.length }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
  for (const value of many) internIn(table, value);
  t.strictSame([table.slots, table.size], [2 ** 12, 2048], 'half full, not grown');
  internIn(table, '10.2.0.0');
  t.strictSame([table.slots, table.size], [2 ** 13, 2048 - short.length + 1], 'doubled, every string of 8 bytes or more moved over, the short ones left');
  calls.count = 0;
  t.equal(internIn(table, '10.0.0.1'), '10.0.0.1');
  for (const value of many) internIn(table, value);
  t.equal(calls.count, 0, 'the moved ones found');
  for (const value of short) t.equal(internIn(table, value), value);
  t.equal(calls.count, short.length, 'the short ones validated again');
  for (const value of short) t.equal(internIn(table, value), value);
  t.equal(calls.count, short.length, 'and kept');
});

// 192.100.100.100 … 192.255.100.100 differ only in bytes the home slot does not read: they share
// a window. A full window grows a table only once a quarter of it is taken, so a sender cannot
// double it to its size with them.
t.test('strings a sender makes share a window do not grow the table', async (t) => {
  const { fn } = countingAccept();
  const table = new InternTable(18, 45, fn);
  const values = Array.from({ length: 156 }, (_, i) => `192.${100 + i}.100.100`);
  for (let round = 0; round < 3; round++) for (const value of values) t.equal(internIn(table, value), value);
  t.equal(table.slots, 2 ** 12, 'still 4 k slots');
});

t.test('a new id is checked on its own bytes: the datagram is not decoded for it', async (t) => {
  const id = '3f0c6b7e-8a1d-4c2b-9e5f-0123456789ab';
  const packet = Buffer.from(`xxxxxxxx,key:${id},org:`, 'latin1');
  const text = { packet, decoded: undefined };
  t.equal(canonicalUuid(text, 13, 13 + id.length), id);
  t.equal(text.decoded, undefined, 'no text decoded');
  const upper = Buffer.from(`xxxxxxxx,key:${id.toUpperCase()},org:`, 'latin1');
  t.equal(canonicalUuid({ packet: upper, decoded: undefined }, 13, 13 + id.length), undefined, 'an upper-case id is left to the line parser');
});

t.test('an intern table does not remember what it refused', async (t) => {
  const { calls, fn } = countingAccept((value) => value !== 'bad' && value !== '');
  const table = new InternTable(4, 45, fn);
  t.equal(internIn(table, 'bad'), undefined);
  t.equal(internIn(table, 'bad'), undefined);
  t.equal(calls.count, 2, 'validated each time');
  t.equal(internIn(table, ''), undefined, 'an empty string is not found in an empty slot');
  t.equal(calls.count, 3);
});

// What the parser hands out is kept for as long as a key is pending or held (a database outage:
// hours). A slice of the datagram's text would keep the whole datagram alive: a sender padding
// each line of a new forged key to 30 KB made every key cost 30 KB, past the memory bound the
// pending-key cap promises. Each layout: the packed one (the byte parser's tables), tags in
// another order (the line parser), and an address rewritten to its canonical form.
const PADDED_LAYOUTS: Record<string, (key: string, org: string, i: number) => string> = {
  packed: (key, org, i) => `apikey.used:1|c|#key:${key},org:${org},ip:10.${i >> 8}.${i & 255}.1,outcome:ok`,
  'tags reordered': (key, org, i) => `apikey.used:1|c|#org:${org},ip:10.${i >> 8}.${i & 255}.1,key:${key},outcome:ok`,
  'upper-case ids': (key, org, i) => `apikey.used:1|c|#key:${key.toUpperCase()},org:${org.toUpperCase()},ip:10.${i >> 8}.${i & 255}.1,outcome:ok`,
  'IPv6 address': (key, org, i) => `apikey.used:1|c|#key:${key},org:${org},ip:2001:db8:0:0:0:0:${i.toString(16)}:1,outcome:ok`,
};

for (const [layout, line] of Object.entries(PADDED_LAYOUTS)) {
  t.test(`ids and addresses do not keep their datagram alive (${layout})`, async (t) => {
    const parse = createDatagramParser();
    const padding = `\n#${'x'.repeat(30_000)}`;
    const kept: string[][] = [];
    collectGarbage();
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < 1000; i++) {
      const result = parse(Buffer.from(line(randomUUID(), randomUUID(), i) + padding, 'latin1'), (s) => kept.push([s.keyId, s.orgId, s.ip]));
      if (result.usage !== 1) t.fail(`datagram ${i}: ${JSON.stringify(result)}`);
    }
    collectGarbage();
    const perSample = (process.memoryUsage().heapUsed - before) / kept.length;
    t.equal(kept.length, 1000);
    t.ok(perSample < 2_000, `${Math.round(perSample)} B kept per sample (its datagram: 30 KB)`);
  });
}
