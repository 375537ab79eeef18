import { isIP } from 'node:net';
import t from 'tap';
import { Aggregator, DeltaCoalescer } from '../collector/aggregator';
import {
  deferredNetworkEvents,
  detectKeyEvents,
  isSpike,
  median,
  outsideNetworks,
  OUTSIDE_IPS_PER_EVENT,
  type DetectionThresholds,
  type KeyFacts,
} from '../collector/eventRules';
import { IP_DETAIL_FIELDS } from '../shared/keyEvents';
import type { UsageSample } from '../shared/usageWire';

const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const HOUR = Date.UTC(2026, 11, 1, 10);
const DAY = 86_400_000;
const OLD = HOUR - 30 * DAY;
const RULES: DetectionThresholds = { spikeFactor: 5, spikeMinUses: 100, failedAttemptsPerHour: 20, newIpPerKeyHour: 10 };

// A delta built by the real aggregator on a fake clock.
function delta(samples: Array<Partial<UsageSample> & { at?: number }>) {
  let clock = HOUR + 60_000;
  const aggregator = new Aggregator({ maxKeys: 10, now: () => clock });
  for (const { at, ...sample } of samples) {
    clock = at ?? clock;
    aggregator.add({ keyId: KEY, orgId: ORG, ip: '198.51.100.7', outcome: 'ok', count: 1, ...sample });
  }
  return aggregator.drain().keys[0];
}

const facts = (over: Partial<KeyFacts> = {}): KeyFacts => ({
  requestCount: 1000,
  createdAt: OLD,
  expectedNetworks: null,
  hours: [{ hour: HOUR, uses: 1, failed: 0, baseline: null }],
  newPrefixes: [],
  newIpEventsByHour: new Map(),
  networksWaiting: 0,
  firstUseAt: null,
  firstUseAgeMs: null,
  restorableUntil: null,
  ...over,
});

const types = (events: { type: string }[]) => events.map((e) => e.type);

t.test('median', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(median([0, 0, 0, 0, 0, 0, 9]), 0);
});

t.test('key.first_use: when every persisted use is in this batch, once, without key.new_ip', async (t) => {
  const d = delta([{ count: 3, ip: '203.0.113.9' }]);
  const events = detectKeyEvents(d, facts({ requestCount: 3, newPrefixes: [{ prefix: '203.0.113.0/24', ip: '203.0.113.9', firstSeen: HOUR }] }), RULES);
  t.strictSame(events, [
    { orgId: ORG, keyId: KEY, type: 'key.first_use', occurredAt: HOUR + 60_000, details: { ip: '203.0.113.9' }, dedupeKey: `key.first_use:${KEY}` },
  ]);
  t.strictSame(detectKeyEvents(d, facts({ requestCount: 4 }), RULES), [], 'a key used before: not a first use');
});

// A fold or a merged batch holds several flush intervals: a network first used 30 s after the
// first use was hidden for good (fails without the fix), where two direct flushes raised it.
t.test('key.first_use: a network first used after the first flush interval is still a key.new_ip', async (t) => {
  const d = delta([
    { ip: '10.0.1.1', at: HOUR + 60_000 },
    { ip: '10.0.1.2', at: HOUR + 60_500 },
    { ip: '10.0.2.1', at: HOUR + 90_000 },
  ]);
  const network = (prefix: string, ip: string, firstSeen: number) => ({ prefix, ip, firstSeen });
  const newPrefixes = [network('10.0.1.0/24', '10.0.1.1', HOUR + 60_000), network('10.0.2.0/24', '10.0.2.1', HOUR + 90_000)];
  const events = detectKeyEvents(d, facts({ requestCount: 3, newPrefixes }), { ...RULES, firstUseSpanMs: 1000 });
  t.strictSame(
    events.map((e) => [e.type, e.details.ip]),
    [
      ['key.first_use', '10.0.1.1'],
      ['key.new_ip', '10.0.2.1'],
    ],
  );
  t.strictSame(
    types(detectKeyEvents(d, facts({ requestCount: 3, newPrefixes }), { ...RULES, firstUseSpanMs: 60_000 })),
    ['key.first_use'],
    "within the first use's span (one flush interval): its own",
  );
});

