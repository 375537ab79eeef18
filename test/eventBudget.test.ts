import t from 'tap';
import { earliestHour, eventsInCrowdedRooms, orgHourRoom, withinOrgHourlyLimit } from '../collector/eventBudget';
import type { KeyEvent } from '../collector/eventRules';
import type { EventType } from '../shared/keyEvents';

// The per-org hourly limit of key events, as a pure function of the events and the counts already
// recorded (the flush's half, against PostgreSQL: test/eventStore.candidates.test.ts).
const HOUR = Date.UTC(2026, 11, 5, 10);
const ORG_A = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const ORG_B = '1c3e4a5b-8d7f-4e5d-9c3b-2a199b2d4f6a';

let n = 0;
const event = (orgId: string, type: EventType, occurredAt: number): KeyEvent => {
  n += 1;
  return { orgId, keyId: `key-${n}`, type, occurredAt, details: {}, dedupeKey: `${type}:${n}` };
};
const summary = (events: KeyEvent[]) => events.map((e) => [e.orgId === ORG_A ? 'A' : 'B', e.type, e.occurredAt - HOUR]);

t.test("an org's hour has a room for urgent events and one for the rest, each kept most urgent first, then earliest", async (t) => {
  const events = [
    event(ORG_A, 'key.new_ip', HOUR + 3),
    event(ORG_A, 'key.new_ip', HOUR + 1),
    event(ORG_A, 'key.first_use', HOUR),
    event(ORG_A, 'key.revoked_used', HOUR + 9),
    event(ORG_A, 'key.outside_networks', HOUR + 8),
    event(ORG_A, 'key.expired_used', HOUR + 7),
    event(ORG_B, 'key.first_use', HOUR + 5),
  ];
  const kept = withinOrgHourlyLimit(events, new Map(), 2);
  t.strictSame(summary(kept), [
    ['A', 'key.revoked_used', 9],
    ['A', 'key.expired_used', 7],
    ['A', 'key.new_ip', 1],
    ['A', 'key.new_ip', 3],
    ['B', 'key.first_use', 5],
    ['A', 'org.event_limit_reached', 8],
    ['A', 'org.event_limit_reached', 0],
  ]);
  const [urgent, routine] = kept.slice(-2);
  t.strictSame(urgent.details, { hour: new Date(HOUR).toISOString(), room: 'urgent', limit: 2, heldBack: { 'key.outside_networks': 1 } });
  t.strictSame(routine.details, { hour: new Date(HOUR).toISOString(), room: 'routine', limit: 2, heldBack: { 'key.first_use': 1 } });
  t.equal(routine.keyId, events[2].keyId, 'on the key of the first event held back');
  t.equal(routine.dedupeKey, `org.event_limit_reached:${ORG_A}:${HOUR}:routine`, 'once per org, hour and room');
});

// Anyone who knows key ids can cause failed attempts (20 wrong secrets a key): in the routine
// room, ranked first, they took the space of the hour's key.new_ip and key.first_use, the events
// of a leaked key used by someone new (fails without the fix).
t.test('failed attempts have a room of their own: they cannot crowd out new networks and first uses', async (t) => {
  const events = [
    event(ORG_A, 'key.new_ip', HOUR + 1),
    event(ORG_A, 'key.first_use', HOUR + 2),
    ...[5, 6, 7, 8].map((at) => event(ORG_A, 'key.failed_attempts', HOUR + at)),
  ];
  const kept = withinOrgHourlyLimit(events, new Map([[orgHourRoom(ORG_A, HOUR, 'attempts'), 0]]), 3);
  t.strictSame(summary(kept), [
    ['A', 'key.new_ip', 1],
    ['A', 'key.first_use', 2],
    ['A', 'key.failed_attempts', 5],
    ['A', 'key.failed_attempts', 6],
    ['A', 'key.failed_attempts', 7],
    ['A', 'org.event_limit_reached', 8],
  ]);
  t.match(kept.at(-1)!.details, { room: 'attempts', heldBack: { 'key.failed_attempts': 1 } });
  const fullOfAttempts = new Map([[orgHourRoom(ORG_A, HOUR, 'attempts'), 3]]);
  t.strictSame(
    summary(withinOrgHourlyLimit(events.slice(0, 2), fullOfAttempts, 3)),
    [
      ['A', 'key.new_ip', 1],
      ['A', 'key.first_use', 2],
    ],
    'an hour whose attempts room is full still raises them',
  );
});

t.test('events already recorded use the room; a full routine room leaves the urgent one; another hour and another org have their own', async (t) => {
  const events = [event(ORG_A, 'key.spike', HOUR + 10), event(ORG_A, 'key.revoked_used', HOUR + 20), event(ORG_A, 'key.spike', HOUR + 3_600_000)];
  const full = new Map([[orgHourRoom(ORG_A, HOUR, 'routine'), 2]]);
  t.strictSame(summary(withinOrgHourlyLimit(events, full, 2)), [
    ['A', 'key.revoked_used', 20],
    ['A', 'key.spike', 3_600_000],
    ['A', 'org.event_limit_reached', 10],
  ]);
  const otherOrgFull = new Map([[orgHourRoom(ORG_B, HOUR, 'routine'), 5]]);
  t.strictSame(summary(withinOrgHourlyLimit(events, otherOrgFull, 2)), [
    ['A', 'key.revoked_used', 20],
    ['A', 'key.spike', 10],
    ['A', 'key.spike', 3_600_000],
  ]);
});

t.test('rooms with more events than space are crowded, unless they ran out before', async (t) => {
  const spare = event(ORG_A, 'key.spike', HOUR);
  const crowded = [event(ORG_A, 'key.revoked_used', HOUR), event(ORG_A, 'key.expired_used', HOUR)];
  const exactlyFull = event(ORG_B, 'key.revoked_used', HOUR);
  const ranOut = event(ORG_B, 'key.new_ip', HOUR);
  const counts = new Map([
    [orgHourRoom(ORG_A, HOUR, 'urgent'), 1],
    [orgHourRoom(ORG_B, HOUR, 'urgent'), 2],
    [orgHourRoom(ORG_B, HOUR, 'routine'), 2],
  ]);
  const recorded = { counts, limited: new Set([orgHourRoom(ORG_B, HOUR, 'routine')]) };
  t.strictSame(eventsInCrowdedRooms([spare, ...crowded, exactlyFull, ranOut], recorded, 2), [...crowded, exactlyFull]);
});

// Math.min(...events) threw RangeError past about 120,000 arguments: the flush failed on every retry.
t.test('the earliest hour of 200,000 events', async (t) => {
  const many = Array.from({ length: 200_000 }, (_, i) => ({ ...event(ORG_A, 'key.new_ip', HOUR + 3_600_000 + i), dedupeKey: '' }));
  many[100_000].occurredAt = HOUR + 59_000;
  t.equal(earliestHour(many), HOUR);
});
