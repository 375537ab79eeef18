import t from 'tap';
import { Aggregator, mergeBatches, DeltaCoalescer, emptyDelta } from '../collector/aggregator';
import { decodeDelta, writeLogLine } from '../collector/logDelta';
import { chunksWritten } from '../collector/copyBytes';
import { UsageRecorder, type DatagramSink } from '../api/usage/usageRecorder';
import { createDatagramParser } from '../shared/usageDatagram';
import { createLogger } from '../shared/logger';
import { PREVIOUS_SECRET_TAG, encodeUsageLine, parsePacket, type UsageSample } from '../shared/usageWire';
import { plainDelta } from './helpers/deltas';
import { parseWithParity } from './helpers/parseParity';

// A use of a key's previous secret (a rotation's grace period) travels tagged `secret:previous`
// from the API's recorder to the collector's aggregator, apart from the current secret's uses, and
// the aggregator keeps the newest such use and its address (a max-merge, as last used).

const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const TAGS = `key:${KEY},org:${ORG},ip:10.0.0.1,outcome:ok`;
const NOW = Date.UTC(2026, 11, 6, 10, 0, 0);

const sample = (fields: Partial<UsageSample> = {}): UsageSample => ({ keyId: KEY, orgId: ORG, ip: '10.0.0.1', outcome: 'ok', count: 1, ...fields });

t.test("a current secret's line is byte for byte what it was; a previous secret's ends with the tag", async (t) => {
  t.equal(encodeUsageLine(sample()), `apikey.used:1|c|#${TAGS}`);
  t.equal(encodeUsageLine(sample({ previousSecret: true })), `apikey.used:1|c|#${TAGS},${PREVIOUS_SECRET_TAG}`);
  t.equal(PREVIOUS_SECRET_TAG, 'secret:previous');
});

t.test('both parsers read the tag wherever it stands, and nothing else sets it', async (t) => {
  const previous = sample({ previousSecret: true });
  const cases: Array<[string, string, UsageSample[] | 'invalid']> = [
    ['after the outcome, as the API writes it', `apikey.used:1|c|#${TAGS},secret:previous`, [previous]],
    ['first', `apikey.used:1|c|#secret:previous,${TAGS}`, [previous]],
    ['between the ids', `apikey.used:1|c|#key:${KEY},secret:previous,org:${ORG},ip:10.0.0.1,outcome:ok`, [previous]],
    ['among unknown tags', `apikey.used:1|c|#env:prod,${TAGS},secret:previous,service:api`, [previous]],
    ['with a timestamp', `apikey.used:1|c|#${TAGS},secret:previous|T1700000000`, [{ ...previous, timestamp: 1_700_000_000_000 }]],
    ['as an Influx tag', `apikey.used,key=${KEY},org=${ORG},ip=10.0.0.1,outcome=ok,secret=previous:1|c`, [previous]],
    ['twice, the same', `apikey.used:1|c|#${TAGS},secret:previous,secret:previous`, [previous]],
    ['no tag: the current secret', `apikey.used:1|c|#${TAGS}`, [sample()]],
    ['another value means nothing', `apikey.used:1|c|#${TAGS},secret:current`, [sample()]],
    ['a longer name is another tag', `apikey.used:1|c|#${TAGS},secrets:previous,service:x,s:previous`, [sample()]],
    ['valueless', `apikey.used:1|c|#${TAGS},secret`, [sample()]],
    ['two values void the line', `apikey.used:1|c|#${TAGS},secret:previous,secret:current`, 'invalid'],
  ];
  for (const [name, packet, expected] of cases) {
    const { result, samples } = parseWithParity(packet);
    if (expected === 'invalid') t.match(result, { usage: 0, invalid: 1 }, name);
    else t.strictSame(samples, expected, name);
  }
});

t.test("a line with the tag leaves the byte parser's packed layout for the line parser, and comes out the same", async (t) => {
  const parse = createDatagramParser();
  const packet = Buffer.from([`apikey.used:2|c|#${TAGS}`, `apikey.used:3|c|#${TAGS},secret:previous`, `apikey.used:1|c|#${TAGS}`].join('\n'), 'latin1');
  const fromBytes: UsageSample[] = [];
  const fromText: UsageSample[] = [];
  t.match(
    parse(packet, (s) => fromBytes.push(s)),
    { lines: 3, usage: 3, invalid: 0 },
  );
  parsePacket(packet.toString('latin1'), (s) => fromText.push(s));
  t.strictSame(fromBytes, [sample({ count: 2 }), sample({ count: 3, previousSecret: true }), sample()]);
  t.strictSame(fromBytes, fromText);
});