// Collectors writing directly: the first use recorded is the one whose flush committed first, and
// another collector's later flush can hold uses dated before it (fails without the fix).
t.test("key.first_use recorded by another collector's flush: a network first used before it, or within its span, is its own", async (t) => {
  const network = (prefix: string, ip: string, firstSeen: number) => ({ prefix, ip, firstSeen });
  const newPrefixes = [
    network('198.51.100.0/24', '198.51.100.7', HOUR + 30_000),
    network('192.0.2.0/24', '192.0.2.5', HOUR + 60_500),
    network('10.0.2.0/24', '10.0.2.1', HOUR + 90_000),
  ];
  const d = delta([
    { ip: '198.51.100.7', at: HOUR + 30_000 },
    { ip: '192.0.2.5', at: HOUR + 60_500 },
    { ip: '10.0.2.1', at: HOUR + 90_000 },
  ]);
  const rules = { ...RULES, firstUseSpanMs: 1000 };
  t.strictSame(
    detectKeyEvents(d, facts({ requestCount: 5, newPrefixes, firstUseAt: HOUR + 60_000, firstUseAgeMs: 30_000 }), rules).map((e) => [e.type, e.details.ip]),
    [['key.new_ip', '10.0.2.1']],
    'only the network first used after the span, while the first use was recorded within 30 s (a retry, a fold after another)',
  );
  t.strictSame(
    types(detectKeyEvents(d, facts({ requestCount: 5, newPrefixes, firstUseAt: HOUR + 60_000, firstUseAgeMs: 30_001 }), rules)),
    ['key.new_ip', 'key.new_ip', 'key.new_ip'],
    'a first use recorded longer ago: its span is over, whatever the lines claim (a review: forged |T lines)',
  );
  t.strictSame(
    types(detectKeyEvents(d, facts({ requestCount: 5, newPrefixes, firstUseAt: HOUR + 60_000, firstUseAgeMs: 30_001 }), { ...rules, firstUseSpanMs: 20_000 })),
    ['key.new_ip'],
    'or within two flush intervals, if longer',
  );
  t.strictSame(
    types(detectKeyEvents(d, facts({ requestCount: 5, newPrefixes }), rules)),
    ['key.new_ip', 'key.new_ip', 'key.new_ip'],
    'no first use recorded (retained no longer, or never raised): every network is new',
  );
});

t.test('failed attempts alone are no use at all', async (t) => {
  const d = delta([{ outcome: 'bad_secret', count: 3 }]);
  t.strictSame(detectKeyEvents(d, facts({ requestCount: 0, hours: [{ hour: HOUR, uses: 0, failed: 3, baseline: null }] }), RULES), []);
});

t.test('key.new_ip: one per new prefix, its dedupe key names the prefix and when it was first seen', async (t) => {
  const d = delta([{ ip: '192.0.2.10' }, { ip: '2001:db8:1:2::5' }]);
  const events = detectKeyEvents(
    d,
    facts({
      newPrefixes: [
        { prefix: '192.0.2.0/24', ip: '192.0.2.10', firstSeen: HOUR + 1 },
        { prefix: '2001:db8:1:2::/64', ip: '2001:db8:1:2::5', firstSeen: HOUR + 2 },
      ],
    }),
    RULES,
  );
  t.strictSame(
    events.map((e) => [e.type, e.details, e.dedupeKey]),
    [
      ['key.new_ip', { ip: '192.0.2.10', prefix: '192.0.2.0/24' }, `key.new_ip:${KEY}:192.0.2.0/24:${HOUR + 1}`],
      ['key.new_ip', { ip: '2001:db8:1:2::5', prefix: '2001:db8:1:2::/64' }, `key.new_ip:${KEY}:2001:db8:1:2::/64:${HOUR + 2}`],
    ],
  );
});

