// Property tests of the wire format (shared/usageWire.ts) against hostile input, complementing the
// tables in usageWire.test.ts with oracles: the number of lines, the exact count a value and rate
// must give, which ids and IPs may be accepted, line independence, and what encodeUsageLine can
// never be made to say. The live-socket counterpart is test/faults/hostileDatagrams.test.ts.
import { isIP } from 'node:net';
import fc from 'fast-check';
import t from 'tap';
import {
  MAX_DATAGRAM_BYTES,
  MAX_LINE_COUNT,
  OUTCOMES,
  USAGE_METRIC,
  encodeUsageLine,
  packDatagrams,
  parsePacket,
  type PacketResult,
  type UsageSample,
} from '../shared/usageWire';
import { canonicalIpv6 } from '../shared/ipv6Canonical';
import { stubRandom } from './helpers/fixedRandom';
import { parseWithParity } from './helpers/parseParity';
import { LONG } from './helpers/faults';

const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const OTHER = 'c8e1a7d2-5b34-4f60-a9de-17b2c3d4e5f6';
const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const RUNS = LONG ? 50_000 : 2_000;

// Every packet parsed here is also parsed from its bytes by the collector's parser, which must agree.
const parse = parseWithParity;
// What Math.random gives the parsers, which round a fractional count with it; the count
// properties draw it, so both the floor and the ceiling are reached.
let draw = 0.5;
stubRandom(t, () => draw);

/** A valid line's count for `scaled` uses: up iff the draw is below the fraction, within [1, MAX_LINE_COUNT]. */
function drawnCount(scaled: number): number {
  const whole = Math.floor(scaled);
  return Math.min(MAX_LINE_COUNT, Math.max(1, draw < scaled - whole ? whole + 1 : whole));
}
const drawArbitrary = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

/** The invariants every accepted sample must meet, whatever the input. */
function validSample(s: UsageSample): boolean {
  return (
    CANONICAL_UUID.test(s.keyId) &&
    CANONICAL_UUID.test(s.orgId) &&
    isIP(s.ip) !== 0 &&
    !s.ip.includes('%') &&
    (OUTCOMES as readonly string[]).includes(s.outcome) &&
    Number.isInteger(s.count) &&
    s.count >= 1 &&
    s.count <= MAX_LINE_COUNT
  );
}

/** Lines as the parser must see them: split on \n, a trailing \r dropped, empty ones skipped. */
function expectedLines(packet: string): number {
  return packet.split('\n').filter((line) => (line.endsWith('\r') ? line.slice(0, -1) : line).length > 0).length;
}

function holds(packet: string): boolean {
  const { result, samples } = parse(packet);
  return (
    result.lines === expectedLines(packet) &&
    result.lines === result.usage + result.other + result.invalid &&
    result.usage === samples.length &&
    result.invalid > 0 === (result.firstError !== undefined) &&
    // The echoed input is capped at 60 characters, ≤ 6 each once JSON-escaped: a bad line cannot flood a log.
    (result.firstError === undefined || result.firstError.length < 500) &&
    samples.every(validSample)
  );
}

const hostileChars = fc.constantFrom('\n', '\r', '\0', '|', ':', ',', '#', '@', '=', ' ', '\u2028', '\ud800', 'é', '\x7f');
const fragment = fc.oneof(
  fc.string({ maxLength: 30, unit: 'binary' }),
  hostileChars,
  fc.constantFrom(`${USAGE_METRIC}:1|c|#`, `key:${KEY}`, `org:${ORG}`, 'ip:10.0.0.1', 'ip:::1', 'outcome:ok', `key:${OTHER}`, '|@0.5', '|T1', '|c', ':1e9'),
);

t.test('any string or byte sequence: never throws, every line accounted for, every sample valid', async (t) => {
  fc.assert(fc.property(fc.string({ maxLength: 400, unit: 'binary' }), holds), { numRuns: RUNS });
  fc.assert(fc.property(fc.string({ maxLength: 400, unit: 'grapheme' }), holds), { numRuns: RUNS });
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => holds(Buffer.from(bytes).toString('latin1'))),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(fc.array(fragment, { maxLength: 40 }), (parts) => holds(parts.join(''))),
    { numRuns: RUNS * 2 },
  );
  t.pass(`${RUNS * 5} generated packets`);
});

