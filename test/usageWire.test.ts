import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import fc from 'fast-check';
import t from 'tap';
import {
  MAX_DATAGRAM_BYTES,
  MAX_LINE_COUNT,
  OUTCOMES,
  PROVEN_OUTCOMES,
  USAGE_METRIC,
  encodeUsageLine,
  isProvenOutcome,
  packDatagrams,
  parsePacket,
  type PacketResult,
  type UsageSample,
} from '../shared/usageWire';
import { stubRandom } from './helpers/fixedRandom';
import { parseWithParity } from './helpers/parseParity';

const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const OTHER_KEY = 'c8e1a7d2-5b34-4f60-a9de-17b2c3d4e5f6';
const TAGS = `key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function sample(fields: Partial<UsageSample> = {}): UsageSample {
  return { keyId: KEY, orgId: ORG, ip: '10.0.0.1', outcome: 'ok', count: 1, ...fields };
}

// Every packet parsed here is also parsed from its bytes by the collector's parser, which must agree.
const parse = parseWithParity;
// A rated line's fraction rounds up when the draw is below it: here only past one half.
stubRandom(t, () => 0.5);

interface Case {
  name: string;
  packet: string;
  samples?: UsageSample[];
  other?: number;
  invalid?: number;
}

const cases: Case[] = [
  { name: 'DogStatsD usage line', packet: `apikey.used:1|c|#${TAGS}`, samples: [sample()] },
  { name: 'count above one', packet: `apikey.used:5|c|#${TAGS}`, samples: [sample({ count: 5 })] },
  { name: 'rate scales the count', packet: `apikey.used:3|c|@0.5|#${TAGS}`, samples: [sample({ count: 6 })] },
  { name: 'rate 0.1', packet: `apikey.used:1|c|@0.1|#${TAGS}`, samples: [sample({ count: 10 })] },
  { name: 'scaled count is rounded (down: the fraction is below the draw)', packet: `apikey.used:1|c|@0.3|#${TAGS}`, samples: [sample({ count: 3 })] },
  { name: 'explicit rate 1', packet: `apikey.used:2|c|@1|#${TAGS}`, samples: [sample({ count: 2 })] },
  { name: 'fractional value is rounded', packet: `apikey.used:2.6|c|#${TAGS}`, samples: [sample({ count: 3 })] },
  { name: 'exponent value', packet: `apikey.used:1e2|c|#${TAGS}`, samples: [sample({ count: 100 })] },
  { name: 'leading-dot value with rate', packet: `apikey.used:.5|c|@0.5|#${TAGS}`, samples: [sample({ count: 1 })] },
  { name: 'largest count (MAX_LINE_COUNT)', packet: `apikey.used:1000000|c|#${TAGS}`, samples: [sample({ count: 1e6 })] },
  {
    name: 'tags in any order',
    packet: `apikey.used:1|c|#outcome:revoked,ip:10.0.0.1,org:${ORG},key:${KEY}`,
    samples: [sample({ outcome: 'revoked' })],
  },
  {
    name: 'unknown global tags are ignored',
    packet: `apikey.used:1|c|#env:prod,${TAGS},region:eu-west-1,keyring:x,ipv:6`,
    samples: [sample()],
  },
  { name: 'valueless tags are ignored', packet: `apikey.used:1|c|#canary,${TAGS},key`, samples: [sample()] },
  { name: 'IPv6 loopback', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:::1,outcome:ok`, samples: [sample({ ip: '::1' })] },
  {
    name: 'IPv6 link-local without zone',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:fe80::1,outcome:ok`,
    samples: [sample({ ip: 'fe80::1' })],
  },
  {
    // Kept as written, every such client's network was ::/64, and none of them raised key.new_ip.
    name: 'IPv4-mapped IPv6, as the IPv4 address it maps',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:::ffff:10.0.0.1,outcome:ok`,
    samples: [sample({ ip: '10.0.0.1' })],
  },
  {
    name: 'IPv4-mapped IPv6 in hex and upper case',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:::FFFF:c633:6409,outcome:ok`,
    samples: [sample({ ip: '198.51.100.9' })],
  },
  {
    // The byte parser's second line finds the address in its table, and must not give it as written.
    name: 'a rewritten address, twice',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:2001:DB8::A,outcome:ok\napikey.used:1|c|#key:${KEY},org:${ORG},ip:2001:DB8::A,outcome:ok`,
    samples: [sample({ ip: '2001:db8::a' }), sample({ ip: '2001:db8::a' })],
  },
  {
    name: 'IPv6 spelled out, in its canonical form',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:2001:0DB8:0:0:0:0:0:0001,outcome:ok`,
    samples: [sample({ ip: '2001:db8::1' })],
  },
  {
    name: 'Influx tags in the name',
    packet: `apikey.used,key=${KEY},org=${ORG},ip=10.0.0.1,outcome=expired:1|c`,
    samples: [sample({ outcome: 'expired' })],
  },
  {
    name: 'Influx tags with an IPv6 value',
    packet: `apikey.used,key=${KEY},org=${ORG},ip=2001:db8::1,outcome=ok:4|c`,
    samples: [sample({ ip: '2001:db8::1', count: 4 })],
  },
  {
    name: 'Influx and DogStatsD tags merge',
    packet: `apikey.used,key=${KEY},org=${ORG}:1|c|#ip:192.168.1.20,outcome:forbidden`,
    samples: [sample({ ip: '192.168.1.20', outcome: 'forbidden' })],
  },
  {
    name: 'the same tag twice with the same value',
    packet: `apikey.used,key=${KEY}:1|c|#${TAGS},key:${KEY}`,
    samples: [sample()],
  },
  { name: 'timestamp field (DogStatsD v1.3)', packet: `apikey.used:1|c|#${TAGS}|T1700000000`, samples: [sample({ timestamp: 1_700_000_000_000 })] },
  { name: 'timestamp before the tags', packet: `apikey.used:2|c|T1700000000|#${TAGS}`, samples: [sample({ count: 2, timestamp: 1_700_000_000_000 })] },
  { name: 'timestamp 0', packet: `apikey.used:1|c|#${TAGS}|T0`, samples: [sample({ timestamp: 0 })] },
  { name: 'packed values (DogStatsD v1.1)', packet: `apikey.used:1:2:3|c|#${TAGS}`, samples: [sample({ count: 6 })] },
  { name: 'packed values with a rate', packet: `apikey.used:1:2|c|@0.5|#${TAGS}`, samples: [sample({ count: 6 })] },
  { name: 'packed values and a timestamp', packet: `apikey.used:1:1|c|#${TAGS}|T1700000000`, samples: [sample({ count: 2, timestamp: 1_700_000_000_000 })] },
  { name: 'packed fractional values are summed, then rounded', packet: `apikey.used:0.5:0.5:0.6|c|#${TAGS}`, samples: [sample({ count: 2 })] },
  {
    name: 'upper-case ids are read as lower case',
    packet: `apikey.used:1|c|#key:${KEY.toUpperCase()},org:${ORG.toUpperCase()},ip:10.0.0.1,outcome:ok`,
    samples: [sample()],
  },
  { name: 'mixed-case key id', packet: `apikey.used:1|c|#key:${KEY.replace('f0c', 'F0C')},org:${ORG},ip:10.0.0.1,outcome:ok`, samples: [sample()] },
  { name: 'upper-case ids in Influx tags', packet: `apikey.used,key=${KEY.toUpperCase()},org=${ORG}:1|c|#ip:10.0.0.1,outcome:ok`, samples: [sample()] },
  {
    name: 'the same id twice in different case',
    packet: `apikey.used,key=${KEY.toUpperCase()}:1|c|#${TAGS}`,
    samples: [sample()],
  },
  {
    name: 'Telegraf statsd output (Influx tags, no DogStatsD tags)',
    packet: `apikey.used,ip=10.0.0.1,key=${KEY},org=${ORG},outcome=ok:3|c\nhttp_requests,host=a:1|c`,
    samples: [sample({ count: 3 })],
    other: 1,
  },
  {
    name: 'DogStatsD with container, cardinality and timestamp fields',
    packet: `apikey.used:1|c|@1|#${TAGS},env:prod|c:ci-1234|card:low|T1700000000`,
    samples: [sample({ timestamp: 1_700_000_000_000 })],
  },
  { name: 'packed counter of another metric', packet: 'requests:1:2:3|c', other: 1 },
  { name: 'packed timer and gauge', packet: 'latency:1.5:2:30|ms|@0.5\nqueue.depth:3:-1|g', other: 2 },
  { name: 'container field', packet: `apikey.used:1|c|#${TAGS}|c:83c0a99c0a54c0c187f4`, samples: [sample()] },
  { name: 'rate after tags', packet: `apikey.used:1|c|#${TAGS}|@0.25`, samples: [sample({ count: 4 })] },
  { name: 'unknown letter-keyed fields', packet: `apikey.used:1|c|e:it-false,abc|card:high|#${TAGS}`, samples: [sample()] },
  {
    name: 'two usage lines in order',
    packet: `apikey.used:1|c|#${TAGS}\napikey.used:2|c|#key:${OTHER_KEY},org:${ORG},ip:10.0.0.2,outcome:bad_secret`,
    samples: [sample(), sample({ keyId: OTHER_KEY, ip: '10.0.0.2', outcome: 'bad_secret', count: 2 })],
  },
  {
    name: 'CRLF line endings',
    packet: `apikey.used:1|c|#${TAGS}\r\nrequests:1|c\r\n`,
    samples: [sample()],
    other: 1,
  },
  { name: 'empty lines are skipped', packet: `\n\n\r\napikey.used:1|c|#${TAGS}\n\n`, samples: [sample()] },
  { name: 'empty packet', packet: '' },
  { name: 'only newlines', packet: '\n\r\n\n' },
  { name: 'plain counter', packet: 'requests:1|c', other: 1 },
  { name: 'negative counter', packet: 'balance:-1|c', other: 1 },
  { name: 'gauge', packet: 'queue.depth:42|g', other: 1 },
  { name: 'signed gauge deltas', packet: 'queue.depth:+3|g\nqueue.depth:-3|g', other: 2 },
  { name: 'timer with rate', packet: 'latency:12.5|ms|@0.1', other: 1 },
  { name: 'histogram and distribution', packet: 'size:512|h\nsize:512|d', other: 2 },
  { name: 'set with a word member', packet: 'users:alice|s', other: 1 },
  { name: 'set with an IPv6 member', packet: 'clients:::1|s', other: 1 },
  { name: 'other metric with DogStatsD tags', packet: 'http.requests:1|c|#route:/v1/keys,status:200', other: 1 },
  { name: 'other metric with Influx tags', packet: 'cpu,host=a,core=0:0.5|g', other: 1 },
  { name: 'name extending the usage metric', packet: `apikey.used.total:1|c|#${TAGS}`, other: 1 },
  { name: 'name prefixing the usage metric', packet: `apikey.use:1|c|#${TAGS}`, other: 1 },
  {
    name: 'mixed packet',
    packet: `apikey.used:1|c|#${TAGS}\nrequests:1|c\nnot a line\napikey.used:0|c|#${TAGS}\nmem:1|g`,
    samples: [sample()],
    other: 2,
    invalid: 2,
  },
];