t.test('key.new_ip: at most newIpPerKeyHour a clock hour, counting those already recorded; the last says so', async (t) => {
  const network = (i: number, firstSeen: number) => ({ prefix: `198.51.${i}.0/24`, ip: `198.51.${i}.1`, firstSeen });
  // Given out of order: the earliest networks are the ones raised.
  const newPrefixes = [...Array.from({ length: 3 }, (_, i) => network(i, HOUR + 10 + i)), network(9, HOUR + 5), network(8, HOUR + 3_600_000 + 1)].reverse();
  const deferred: string[] = [];
  const events = detectKeyEvents(delta([{}]), facts({ newPrefixes, newIpEventsByHour: new Map([[HOUR, 1]]) }), { ...RULES, newIpPerKeyHour: 4 }, (prefix) =>
    deferred.push(prefix),
  );
  t.strictSame(
    events.map((e) => [e.occurredAt - HOUR, e.details]),
    [
      [5, { ip: '198.51.9.1', prefix: '198.51.9.0/24' }],
      [10, { ip: '198.51.0.1', prefix: '198.51.0.0/24' }],
      [11, { ip: '198.51.1.1', prefix: '198.51.1.0/24', hourlyLimitReached: 4 }],
      [3_600_001, { ip: '198.51.8.1', prefix: '198.51.8.0/24' }],
    ],
    'one recorded before + three in the hour; the next hour counts afresh, keeping a place for the one deferred',
  );
  t.strictSame(deferred, ['198.51.2.0/24'], 'the other, told to the caller');
  const full = detectKeyEvents(delta([{}]), facts({ newPrefixes, newIpEventsByHour: new Map([[HOUR, 4]]) }), { ...RULES, newIpPerKeyHour: 4 });
  t.strictSame(
    full.map((e) => e.occurredAt - HOUR),
    [],
    "an hour already at the limit raises none, and its four deferred networks take the next hour's room",
  );
});

t.test('key.new_ip: networks deferred earlier keep their room; new ones beyond it queue behind them (fails without the fix)', async (t) => {
  const network = (i: number, firstSeen: number) => ({ prefix: `198.51.${i}.0/24`, ip: `198.51.${i}.1`, firstSeen });
  const newPrefixes = [network(1, HOUR + 10), network(2, HOUR + 11), network(3, HOUR + 12)];
  const deferred: string[] = [];
  const rules = { ...RULES, newIpPerKeyHour: 4 };
  const events = detectKeyEvents(delta([{}]), facts({ newPrefixes, networksWaiting: 2 }), rules, (prefix) => deferred.push(prefix));
  t.strictSame(
    events.map((e) => e.details.prefix),
    ['198.51.1.0/24', '198.51.2.0/24'],
    'two waiting + two raised fill the hour',
  );
  t.strictSame(deferred, ['198.51.3.0/24'], 'the third queues behind the waiting ones');
  // One flush over two hours: the first hour's overflow keeps its room in the next hour too.
  const nextHour = (i: number) => network(i, HOUR + 3_600_000 + i);
  const twoHours = [...newPrefixes, ...[4, 5, 6].map((i) => network(i, HOUR + 10 + i)), ...[9, 10, 11].map(nextHour)];
  const held: string[] = [];
  const raised = detectKeyEvents(delta([{}]), facts({ newPrefixes: twoHours }), rules, (prefix) => held.push(prefix));
  t.strictSame(held, ['198.51.5.0/24', '198.51.6.0/24', '198.51.11.0/24'], "the next hour's third network waits behind the two deferred before it");
  t.equal(raised.filter((e) => e.occurredAt >= HOUR + 3_600_000).length, 2, 'its first two are raised: the hour keeps two places for the waiting');
});