const otherLine = fc.constantFrom('requests:1|c\n', 'cpu,host=a:0.5|g', 'users:alice|s\r\n', 'latency:1:2|ms|@0.5|#route:/x\n', 'q:-1|g|T1700000000');

t.test('relayed lines: onOther gets exactly the other lines, each one whole valid line that is not usage', async (t) => {
  let reached = 0;
  fc.assert(
    fc.property(fc.array(fc.oneof(fragment, otherLine), { maxLength: 40 }), (parts) => {
      const relayed: string[] = [];
      const result = parsePacket(
        parts.join(''),
        () => {},
        (line) => relayed.push(line),
      );
      reached += relayed.length;
      return (
        relayed.length === result.other &&
        relayed.every((line) => {
          const alone = parse(line).result;
          return !line.includes('\n') && !line.endsWith('\r') && alone.lines === 1 && alone.other === 1;
        })
      );
    }),
    { numRuns: RUNS * 2 },
  );
  t.ok(reached > RUNS / 20, `the generator reaches other lines (${reached})`);
});

// How fast they parse is the benchmarks' business (bench/), not a test's.
t.test('oversized packets up to 64 KiB: consistent', async (t) => {
  const big = fc.tuple(fc.array(fragment, { minLength: 1, maxLength: 20 }), fc.integer({ min: 1024, max: 65_536 })).map(([parts, size]) => {
    const unit = parts.join('') || 'x';
    return unit.repeat(Math.ceil(size / unit.length)).slice(0, size);
  });
  const runs = LONG ? 2_000 : 200;
  fc.assert(fc.property(big, holds), { numRuns: runs });
  t.pass(`${runs} packets of 1 to 64 KiB: every line accounted for, every sample valid`);
});

t.test('counts: huge, negative, NaN, Infinity values and rates give value / rate rounded by the draw, or nothing', async (t) => {
  const valueText = fc.oneof(
    fc.double({ noDefaultInfinity: false }).map(String),
    fc.integer({ min: -1e12, max: 1e12 }).map(String),
    fc.bigInt({ min: -(10n ** 40n), max: 10n ** 40n }).map(String),
    fc.constantFrom('NaN', 'Infinity', '-Infinity', '1e999', '-0', '0', '1e9', '1000000000', '1000000001', '0.5', '1.4999999', '9'.repeat(400)),
  );
  const rateText = fc.option(
    fc.oneof(fc.double({ noDefaultInfinity: false }).map(String), fc.constantFrom('0', '1', '0.5', '1e-300', 'NaN', 'Infinity', '-0.5', '2')),
    { nil: undefined },
  );
  let accepted = 0;
  fc.assert(
    fc.property(valueText, rateText, drawArbitrary, (value, rate, drawn) => {
      draw = drawn;
      const { result, samples } = parse(`${USAGE_METRIC}:${value}|c${rate === undefined ? '' : `|@${rate}`}|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`);
      const v = Number(value);
      const r = rate === undefined ? 1 : Number(rate);
      // The oracle: a finite positive decimal value, a rate in (0, 1], a nearest count in [1, MAX_LINE_COUNT].
      const decimal = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
      const nearest = Math.round(v / r);
      const ok =
        decimal.test(value) &&
        Number.isFinite(v) &&
        v > 0 &&
        (rate === undefined || (decimal.test(rate) && r > 0 && r <= 1)) &&
        nearest >= 1 &&
        nearest <= MAX_LINE_COUNT;
      if (ok) accepted += 1;
      return ok ? samples.length === 1 && samples[0].count === drawnCount(v / r) && result.invalid === 0 : samples.length === 0 && result.invalid === 1;
    }),
    { numRuns: RUNS * 5 },
  );
  t.ok(accepted > RUNS / 20, `the generator reaches accepted counts (${accepted})`);
});

