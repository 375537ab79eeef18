import t from 'tap';
import { orgHour, withinOrgHourlyLimit } from '../collector/eventBudget';
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

t.test("an org's hour keeps the most urgent events up to the limit, earliest first, and says what it held back", async (t) => {
  const events = [
    event(ORG_A, 'key.new_ip', HOUR + 3),
    event(ORG_A, 'key.new_ip', HOUR + 1),
    event(ORG_A, 'key.first_use', HOUR),
    event(ORG_A, 'key.revoked_used', HOUR + 9),
    event(ORG_B, 'key.first_use', HOUR + 5),
  ];
  const kept = withinOrgHourlyLimit(events, new Map(), 2);
  t.strictSame(summary(kept), [
    ['A', 'key.revoked_used', 9],
    ['A', 'key.new_ip', 1],
    ['B', 'key.first_use', 5],
    ['A', 'org.event_limit_reached', 3],
  ]);
  const limit = kept.at(-1)!;
  t.strictSame(limit.details, { hour: new Date(HOUR).toISOString(), limit: 2, heldBack: { 'key.new_ip': 1, 'key.first_use': 1 } });
  t.equal(limit.keyId, events[0].keyId, 'on the key of the first event held back');
  t.equal(limit.dedupeKey, `org.event_limit_reached:${ORG_A}:${HOUR}`, 'once per org and hour');
});

t.test('events already recorded use the room; another hour has its own', async (t) => {
  const events = [event(ORG_A, 'key.spike', HOUR + 10), event(ORG_A, 'key.spike', HOUR + 3_600_000)];
  const kept = withinOrgHourlyLimit(events, new Map([[orgHour(ORG_A, HOUR), 2]]), 2);
  t.strictSame(summary(kept), [
    ['A', 'key.spike', 3_600_000],
    ['A', 'org.event_limit_reached', 10],
  ]);
  t.strictSame(withinOrgHourlyLimit(events, new Map([[orgHour(ORG_B, HOUR), 5]]), 2).length, 2, "another org's count is not this one's");
});