t.test('deferred key.new_ip: the earliest networks, up to the room left in the hour, occurring now; the same dedupe key as the flush gives', async (t) => {
  const now = HOUR + 7_200_000;
  const network = (i: number, firstSeen: number) => ({ orgId: ORG, keyId: KEY, prefix: `198.51.${i}.0/24`, ip: `198.51.${i}.1`, firstSeen });
  const networks = [network(3, HOUR + 30), network(1, HOUR + 10), network(2, HOUR + 20)];
  const events = deferredNetworkEvents(networks, 2, 4, now);
  const iso = (ms: number) => new Date(ms).toISOString();
  t.strictSame(
    events.map((e) => [e.type, e.occurredAt, e.details, e.dedupeKey]),
    [
      [
        'key.new_ip',
        now,
        { ip: '198.51.1.1', prefix: '198.51.1.0/24', firstSeen: iso(HOUR + 10), deferred: true },
        `key.new_ip:${KEY}:198.51.1.0/24:${HOUR + 10}`,
      ],
      [
        'key.new_ip',
        now,
        { ip: '198.51.2.1', prefix: '198.51.2.0/24', firstSeen: iso(HOUR + 20), deferred: true, hourlyLimitReached: 4 },
        `key.new_ip:${KEY}:198.51.2.0/24:${HOUR + 20}`,
      ],
    ],
    'two recorded this hour + two raised reach the limit of four',
  );
  const flushed = detectKeyEvents(delta([{}]), facts({ newPrefixes: [{ prefix: '198.51.1.0/24', ip: '198.51.1.1', firstSeen: HOUR + 10 }] }), RULES);
  t.equal(flushed[0].dedupeKey, events[0].dedupeKey, 'a flush raising the same network would be deduplicated with it');
  t.strictSame(deferredNetworkEvents(networks, 4, 4, now), [], 'none in an hour already at the limit');
  t.strictSame(deferredNetworkEvents(networks, 9, 4, now), [], 'nor over it (collectors flushing at once)');
  // More waiting than the hour is over its limit: a negative room, taken by slice() from the end, raised some.
  const many = Array.from({ length: 10 }, (_, i) => network(i, HOUR + i));
  t.strictSame(deferredNetworkEvents(many, 9, 4, now), [], 'ten waiting, nine raised, a limit of four: none');
});

t.test('outsideNetworks: IPv4 and IPv6 CIDRs, no list means anywhere', async (t) => {
  const ips = ['10.1.2.3', '192.0.2.1', '2001:db8::1', 'fd00::1'];
  t.strictSame(outsideNetworks(ips, ['10.0.0.0/8', '2001:db8::/32']), ['192.0.2.1', 'fd00::1']);
  t.strictSame(outsideNetworks(ips, ['192.0.2.1/32']), ['10.1.2.3', '2001:db8::1', 'fd00::1']);
  t.strictSame(outsideNetworks(ips, null), []);
  t.strictSame(outsideNetworks(ips, []), []);
});

t.test('outsideNetworks of truncated addresses: outside only when no expected network overlaps the /24 or /48', async (t) => {
  const truncated = ['203.0.113.0', '192.0.2.0', '10.1.2.0', '2001:db8:1::', '2001:db8:2::'];
  const expected = ['203.0.113.128/25', '10.0.0.0/8', '2001:db8:1:5::/64'];
  t.strictSame(outsideNetworks(truncated, expected, true), ['192.0.2.0', '2001:db8:2::']);
  t.strictSame(outsideNetworks(truncated, expected), ['203.0.113.0', '192.0.2.0', '2001:db8:1::', '2001:db8:2::'], 'as addresses, without truncation');
  t.strictSame(outsideNetworks(['2001:db8:1::'], ['203.0.113.0/24'], true), ['2001:db8:1::'], 'a network of the other family overlaps nothing');
  // The collector keeps a mapped address as IPv4: a mapped expected network is checked as IPv4 too
  // (kept as IPv6, it matched nothing: an alarm every hour; found by a review).
  t.strictSame(outsideNetworks(['10.0.0.200', '192.0.2.1'], ['::ffff:10.0.0.128/121']), ['192.0.2.1'], 'a mapped network, as the IPv4 one it maps');
  t.strictSame(outsideNetworks(['10.0.0.0'], ['::ffff:10.0.0.128/121'], true), [], 'truncated too');
  // A 6to4 address is truncated to its /40 (shared/ipTruncation.ts): its client's own /48 overlaps it.
  t.strictSame(outsideNetworks(['2002:cb00:7100::'], ['2002:cb00:7105::/48'], true), [], 'a 6to4 /40 overlaps a /48 inside it');
  t.strictSame(outsideNetworks(['2002:cb00:7100::'], ['2002:cb00:7200::/48'], true), ['2002:cb00:7100::'], 'and not one outside it');
});