t.test('ids: UUIDs in any case are accepted as lower case, forged forms never', async (t) => {
  const id = fc.oneof(
    fc.uuid(),
    fc.uuid().map((u) => u.toUpperCase()),
    fc.uuid().map((u) => u.replace(/[a-f]/g, (c) => (c > 'c' ? c.toUpperCase() : c))),
    fc.uuid().map((u) => u.replace(/-/g, '')),
    fc.uuid().map((u) => `{${u}}`),
    fc.uuid().map((u) => u.slice(1)),
    fc.uuid().map((u) => `${u}0`),
    fc.uuid().map((u) => ` ${u}`),
    fc.string({ maxLength: 40 }),
    fc.constantFrom('', KEY, `ku_${KEY.replace(/-/g, '')}_${'A'.repeat(43)}`),
  );
  fc.assert(
    fc.property(id, id, (key, org) => {
      const { samples } = parse(`${USAGE_METRIC}:1|c|#key:${key},org:${org},ip:10.0.0.1,outcome:ok`);
      const ok = CANONICAL_UUID.test(key.toLowerCase()) && CANONICAL_UUID.test(org.toLowerCase());
      return ok ? samples.length === 1 && samples[0].keyId === key.toLowerCase() && samples[0].orgId === org.toLowerCase() : samples.length === 0;
    }),
    { numRuns: RUNS * 5 },
  );
  t.pass('accepted iff both ids are UUIDs, whatever their case');
});

t.test('packed values: a usage line counts sum / rate rounded by the draw iff every value is a positive decimal', async (t) => {
  const valueText = fc.oneof(
    fc.integer({ min: -3, max: 400_000 }).map(String),
    fc.double({ min: -1, max: 1e6, noNaN: true }).map(String),
    fc.constantFrom('', 'NaN', '1e3', '.5', '0', '-0', 'x'),
  );
  const rateText = fc.option(fc.constantFrom('1', '0.5', '0.25', '0', '2'), { nil: undefined });
  let accepted = 0;
  fc.assert(
    fc.property(fc.array(valueText, { minLength: 1, maxLength: 6 }), rateText, drawArbitrary, (values, rate, drawn) => {
      draw = drawn;
      const { result, samples } = parse(
        `${USAGE_METRIC}:${values.join(':')}|c${rate === undefined ? '' : `|@${rate}`}|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`,
      );
      const decimal = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
      const r = rate === undefined ? 1 : Number(rate);
      const scaled = values.reduce((sum, v) => sum + Number(v), 0) / r;
      const nearest = Math.round(scaled);
      const ok = values.every((v) => decimal.test(v) && Number(v) > 0) && r > 0 && r <= 1 && nearest >= 1 && nearest <= MAX_LINE_COUNT;
      if (ok) accepted += 1;
      return ok ? samples.length === 1 && samples[0].count === drawnCount(scaled) : samples.length === 0 && result.invalid === 1;
    }),
    { numRuns: RUNS * 5 },
  );
  t.ok(accepted > RUNS / 20, `the generator reaches accepted counts (${accepted})`);
});

t.test('timestamps: |T digits become milliseconds on the sample, anything else voids the line', async (t) => {
  const field = fc.oneof(
    fc.integer({ min: 0, max: 99_999_999_999 }).map(String),
    fc.string({ maxLength: 14, unit: fc.constantFrom('0', '1', '9', '.', '-', '+', 'e', ' ', 'x') }),
  );
  fc.assert(
    fc.property(field, (digits) => {
      const { samples } = parse(`${USAGE_METRIC}:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok|T${digits}`);
      const ok = /^\d{1,11}$/.test(digits);
      return ok ? samples.length === 1 && samples[0].timestamp === Number(digits) * 1000 : samples.length === 0;
    }),
    { numRuns: RUNS * 5 },
  );
  const { samples } = parse(`${USAGE_METRIC}:1|c|#key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`);
  t.equal(samples[0].timestamp, undefined, 'no |T, no timestamp');
});

// How the collector keeps an address (the unit cases in usageWire.test.ts spell out examples).
const asKept = (ip: string) => (isIP(ip) === 6 ? canonicalIpv6(ip) : ip);

t.test('ip fields: accepted iff an IP address without a zone, IPv6 kept in its canonical form', async (t) => {
  const ip = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.ipV4Extended(),
    fc.domain(),
    fc.string({ maxLength: 45 }),
    fc.constantFrom('fe80::1%eth0', '[::1]', '::ffff:10.0.0.1', '0.0.0.0', '255.255.255.255', '256.0.0.1', '01.2.3.4', '1.2.3', '::'),
  );
  fc.assert(
    fc.property(ip, (value) => {
      const { samples } = parse(`${USAGE_METRIC}:1|c|#key:${KEY},org:${ORG},ip:${value},outcome:ok`);
      const clean = !/[\n\r|,#]/.test(value);
      const ok = clean && isIP(value) !== 0 && !value.includes('%');
      // A value holding a delimiter is not one ip field (it ends the tag, the field or the line):
      // whatever the parser makes of the rest, what it accepts is still a valid sample.
      if (!clean) return samples.every(validSample);
      return ok ? samples.length === 1 && samples[0].ip === asKept(value) : samples.length === 0;
    }),
    { numRuns: RUNS * 5 },
  );
  t.pass('accepted iff isIP and no zone id');
});