t.test('parsePacket: table of packets', async (t) => {
  for (const c of cases) {
    const { result, samples } = parse(c.packet);
    const expected = c.samples ?? [];
    t.strictSame(samples, expected, `${c.name}: samples`);
    t.match(
      result,
      { usage: expected.length, other: c.other ?? 0, invalid: c.invalid ?? 0, lines: expected.length + (c.other ?? 0) + (c.invalid ?? 0) },
      `${c.name}: counts`,
    );
    if (!c.invalid) t.equal(result.firstError, undefined, `${c.name}: no error`);
  }
});

// Each is one kind of bad input; the reason pattern proves it was refused for that cause.
const rejects: Array<{ name: string; packet: string; reason: RegExp }> = [
  { name: 'value NaN', packet: `apikey.used:NaN|c|#${TAGS}`, reason: /^bad value "NaN"/ },
  { name: 'value Infinity', packet: `apikey.used:Infinity|c|#${TAGS}`, reason: /^bad value "Infinity"/ },
  { name: 'value -1', packet: `apikey.used:-1|c|#${TAGS}`, reason: /^bad value "-1"/ },
  { name: 'value 0', packet: `apikey.used:0|c|#${TAGS}`, reason: /^bad value "0"/ },
  { name: 'value rounding to 0', packet: `apikey.used:0.4|c|#${TAGS}`, reason: /^count 0 out of range/ },
  { name: 'value 1e12', packet: `apikey.used:1e12|c|#${TAGS}`, reason: /^count 1000000000000 out of range/ },
  { name: 'value just above MAX_LINE_COUNT', packet: `apikey.used:1000001|c|#${TAGS}`, reason: /out of range/ },
  { name: 'value 1e9, forged to flood a counter', packet: `apikey.used:1000000000|c|#${TAGS}`, reason: /out of range/ },
  { name: 'rate pushing the count past MAX_LINE_COUNT', packet: `apikey.used:2|c|@0.000001|#${TAGS}`, reason: /out of range/ },
  { name: 'value overflowing a double', packet: `apikey.used:1e999|c|#${TAGS}`, reason: /^bad value "1e999"/ },
  { name: 'hex value', packet: `apikey.used:0x10|c|#${TAGS}`, reason: /^bad value "0x10"/ },
  { name: 'value with a trailing letter', packet: `apikey.used:1a|c|#${TAGS}`, reason: /^bad value "1a"/ },
  { name: 'lone sign value', packet: `apikey.used:-|c|#${TAGS}`, reason: /^bad value "-"/ },
  { name: 'exponent without digits', packet: `apikey.used:1e|c|#${TAGS}`, reason: /^bad value "1e"/ },
  { name: 'empty value', packet: `apikey.used:|c|#${TAGS}`, reason: /^empty value/ },
  { name: 'space before the value', packet: `apikey.used: 1|c|#${TAGS}`, reason: /^control character or space/ },
  { name: 'rate 0', packet: `apikey.used:1|c|@0|#${TAGS}`, reason: /^bad rate "@0"/ },
  { name: 'rate 2', packet: `apikey.used:1|c|@2|#${TAGS}`, reason: /^bad rate "@2"/ },
  { name: 'rate abc', packet: `apikey.used:1|c|@abc|#${TAGS}`, reason: /^bad rate "@abc"/ },
  { name: 'negative rate', packet: `apikey.used:1|c|@-0.5|#${TAGS}`, reason: /^bad rate/ },
  { name: 'empty rate', packet: `apikey.used:1|c|@|#${TAGS}`, reason: /^bad rate "@"/ },
  { name: 'two rates', packet: `apikey.used:1|c|@0.5|@0.5|#${TAGS}`, reason: /^bad rate/ },
  { name: 'missing key', packet: `apikey.used:1|c|#org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^missing tag "key"/ },
  { name: 'valueless key', packet: `apikey.used:1|c|#key,org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^missing tag "key"/ },
  { name: 'missing org', packet: `apikey.used:1|c|#key:${KEY},ip:10.0.0.1,outcome:ok`, reason: /^missing tag "org"/ },
  { name: 'missing ip', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},outcome:ok`, reason: /^missing tag "ip"/ },
  { name: 'missing outcome', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1`, reason: /^missing tag "outcome"/ },
  { name: 'no tags at all', packet: 'apikey.used:1|c', reason: /^missing tag "key"/ },
  { name: 'non-uuid key', packet: `apikey.used:1|c|#key:abc,org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^bad key "abc"/ },
  {
    name: 'upper-case key with a non-hex letter',
    packet: `apikey.used:1|c|#key:${KEY.toUpperCase().replace('F', 'G')},org:${ORG},ip:10.0.0.1,outcome:ok`,
    reason: /^bad key/,
  },
  { name: 'upper-case ids that differ', packet: `apikey.used,key=${OTHER_KEY.toUpperCase()}:1|c|#${TAGS}`, reason: /^conflicting "key" tags/ },
  { name: 'packed value 0', packet: `apikey.used:1:0|c|#${TAGS}`, reason: /^bad value "1:0"/ },
  { name: 'packed negative value', packet: `apikey.used:3:-1|c|#${TAGS}`, reason: /^bad value "3:-1"/ },
  { name: 'empty packed value', packet: `apikey.used:1::2|c|#${TAGS}`, reason: /^bad value "1::2"/ },
  { name: 'trailing packed separator', packet: `apikey.used:1:|c|#${TAGS}`, reason: /^bad value "1:"/ },
  { name: 'packed values above MAX_LINE_COUNT together', packet: `apikey.used:600000:600000|c|#${TAGS}`, reason: /^count 1200000 out of range/ },
  { name: 'packed non-number in another metric', packet: 'requests:1:x|c', reason: /^bad value "1:x"/ },
  { name: 'two timestamps', packet: `apikey.used:1|c|#${TAGS}|T1700000000|T1700000001`, reason: /^bad timestamp "T1700000001"/ },
  { name: 'empty timestamp', packet: `apikey.used:1|c|#${TAGS}|T`, reason: /^bad timestamp "T"/ },
  { name: 'timestamp with 12 digits', packet: `apikey.used:1|c|#${TAGS}|T170000000000`, reason: /^bad timestamp/ },
  { name: 'timestamp in milliseconds with a fraction', packet: `apikey.used:1|c|#${TAGS}|T1700000000.5`, reason: /^bad timestamp/ },
  { name: 'uuid without hyphens', packet: `apikey.used:1|c|#key:${KEY.replace(/-/g, '')},org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^bad key/ },
  { name: 'braced uuid', packet: `apikey.used:1|c|#key:{${KEY}},org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^bad key/ },
  { name: 'uuid with a trailing character', packet: `apikey.used:1|c|#key:${KEY}a,org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^bad key "3f0c6b7e-.*a"/ },
  { name: 'truncated uuid at the end', packet: `apikey.used:1|c|#org:${ORG},ip:10.0.0.1,outcome:ok,key:${KEY.slice(0, 30)}`, reason: /^bad key/ },
  { name: 'non-uuid org', packet: `apikey.used:1|c|#key:${KEY},org:acme,ip:10.0.0.1,outcome:ok`, reason: /^bad org "acme"/ },
  { name: 'non-uuid key in Influx tags', packet: `apikey.used,key=nope:1|c|#org:${ORG},ip:10.0.0.1,outcome:ok`, reason: /^bad key "nope"/ },
  { name: 'unknown outcome', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:maybe`, reason: /^unknown outcome "maybe"/ },
  { name: 'uppercase outcome', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:OK`, reason: /^unknown outcome "OK"/ },
  { name: 'ip abc', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:abc,outcome:ok`, reason: /^bad ip "abc"/ },
  { name: 'ip 999.1.1.1', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:999.1.1.1,outcome:ok`, reason: /^bad ip "999.1.1.1"/ },
  { name: 'ip with a leading zero', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.01,outcome:ok`, reason: /^bad ip/ },
  { name: 'ip with three octets', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.1,outcome:ok`, reason: /^bad ip/ },
  { name: 'empty ip', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:,outcome:ok`, reason: /^bad ip ""/ },
  { name: 'bracketed IPv6', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:[::1],outcome:ok`, reason: /^bad ip/ },
  { name: 'IPv6 with a zone id', packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:fe80::1%eth0,outcome:ok`, reason: /^bad ip/ },
  {
    name: 'tag injection via newline',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1\nkey:${OTHER_KEY},outcome:ok`,
    reason: /^missing tag "outcome"/,
  },
  {
    name: 'tag injection via comma',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,key:${OTHER_KEY},outcome:ok`,
    reason: /^conflicting "key" tags/,
  },
  {
    name: 'tag injection via a second tag field',
    packet: `apikey.used:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1|#key:${OTHER_KEY},outcome:ok`,
    reason: /^conflicting "key" tags/,
  },
  {
    name: 'Influx and DogStatsD tags disagree',
    packet: `apikey.used,key=${OTHER_KEY}:1|c|#${TAGS}`,
    reason: /^conflicting "key" tags/,
  },
  { name: 'NUL byte in the name', packet: `apikey.used\0:1|c|#${TAGS}`, reason: /^control character or space in "apikey.used\\u0000/ },
  { name: 'NUL byte in another name', packet: 'req\0uests:1|c', reason: /^control character or space/ },
  { name: 'space in the name', packet: 'api key:1|c', reason: /^control character or space/ },
  { name: 'empty name', packet: ':1|c', reason: /^empty name/ },
  { name: 'empty name before Influx tags', packet: `,key=${KEY}:1|c`, reason: /^empty name/ },
  { name: 'missing colon', packet: `apikey.used|c|#${TAGS}`, reason: /^missing ':'/ },
  { name: 'missing pipe', packet: 'apikey.used:1', reason: /^missing '\|'/ },
  { name: 'missing type', packet: `apikey.used:1||#${TAGS}`, reason: /^unknown type ""/ },
  { name: 'missing type at the end', packet: 'requests:1|', reason: /^unknown type ""/ },
  { name: 'unknown type x', packet: 'requests:1|x', reason: /^unknown type "x"/ },
  { name: 'uppercase type', packet: 'requests:1|C', reason: /^unknown type "C"/ },
  { name: 'usage line as gauge', packet: `apikey.used:1|g|#${TAGS}`, reason: /^apikey\.used must be a counter, got type "g"/ },
  { name: 'usage line as set', packet: `apikey.used:1|s|#${TAGS}`, reason: /must be a counter, got type "s"/ },
  { name: 'usage line as timer', packet: `apikey.used:1|ms|#${TAGS}`, reason: /must be a counter, got type "ms"/ },
  { name: 'empty field', packet: `apikey.used:1|c||#${TAGS}`, reason: /^empty field/ },
  { name: 'trailing pipe', packet: `apikey.used:1|c|#${TAGS}|`, reason: /^empty field/ },
  { name: 'field starting with a digit', packet: 'requests:1|c|1abc', reason: /^unknown field "1abc"/ },
  { name: 'field starting with a symbol', packet: 'requests:1|c|$x', reason: /^unknown field "\$x"/ },
  { name: 'bad timestamp', packet: 'requests:1|c|Tsoon', reason: /^bad timestamp "Tsoon"/ },
  { name: 'other metric with a non-numeric value', packet: 'requests:abc|c', reason: /^bad value "abc"/ },
  { name: 'other metric with a lone sign', packet: 'requests:-|c', reason: /^bad value "-"/ },
  { name: 'other gauge NaN', packet: 'queue.depth:NaN|g', reason: /^bad value "NaN"/ },
  { name: 'other metric with rate 0', packet: 'requests:1|c|@0', reason: /^bad rate "@0"/ },
  { name: 'whitespace-only line', packet: ' ', reason: /^control character or space/ },
];

t.test('parsePacket: rejected lines', async (t) => {
  for (const r of rejects) {
    const { result, samples } = parse(r.packet);
    t.strictSame(samples, [], `${r.name}: no sample`);
    t.ok(result.lines >= 1 && result.invalid === result.lines, `${r.name}: every line invalid (${JSON.stringify(result)})`);
    t.match(result.firstError, r.reason, `${r.name}: reason`);
  }
});

t.test('parsePacket: onOther receives exactly the other valid lines, for the relay', async (t) => {
  const others: string[] = [];
  const samples: UsageSample[] = [];
  const packet = `requests:1|c\r\napikey.used:1|c|#${TAGS}\nnot a line\nlatency:1:2|ms|#route:/x\n\nusers:alice|s`;
  const result = parsePacket(
    packet,
    (s) => samples.push(s),
    (line) => others.push(line),
  );
  t.strictSame(others, ['requests:1|c', 'latency:1:2|ms|#route:/x', 'users:alice|s'], 'in order, without line terminators');
  t.strictSame(samples, [sample()]);
  t.match(result, { lines: 5, usage: 1, other: 3, invalid: 1 });
});

t.test('parsePacket: firstError is the first reason and echoes at most ~60 chars', async (t) => {
  const long = 'x'.repeat(5000);
  const { result } = parse(`${long}\napikey.used:NaN|c|#${TAGS}`);
  t.equal(result.invalid, 2);
  t.match(result.firstError, /^missing '\|' in "x{60}"…$/);

  const longIp = parse(`apikey.used:1|c|#key:${KEY},org:${ORG},ip:${'9'.repeat(1000)},outcome:ok`).result;
  t.match(longIp.firstError, /^bad ip "9{60}"…$/);
});

const ROUND_TRIP_IPS = ['10.0.0.1', '0.0.0.0', '255.255.255.255', '::1', '2001:db8::1', 'fe80::1'];

t.test('encodeUsageLine', async (t) => {
  t.equal(encodeUsageLine(sample({ count: 3 })), `apikey.used:3|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`);

  t.test('round-trips every ip form and outcome', async (t) => {
    for (const ip of ROUND_TRIP_IPS) {
      for (const outcome of OUTCOMES) {
        for (const count of [1, 7, MAX_LINE_COUNT]) {
          const original = sample({ ip, outcome, count });
          t.strictSame(parse(encodeUsageLine(original)).samples, [original], `${ip} ${outcome} ${count}`);
        }
      }
    }
  });

  // The API takes the ip from the request; a hostile one must not forge a tag or a line.
  const hostileIps = [
    `10.0.0.1,key:${OTHER_KEY}`,
    `10.0.0.1|#key:${OTHER_KEY}`,
    `10.0.0.1\n${USAGE_METRIC}:1000|c|#key:${OTHER_KEY},org:${ORG},ip:10.0.0.1,outcome:ok`,
    '10.0.0.1 #x',
  ];
  t.test('neutralises StatsD delimiters in values', async (t) => {
    for (const ip of hostileIps) {
      const line = encodeUsageLine(sample({ ip }));
      t.notOk(/[\n\r |#]/.test(line.slice(line.indexOf('|#') + 2)), `one tag field: ${JSON.stringify(line)}`);
      t.equal(line.split(',').length, 4, `four tags: ${JSON.stringify(line)}`);
      const { result, samples } = parse(line);
      t.strictSame(samples, [], 'no sample');
      t.match(result, { lines: 1, invalid: 1, firstError: /^bad ip/ });
    }
  });
});

t.test('packDatagrams', async (t) => {
  const lines = Array.from({ length: 500 }, (_, i) =>
    i % 50 === 7
      ? `labels,name=${'é'.repeat(i % 300)}:1|c` // multi-byte: bytes, not chars, must be budgeted
      : encodeUsageLine(sample({ ip: `10.0.${i % 256}.${i % 7}`, count: i + 1, outcome: OUTCOMES[i % OUTCOMES.length] })),
  );
  const datagrams = packDatagrams(lines);
  t.equal(datagrams.join('\n'), lines.join('\n'), 'content and order preserved');
  for (const d of datagrams) t.ok(Buffer.byteLength(d) <= MAX_DATAGRAM_BYTES, `${Buffer.byteLength(d)} bytes`);
  // As few as possible: no datagram could have taken the next one's first line.
  for (let i = 0; i + 1 < datagrams.length; i++) {
    const nextFirst = datagrams[i + 1].split('\n')[0];
    t.ok(Buffer.byteLength(`${datagrams[i]}\n${nextFirst}`) > MAX_DATAGRAM_BYTES, `datagram ${i} is full`);
  }
  const usage = datagrams.reduce((sum, d) => sum + parse(d).result.usage, 0);
  t.equal(usage, 490, 'every usage line parses back');

  const table: Array<{ name: string; lines: string[]; maxBytes?: number; expected: string[] }> = [
    { name: 'nothing', lines: [], expected: [] },
    { name: 'one line', lines: ['a:1|c'], expected: ['a:1|c'] },
    { name: 'exact fit', lines: ['aaaa', 'bbbb'], maxBytes: 9, expected: ['aaaa\nbbbb'] },
    { name: 'one byte over', lines: ['aaaa', 'bbbbb'], maxBytes: 9, expected: ['aaaa', 'bbbbb'] },
    { name: 'greedy fill', lines: ['aaaa', 'bbbb', 'cccc'], maxBytes: 9, expected: ['aaaa\nbbbb', 'cccc'] },
    { name: 'oversize line alone', lines: ['a', 'x'.repeat(20), 'b', 'c'], maxBytes: 10, expected: ['a', 'x'.repeat(20), 'b\nc'] },
    { name: 'oversize multi-byte line alone', lines: ['a', 'é'.repeat(6), 'b'], maxBytes: 10, expected: ['a', 'é'.repeat(6), 'b'] },
    { name: 'default limit', lines: ['x'.repeat(1000), 'y'.repeat(431), 'z'], expected: [`${'x'.repeat(1000)}\n${'y'.repeat(431)}`, 'z'] },
  ];
  for (const c of table) t.strictSame(packDatagrams(c.lines, c.maxBytes), c.expected, c.name);

  t.throws(() => packDatagrams(['a'], 0), RangeError);
  t.throws(() => packDatagrams(['a'], 1.5), RangeError);
});

// The accounting the collector's metrics rely on, whatever the input.
function consistent(result: PacketResult, samples: UsageSample[]): boolean {
  return (
    result.lines === result.usage + result.other + result.invalid && result.usage === samples.length && result.invalid > 0 === (result.firstError !== undefined)
  );
}

t.test('parsePacket never throws', async (t) => {
  t.test('64 KiB of random bytes', async (t) => {
    for (let round = 0; round < 20; round++) {
      const bytes = randomBytes(64 * 1024);
      for (const encoding of ['utf8', 'latin1'] as const) {
        const { result, samples } = parse(bytes.toString(encoding));
        t.ok(consistent(result, samples), `${encoding}: ${JSON.stringify({ ...result, firstError: undefined })}`);
      }
    }
  });

  const hostile = {
    'newlines only': '\n'.repeat(65536),
    'tiny lines': 'a\n'.repeat(32768),
    'one huge line': 'x'.repeat(65536),
    pipes: '|'.repeat(65536),
    colons: ':'.repeat(65536),
    'endless fields': `a:1|c${'|c'.repeat(32000)}`,
    'endless tags': `apikey.used:1|c|#${'key:,'.repeat(13000)}`,
    NULs: '\0'.repeat(65536),
    'lone surrogates': '\ud800:1|c\n'.repeat(8000),
  };
  for (const [name, packet] of Object.entries(hostile)) {
    const { result, samples } = parse(packet);
    t.ok(consistent(result, samples) && result.usage === 0, name);
  }

  // Near-valid lines, some with a fragment spliced in, reach far deeper than
  // random bytes; whatever comes out as a sample must be a valid one.
  const fragments = ['\n', '\r', '\0', ' ', ':', '|', ',', '#', '=', '@', 'key:', `key:${OTHER_KEY}`, 'ip:::1', '|#', '|c'];
  const sometimes = <T>(arbitrary: fc.Arbitrary<T>) => fc.oneof({ arbitrary: fc.constant(null), weight: 3 }, { arbitrary, weight: 1 });
  const noiseTag = fc.constantFrom(
    `key:${OTHER_KEY}`,
    `key:${KEY.toUpperCase()}`,
    'key:',
    'key',
    'org:acme',
    'ip:999.1.1.1',
    'ip:',
    'outcome:nope',
    'env:prod',
  );
  const usageTags = fc.tuple(fc.constantFrom('ip:10.0.0.1', 'ip:::1', 'ip:2001:db8::1'), fc.constantFrom(...OUTCOMES));
  // All four usage tags plus some noise, shuffled, with at most one left out.
  const tagList = fc.tuple(usageTags, fc.array(noiseTag, { maxLength: 2 })).chain(([[ip, outcome], noise]) => {
    const all = [`key:${KEY}`, `org:${ORG}`, ip, `outcome:${outcome}`, ...noise];
    return fc.shuffledSubarray(all, { minLength: all.length - 1 });
  });
  const line = fc
    .record({
      name: fc.constantFrom(USAGE_METRIC, `${USAGE_METRIC},key=${KEY}`, `${USAGE_METRIC},ip=::1`, 'requests', '', 'api key'),
      value: fc.constantFrom('1', '3', '2.5', '.5', '1e3', '0', '-1', 'NaN', '1e9', '1e10', '', 'abc'),
      type: fc.constantFrom('c', 'c', 'c', 'g', 's', 'ms', 'x', ''),
      rate: sometimes(fc.constantFrom('@0.5', '@1', '@0.001', '@0', '@2', '@x')),
      tags: tagList,
      extra: sometimes(fc.constantFrom('T1700000000', 'c:abc', 'Tx', '1x', '')),
      splice: sometimes(fc.tuple(fc.nat(), fc.constantFrom(...fragments))),
    })
    .map(({ name, value, type, rate, tags, extra, splice }) => {
      const text = [`${name}:${value}|${type}`, rate, `#${tags.join(',')}`, extra].filter((f) => f !== null).join('|');
      if (splice === null) return text;
      const at = splice[0] % (text.length + 1);
      return text.slice(0, at) + splice[1] + text.slice(at);
    });
  t.test('near-valid lines', async (t) => {
    let emitted = 0;
    fc.assert(
      fc.property(fc.array(line, { minLength: 1, maxLength: 8 }), (lines) => {
        const { result, samples } = parse(lines.join('\n'));
        emitted += samples.length;
        return (
          consistent(result, samples) &&
          samples.every(
            (s) =>
              UUID.test(s.keyId) &&
              UUID.test(s.orgId) &&
              isIP(s.ip) !== 0 &&
              (OUTCOMES as readonly string[]).includes(s.outcome) &&
              Number.isSafeInteger(s.count) &&
              s.count >= 1 &&
              s.count <= MAX_LINE_COUNT,
          )
        );
      }),
      { numRuns: 5000 },
    );
    t.ok(emitted > 100, `the generator does reach valid samples (${emitted})`);
  });
});

t.test('ip validation agrees with node:net isIP', async (t) => {
  const ipLike = fc.oneof(
    fc.ipV4(),
    fc.ipV4Extended(), // octal, hex and short forms, which isIP refuses
    fc.ipV6(),
    fc.array(fc.constantFrom('0', '1', '2', '5', '9', '00', '25', '255', '256', '.', ':', 'f', '%'), { minLength: 1, maxLength: 12 }).map((a) => a.join('')),
  );
  fc.assert(
    fc.property(ipLike, (ip) => {
      const { result } = parse(`apikey.used:1|c|#key:${KEY},org:${ORG},ip:${ip},outcome:ok`);
      return (result.usage === 1) === (isIP(ip) !== 0 && !ip.includes('%'));
    }),
    { numRuns: 20000 },
  );
  t.pass('agrees on generated ip-like strings');
});

t.test('isProvenOutcome, the hot-path test, agrees with PROVEN_OUTCOMES, the documented list', async (t) => {
  for (const outcome of OUTCOMES) t.equal(isProvenOutcome(outcome), (PROVEN_OUTCOMES as readonly string[]).includes(outcome), outcome);
});