t.test('key.outside_networks: at most one per key per hour, listing the addresses', async (t) => {
  const d = delta([{ ip: '10.0.0.5' }, { ip: '192.0.2.1' }]);
  const events = detectKeyEvents(d, facts({ expectedNetworks: ['10.0.0.0/8'] }), RULES);
  t.strictSame(types(events), ['key.outside_networks']);
  t.strictSame(events[0].details, { ips: ['192.0.2.1'], expectedNetworks: ['10.0.0.0/8'] });
  t.match(events[0].dedupeKey, new RegExp(`^key.outside_networks:${KEY}:${new Date(HOUR).toISOString()}:[0-9a-f]{12}$`), 'the hour and the expected list');
  t.strictSame(detectKeyEvents(delta([{ ip: '10.9.9.9' }]), facts({ expectedNetworks: ['10.0.0.0/8'] }), RULES), [], 'inside: nothing');
});

// A fold's delta holds every address of its log rows: the event listed them all, growing with
// the backlog (a review; fails without the fix).
t.test('key.outside_networks names the 16 newest addresses outside, and counts the others', async (t) => {
  const d = delta([{ ip: '10.0.0.5' }]);
  const ips = new Map(Array.from({ length: 40 }, (_, i) => [`192.0.2.${i + 1}`, { count: 1, firstSeen: HOUR + i, lastSeen: HOUR + i }] as const));
  d.ips = new Map([...d.ips, ...ips]);
  const [event] = detectKeyEvents(d, facts({ expectedNetworks: ['10.0.0.0/8'] }), RULES);
  const newest = Array.from({ length: OUTSIDE_IPS_PER_EVENT }, (_, i) => `192.0.2.${40 - i}`);
  t.strictSame(event.details, { ips: newest, expectedNetworks: ['10.0.0.0/8'], ipsOmitted: 40 - OUTSIDE_IPS_PER_EVENT });
});

t.test('isSpike: more than k × the median of the same hour on the previous 7 days, and at least M uses', async (t) => {
  const hour = (uses: number, baseline: number[] | null) => ({ hour: HOUR, uses, failed: 0, baseline });
  const week = [10, 12, 9, 11, 10, 30, 8]; // median 10
  t.equal(isSpike(hour(51, week), OLD, RULES), false, '51 < 100 uses');
  t.equal(isSpike(hour(100, week), OLD, RULES), true, '100 > 5 × 10');
  t.equal(isSpike(hour(150, [40, 40, 40, 40, 0, 0, 0]), OLD, RULES), false, '150 is not > 5 × 40');
  t.equal(isSpike(hour(150, [0, 0, 0, 0, 0, 0, 0]), OLD, RULES), true, 'a silent hour that wakes up with ≥ M uses');
  t.equal(isSpike(hour(500, null), OLD, RULES), false, 'no baseline fetched');
  t.equal(isSpike(hour(500, week), HOUR - 6 * DAY, RULES), false, 'a key younger than the baseline window');
  // The edges, which a mutation review found no test held: exactly k × the median is no spike, and
  // a key exactly as old as the baseline window has one.
  t.equal(isSpike(hour(100, Array(7).fill(20)), OLD, RULES), false, '100 is not > 5 × 20');
  t.equal(isSpike(hour(500, week), HOUR - 7 * DAY, RULES), true, 'a key exactly 7 days old');
});

t.test('key.spike: once per key per hour with its baseline in details', async (t) => {
  const d = delta([{ count: 120, at: HOUR + 5000 }]);
  const events = detectKeyEvents(d, facts({ hours: [{ hour: HOUR, uses: 130, failed: 0, baseline: [1, 2, 3, 4, 5, 6, 7] }] }), RULES);
  t.strictSame(types(events), ['key.spike']);
  t.strictSame(events[0].details, { hour: new Date(HOUR).toISOString(), uses: 130, baselineMedian: 4, factor: 5, minUses: 100 });
  t.equal(events[0].occurredAt, HOUR + 5000);
  t.equal(events[0].dedupeKey, `key.spike:${KEY}:${new Date(HOUR).toISOString()}`);
});