t.test('tag injection: encodeUsageLine always writes one line that parses back to the same key or to nothing', async (t) => {
  const hostile = fc.oneof(
    fc.string({ maxLength: 60, unit: 'binary' }),
    fc.constantFrom(
      `10.0.0.1,key:${OTHER}`,
      `10.0.0.1|#key:${OTHER}`,
      `10.0.0.1\n${USAGE_METRIC}:1000|c|#key:${OTHER},org:${ORG},ip:10.0.0.1,outcome:ok`,
      'ok,org:x',
      '1.2.3.4 #x',
      '\0',
    ),
    fc.ipV4(),
    fc.ipV6(),
  );
  const sample = fc.record({
    keyId: fc.oneof(fc.constant(KEY), fc.uuid(), hostile),
    orgId: fc.oneof(fc.constant(ORG), hostile),
    ip: hostile,
    outcome: fc.oneof(fc.constantFrom(...OUTCOMES), hostile),
    count: fc.integer({ min: 1, max: MAX_LINE_COUNT }),
  }) as fc.Arbitrary<UsageSample>;
  let roundTrips = 0;
  fc.assert(
    fc.property(sample, (s) => {
      const line = encodeUsageLine(s);
      if (line.includes('\n') || line.includes('\r')) return false;
      const { result, samples } = parse(line);
      if (result.lines !== 1 || samples.length > 1) return false;
      if (samples.length === 0) return result.invalid === 1;
      roundTrips += 1;
      // Accepted only when nothing had to be neutralised: the very sample that was encoded.
      return (
        samples[0].keyId === s.keyId &&
        samples[0].orgId === s.orgId &&
        samples[0].ip === asKept(s.ip) &&
        samples[0].outcome === s.outcome &&
        samples[0].count === s.count
      );
    }),
    { numRuns: RUNS * 5 },
  );
  t.ok(roundTrips > 0, `valid samples round-trip (${roundTrips})`);
});

t.test('line independence: a packet counts as the sum of its lines, whatever the neighbours hold', async (t) => {
  const line = fc.array(fragment, { maxLength: 12 }).map((parts) => parts.join('').replace(/[\n]/g, ''));
  fc.assert(
    fc.property(fc.array(line, { minLength: 1, maxLength: 10 }), (lines) => {
      const whole = parse(lines.join('\n'));
      const parts = lines.map((l) => parse(l));
      const sum = (f: (r: PacketResult) => number) => parts.reduce((acc, p) => acc + f(p.result), 0);
      return (
        whole.result.lines === sum((r) => r.lines) &&
        whole.result.usage === sum((r) => r.usage) &&
        whole.result.other === sum((r) => r.other) &&
        whole.result.invalid === sum((r) => r.invalid) &&
        JSON.stringify(whole.samples) === JSON.stringify(parts.flatMap((p) => p.samples))
      );
    }),
    { numRuns: RUNS * 2 },
  );
  t.pass('no state crosses a newline');
});

t.test('packDatagrams + parsePacket: any batch of valid samples arrives whole, in ≤ 1432-byte datagrams', async (t) => {
  const sample = fc.record({
    keyId: fc.uuid(),
    orgId: fc.uuid(),
    ip: fc.oneof(fc.ipV4(), fc.ipV6()),
    outcome: fc.constantFrom(...OUTCOMES),
    count: fc.integer({ min: 1, max: MAX_LINE_COUNT }),
  });
  fc.assert(
    fc.property(fc.array(sample, { maxLength: 300 }), (samples) => {
      const datagrams = packDatagrams(samples.map(encodeUsageLine));
      const back = datagrams.flatMap((d) => parse(d).samples);
      return (
        datagrams.every((d) => Buffer.byteLength(d) <= MAX_DATAGRAM_BYTES) &&
        JSON.stringify(back) === JSON.stringify(samples.map((s) => ({ ...s, ip: asKept(s.ip) })))
      );
    }),
    { numRuns: LONG ? 5_000 : 300 },
  );
  t.pass('round trip exact');
});