t.test('the recorder coalesces previous-secret uses apart, and sends them tagged', async (t) => {
  const sent: string[] = [];
  const sink: DatagramSink = { send: (datagram, done) => (sent.push(datagram), done()), close: async () => {} };
  const recorder = new UsageRecorder({ sink, maxEntries: 100, drainIntervalMs: 1000, logger: createLogger({ level: 'silent', name: 'test' }) });
  recorder.record(KEY, ORG, '10.0.0.1', 'ok');
  recorder.record(KEY, ORG, '10.0.0.1', 'ok', true);
  recorder.record(KEY, ORG, '10.0.0.1', 'ok', true);
  recorder.record(KEY, ORG, '10.0.0.1', 'ok', false);
  t.equal(recorder.pendingEntries, 2);
  recorder.drain();
  t.strictSame(sent.join('\n').split('\n').sort(), [`apikey.used:2|c|#${TAGS}`, `apikey.used:2|c|#${TAGS},secret:previous`]);
  await recorder.stop();
});

t.test('the aggregator keeps the newest proven use of a previous secret and its address; failed attempts never set it', async (t) => {
  let now = NOW;
  const aggregator = new Aggregator({ maxKeys: 10, now: () => now });
  aggregator.add(sample({ ip: '192.0.2.1', previousSecret: true }));
  now += 10;
  aggregator.add(sample({ ip: '192.0.2.9' }));
  aggregator.add(sample({ ip: '198.51.100.7', outcome: 'bad_secret', previousSecret: true }));
  aggregator.add(sample({ ip: '192.0.2.2', outcome: 'forbidden', previousSecret: true }));
  now += 10;
  aggregator.add(sample({ ip: '192.0.2.3', outcome: 'bad_secret', previousSecret: true }));
  // A timestamped line from earlier does not move it back.
  aggregator.add(sample({ ip: '192.0.2.4', previousSecret: true, timestamp: NOW - 1000 }));
  const [key] = aggregator.drain().keys;
  t.equal(key.lastPreviousSecretAt, NOW + 10);
  t.equal(key.lastPreviousSecretIp, '192.0.2.2');
  t.equal(key.lastUsedAt, NOW + 10, 'a previous secret use is a use');

  const current = new Aggregator({ maxKeys: 10, now: () => NOW });
  current.add(sample());
  current.add(sample({ outcome: 'bad_secret', previousSecret: true }));
  const [never] = current.drain().keys;
  t.equal(never.lastPreviousSecretAt, -Infinity, 'no previous secret proven');
  t.equal(never.lastPreviousSecretIp, '');
});

t.test('merges keep the latest time and its address, whatever the order (held batches, folds)', async (t) => {
  const delta = (at: number, ip: string) => {
    const d = emptyDelta(KEY, ORG);
    d.lastPreviousSecretAt = at;
    d.lastPreviousSecretIp = ip;
    return d;
  };
  const none = emptyDelta(KEY, ORG);
  for (const order of [
    [delta(NOW, 'a'), delta(NOW + 5, 'b'), none],
    [none, delta(NOW + 5, 'b'), delta(NOW, 'a')],
    [delta(NOW + 5, 'b'), none, delta(NOW, 'a')],
  ]) {
    const [merged] = mergeBatches(order.map((k) => ({ keys: [k], uses: 0 }))).keys;
    t.strictSame([merged.lastPreviousSecretAt, merged.lastPreviousSecretIp], [NOW + 5, 'b']);
    const coalescer = new DeltaCoalescer();
    for (const k of order) coalescer.add({ ...k, hours: new Map(), ips: new Map(), failedIps: new Map() });
    const [folded] = coalescer.keys();
    t.strictSame([folded.lastPreviousSecretAt, folded.lastPreviousSecretIp], [NOW + 5, 'b']);
  }
  const [nothing] = mergeBatches([
    { keys: [none], uses: 0 },
    { keys: [emptyDelta(KEY, ORG)], uses: 0 },
  ]).keys;
  t.strictSame([nothing.lastPreviousSecretAt, nothing.lastPreviousSecretIp], [-Infinity, '']);
});

t.test("a usage log row keeps the previous secret's use, and one without it is as before", async (t) => {
  const line = (k: Parameters<typeof writeLogLine>[1]) =>
    Buffer.concat([...chunksWritten([k], writeLogLine)])
      .toString()
      .split('\t')[2]
      .trimEnd();
  const aggregator = new Aggregator({ maxKeys: 10, now: () => NOW });
  aggregator.add(sample({ ip: '2001:db8::1', previousSecret: true }));
  aggregator.add(sample({ ip: '10.0.0.2', outcome: 'bad_secret' }));
  const [withUse] = aggregator.drain().keys;
  const text = line(withUse);
  const fields = JSON.parse(text) as unknown[];
  t.strictSame(fields.slice(-2), [NOW, '2001:db8::1'], 'the last two fields');
  t.strictSame(decodeDelta(KEY, ORG, text), plainDelta(withUse));

  const plain = new Aggregator({ maxKeys: 10, now: () => NOW });
  plain.add(sample());
  const [without] = plain.drain().keys;
  const plainText = line(without);
  t.equal(typeof (JSON.parse(plainText) as unknown[]).at(-1), 'number', 'no trailing fields: a row an older collector reads');
  t.strictSame(decodeDelta(KEY, ORG, plainText), plainDelta(without));
  t.throws(() => decodeDelta(KEY, ORG, `${text.slice(0, -1)},1]`), /not a usage log delta/, 'anything more is refused');
});