t.test('key.failed_attempts: when the hour reaches the threshold and this batch added to it', async (t) => {
  const d = delta([{ outcome: 'bad_secret', count: 5, ip: '203.0.113.66' }]);
  const at = (failed: number) => facts({ hours: [{ hour: HOUR, uses: 0, failed, baseline: null }] });
  t.strictSame(detectKeyEvents(d, at(19), RULES), []);
  const events = detectKeyEvents(d, at(20), RULES);
  t.strictSame(types(events), ['key.failed_attempts']);
  t.strictSame(events[0].details, { hour: new Date(HOUR).toISOString(), attempts: 20, threshold: 20, lastIp: '203.0.113.66' });
  t.strictSame(detectKeyEvents(delta([{ count: 1 }]), at(25), RULES), [], 'a batch with no failed attempt in that hour');
});

t.test('key.revoked_used and key.expired_used: one per key per hour of the use', async (t) => {
  const d = delta([
    { outcome: 'revoked', ip: '198.51.100.1' },
    { outcome: 'expired', ip: '198.51.100.1', at: HOUR + 3_700_000 },
  ]);
  const events = detectKeyEvents(d, facts({ hours: [] }), RULES);
  t.strictSame(
    events.map((e) => [e.type, e.dedupeKey]),
    [
      ['key.revoked_used', `key.revoked_used:${KEY}:${new Date(HOUR).toISOString()}`],
      ['key.expired_used', `key.expired_used:${KEY}:${new Date(HOUR + 3_600_000).toISOString()}`],
    ],
  );
  t.strictSame(events[0].details, { ip: '198.51.100.1', ips: ['198.51.100.1'] });
});

// A key the clean-up revoked, used again while it can be restored: the event says until when, so
// its receiver knows a restore is possible without reading the key's view. Not once that is past.
t.test('key.revoked_used says until when the key can be restored, while it can', async (t) => {
  const d = delta([{ outcome: 'revoked', ip: '198.51.100.1', at: HOUR + 1000 }]);
  const until = HOUR + 30 * 86_400_000;
  const [restorable] = detectKeyEvents(d, facts({ hours: [], restorableUntil: until }), RULES);
  t.strictSame(restorable.details, { ip: '198.51.100.1', ips: ['198.51.100.1'], restorableUntil: new Date(until).toISOString() });
  const [past] = detectKeyEvents(d, facts({ hours: [], restorableUntil: HOUR + 1000 }), RULES);
  t.strictSame(past.details, { ip: '198.51.100.1', ips: ['198.51.100.1'] }, 'its time passed at the use');
  const [expired] = detectKeyEvents(delta([{ outcome: 'expired', ip: '198.51.100.1', at: HOUR + 1000 }]), facts({ hours: [], restorableUntil: until }), RULES);
  t.strictSame(expired.details, { ip: '198.51.100.1', ips: ['198.51.100.1'] }, 'key.expired_used says nothing of it');
});

// Found by an incident-response review: `ip` was the newest address of any use in the flush. Right
// after a revoke the rightful service, retrying until redeployed, is often the newest, and the
// leaked secret's holder was in no event.
t.test('key.revoked_used names every address a revoked use came from, newest first', async (t) => {
  const [attacker, service] = ['198.51.100.7', '10.1.2.3'];
  const d = delta([
    { outcome: 'revoked', ip: attacker, count: 5, at: HOUR + 1000 },
    { outcome: 'revoked', ip: service, at: HOUR + 2000 },
    { outcome: 'revoked', ip: attacker, count: 5, at: HOUR + 3000 },
  ]);
  const [event] = detectKeyEvents(d, facts({ hours: [] }), RULES);
  t.equal(event.type, 'key.revoked_used');
  t.strictSame(event.details, { ip: attacker, ips: [attacker, service] });

  const serviceLast = delta([
    { outcome: 'revoked', ip: attacker, count: 5, at: HOUR + 1000 },
    { outcome: 'revoked', ip: service, at: HOUR + 2000 },
  ]);
  t.strictSame(
    detectKeyEvents(serviceLast, facts({ hours: [] }), RULES)[0].details,
    { ip: service, ips: [service, attacker] },
    'the attacker named, after the service',
  );
});

t.test("key.revoked_used's ip is the newest refused use's, not a later allowed one's", async (t) => {
  // A use allowed after the revoked one: an instance whose cache had not heard of the revoke yet.
  const d = delta([
    { outcome: 'revoked', ip: '198.51.100.7', at: HOUR + 1000 },
    { outcome: 'ok', ip: '10.1.2.3', at: HOUR + 2000 },
  ]);
  t.equal(d.lastIp, '10.1.2.3');
  t.strictSame(detectKeyEvents(d, facts({ hours: [] }), RULES)[0].details, { ip: '198.51.100.7', ips: ['198.51.100.7'] });
});

t.test('key.expired_used names its own addresses, not the revoked ones', async (t) => {
  const d = delta([
    { outcome: 'expired', ip: '203.0.113.1', at: HOUR + 1000 },
    { outcome: 'revoked', ip: '198.51.100.7', at: HOUR + 2000 },
  ]);
  const events = detectKeyEvents(d, facts({ hours: [] }), RULES);
  t.strictSame(
    events.map((e) => [e.type, e.details]),
    [
      ['key.revoked_used', { ip: '198.51.100.7', ips: ['198.51.100.7'] }],
      ['key.expired_used', { ip: '203.0.113.1', ips: ['203.0.113.1'] }],
    ],
  );
});

t.test("a fold's key.revoked_used names the 16 newest refused addresses and counts the rest", async (t) => {
  // A fold keeps every address of the rows it takes (collector/usageLog.ts): two flushes of 12.
  const flush = (first: number) =>
    delta(Array.from({ length: 12 }, (_, i) => ({ outcome: 'revoked' as const, ip: `198.51.100.${first + i}`, at: HOUR + 1000 * (first + i) })));
  const fold = new DeltaCoalescer(Number.POSITIVE_INFINITY);
  fold.add(flush(0));
  fold.add(flush(12));
  const [key] = fold.keys();
  t.equal(key.revokedIps?.size, 24);
  const [event] = detectKeyEvents(key, facts({ hours: [] }), RULES);
  const newest = Array.from({ length: OUTSIDE_IPS_PER_EVENT }, (_, i) => `198.51.100.${23 - i}`);
  t.strictSame(event.details, { ip: '198.51.100.23', ips: newest, ipsOmitted: 8 });
  t.equal(flush(0).revokedIps?.size, 12, 'a flush keeps up to 16 of its own');
});

// IP erasure (shared/ipRetention.ts) clears the detail fields it is told about; an address under
// any other name would outlive IP_RETENTION_DAYS and `key erase-ips`.
t.test('every detail field that holds a client address is one IP erasure clears', async (t) => {
  const isAddress = (value: unknown): boolean => (Array.isArray(value) ? value.some(isAddress) : typeof value === 'string' && isIP(value.split('/')[0]) !== 0);
  const events = [
    detectKeyEvents(delta([{ count: 3, ip: '203.0.113.9' }]), facts({ requestCount: 3 }), RULES),
    detectKeyEvents(
      delta([{ ip: '192.0.2.10' }]),
      facts({ newPrefixes: [{ prefix: '192.0.2.0/24', ip: '192.0.2.10', firstSeen: HOUR }], expectedNetworks: ['10.0.0.0/8'] }),
      RULES,
    ),
    detectKeyEvents(delta([{ outcome: 'bad_secret', count: 5 }]), facts({ hours: [{ hour: HOUR, uses: 0, failed: 20, baseline: null }] }), RULES),
    detectKeyEvents(delta([{ outcome: 'revoked' }, { outcome: 'expired' }]), facts({ hours: [] }), RULES),
  ].flat();
  t.strictSame(
    new Set(types(events)),
    new Set(['key.first_use', 'key.new_ip', 'key.outside_networks', 'key.failed_attempts', 'key.revoked_used', 'key.expired_used']),
  );
  for (const event of events) {
    for (const [field, value] of Object.entries(event.details)) {
      // The key's configured networks, set by an operator: not a client's address.
      if (field === 'expectedNetworks' || !isAddress(value)) continue;
      t.ok((IP_DETAIL_FIELDS as readonly string[]).includes(field), `${event.type}: ${field} is erased`);
    }
  }
});

// Keyed by the hour alone, the first outside use of an hour silenced every other one, even after
// the operator fixed the list: a use outside the new list in the same hour raised nothing (a
// review; fails without the fix).
t.test('key.outside_networks: once per hour for each expected list, so a PATCH re-arms it', async (t) => {
  const outside = (expectedNetworks: string[], ip: string) => detectKeyEvents(delta([{ ip }]), facts({ expectedNetworks }), RULES);
  const [before] = outside(['10.0.0.0/8'], '192.0.2.1');
  const [after] = outside(['10.0.0.0/8', '192.0.2.0/24'], '198.51.100.9');
  t.not(after.dedupeKey, before.dedupeKey, 'another list: another event in the same hour');
  t.strictSame(after.details, { ips: ['198.51.100.9'], expectedNetworks: ['10.0.0.0/8', '192.0.2.0/24'] });
  t.equal(outside(['192.0.2.0/24', '10.0.0.0/8'], '198.51.100.7')[0].dedupeKey, after.dedupeKey, 'the same list in another order: the same event');
  t.equal(outside(['10.0.0.0/8'], '198.51.100.7')[0].dedupeKey, before.dedupeKey, 'the same list: once an hour still');
  t.notMatch(after.dedupeKey, /198\.51|192\.0/, 'no address in the dedupe key');
});

// Idle days counted as 0 made the median 0 once four of the 7 were idle: every busy hour of the
// four working days after a four-day holiday spiked, and a weekly job at every run (a review;
// fails without the fix).
t.test('key.spike: the baseline is the median of the days with uses in that hour', async (t) => {
  const at = (hour: number, uses: number, baseline: number[]) => ({ hour, uses, failed: 0, baseline });
  // 150 uses an hour on weekdays, off from Good Friday to Easter Monday 2026 (04-03..04-06).
  const holiday = [3, 4, 5, 6].map((d) => Date.UTC(2026, 3, d));
  const usesOn = (day: number) => ([0, 6].includes(new Date(day).getUTCDay()) || holiday.includes(day) ? 0 : 150);
  const weekBefore = (day: number) => Array.from({ length: 7 }, (_, i) => usesOn(day - (i + 1) * DAY));
  for (const date of [7, 8, 9, 10]) {
    const day = Date.UTC(2026, 3, date);
    t.equal(
      isSpike(at(day + 10 * 3_600_000, 150, weekBefore(day)), Date.UTC(2026, 0, 5), RULES),
      false,
      `2026-04-${String(date).padStart(2, '0')}: its usual 150 after Easter (${weekBefore(day).join(',')})`,
    );
  }
  t.equal(isSpike(at(HOUR, 500, [0, 0, 0, 0, 0, 0, 500]), OLD, RULES), false, 'a weekly job at its usual 500');
  t.equal(isSpike(at(HOUR, 500, [0, 0, 500, 0, 500, 0, 500]), OLD, RULES), false, 'a Monday, Wednesday and Friday job');
  t.equal(isSpike(at(HOUR, 100, [0, 0, 0, 0, 0, 0, 0]), OLD, RULES), true, 'a new load on a key idle all week: ≥ the minimum spikes');
  t.equal(isSpike(at(HOUR, 99, [0, 0, 0, 0, 0, 0, 0]), OLD, RULES), false, 'below the minimum it does not');
  const d = delta([{ count: 1_500, at: HOUR + 5000 }]);
  const events = detectKeyEvents(d, facts({ requestCount: 100_000, hours: [at(HOUR, 1_500, [150, 0, 0, 0, 0, 150, 140])] }), RULES);
  t.strictSame(types(events), ['key.spike'], 'a real spike over the active days still fires');
  t.equal(events[0].details.baselineMedian, 150, 'the median of the active days');
});
