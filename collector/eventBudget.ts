// An org's events in a clock hour stop at EVENTS_MAX_PER_ORG_HOUR: one org's keys could raise
// events without bound (100,000 keys used from new networks, each event a delivery per webhook),
// all written in the flush every org shares. Pure: the counts already recorded come in.
//
// Three rooms of that size an hour: one for the events an operator must act on (a revoked or
// expired key still in use, a key outside its networks), one for failed attempts, one for the
// rest. With one room, new networks (forged or not) sent at the start of an hour filled it, and a
// revoked key used later that hour raised nothing, every hour. Failed attempts have their own
// because anyone who knows key ids can cause them: sharing the routine room, 20 wrong secrets
// for each of 10,000 keys filled it and hid the hour's key.new_ip and key.first_use, the events
// that show a leaked key used by someone new.
import { LIMIT_EVENT, type EventType } from '../shared/keyEvents';
import { TABLE } from '../shared/tables';
import { HOUR_MS, hourOf } from '../shared/timeUnits';
import type { KeyEvent } from './eventRules';

export type EventRoom = 'urgent' | 'routine' | 'attempts';

/** Most urgent first: what is kept when a room has less space than events. */
const URGENT: readonly EventType[] = ['key.revoked_used', 'key.expired_used', 'key.outside_networks'];
const ROUTINE: readonly EventType[] = ['key.spike', 'key.new_ip', 'key.first_use', 'key.dormant', 'key.expiring'];
const ATTEMPTS: readonly EventType[] = ['key.failed_attempts'];

const inList = (types: readonly EventType[]) => types.map((type) => `'${type}'`).join(', ');
// Raised by the sweep, at its time: not held, and not counted either. Counted, a sweep after an
// outage (10,000 keys found dormant at once) filled its org's routine room for the hour, and that
// hour's key.new_ip, key.first_use and key.spike were held back (a review).
const SWEPT: readonly EventType[] = ['key.dormant', 'key.expiring'];
const ROOM_SQL = `case when type in (${inList(URGENT)}) then 'urgent' when type in (${inList(ATTEMPTS)}) then 'attempts'
                      when type = '${LIMIT_EVENT}' then coalesce(details->>'room', 'routine') else 'routine' end`;

/**
 * The events each of the orgs `orgs` (an array parameter) already has in each room of each clock
 * hour from `from` on (the limit's own not counted), and whether the room's limit event is among
 * them: an index range of key_events_org_time_idx per org. The sweep's events (100,000 keys
 * dormant in one hour) are in it though not counted, so a range can be that long. A plain read, which
 * Citus sends to the orgs' shards.
 */
export const recordedRoomsSql = (orgs: string, from: string) => `
select org_id, floor(extract(epoch from occurred_at) * 1000 / ${HOUR_MS}) * ${HOUR_MS} as hour_ms, ${ROOM_SQL} as room,
       count(*) filter (where type <> '${LIMIT_EVENT}' and type not in (${inList(SWEPT)})) as recorded, bool_or(type = '${LIMIT_EVENT}') as limited
  from ${TABLE.keyEvents}
 where org_id = any(${orgs}) and occurred_at >= ${from}
 group by 1, 2, 3`;

export type RecordedRoomRow = { org_id: string; hour_ms: string; room: EventRoom; recorded: string; limited: boolean };

export interface RecordedRooms {
  /** Events in each room (orgHourRoom), the limit's own not counted. */
  counts: ReadonlyMap<string, number>;
  /** The rooms whose limit event is recorded: they ran out before. */
  limited: ReadonlySet<string>;
}

export function recordedRooms(rows: readonly RecordedRoomRow[]): RecordedRooms {
  const slot = (row: RecordedRoomRow) => orgHourRoom(row.org_id, Number(row.hour_ms), row.room);
  return { counts: new Map(rows.map((row) => [slot(row), Number(row.recorded)])), limited: new Set(rows.filter((row) => row.limited).map(slot)) };
}

export const roomOf = (type: EventType): EventRoom => (URGENT.includes(type) ? 'urgent' : ATTEMPTS.includes(type) ? 'attempts' : 'routine');

const ORDER: readonly EventType[] = [...URGENT, ...ROUTINE, ...ATTEMPTS];
function rank(type: EventType): number {
  const at = ORDER.indexOf(type);
  return at < 0 ? ORDER.length : at;
}

/** The key of the `recorded` counts: an org's room in a clock hour. */
export const orgHourRoom = (orgId: string, hourMs: number, room: EventRoom) => `${orgId}|${hourMs}|${room}`;
const slotOf = (event: KeyEvent) => orgHourRoom(event.orgId, hourOf(event.occurredAt), roomOf(event.type));

/** The start of the earliest clock hour of `events` (a loop: a spread of 125,000 arguments overflows the stack). */
export function earliestHour(events: readonly KeyEvent[]): number {
  let earliest = Infinity;
  for (const event of events) earliest = Math.min(earliest, event.occurredAt);
  return hourOf(earliest);
}

/**
 * The events whose room may run out in this flush (more events than space), unless it ran out
 * before (its limit event is recorded: nothing more is raised there). Only there does it matter
 * whether an event is already recorded (the same key's revoked use is detected again in each
 * flush of its hour and inserted once): counted as new, a repeat took a real event's space, or
 * raised the limit event for a room exactly full. So only those are looked up.
 */
export function eventsInCrowdedRooms(events: readonly KeyEvent[], recorded: RecordedRooms, limit: number): KeyEvent[] {
  const candidates = new Map<string, number>();
  for (const event of events) candidates.set(slotOf(event), (candidates.get(slotOf(event)) ?? 0) + 1);
  return events.filter((event) => {
    const used = recorded.counts.get(slotOf(event)) ?? 0;
    return used + candidates.get(slotOf(event))! > limit && !(used >= limit && recorded.limited.has(slotOf(event)));
  });
}

/**
 * The events that fit in their org's hour (`recorded`: events already in each room), most urgent
 * first, then earliest; for each room that ran out, one `org.event_limit_reached` naming the
 * limit and the types held back (once an hour a room: its dedupe key is the room's).
 */
export function withinOrgHourlyLimit(events: readonly KeyEvent[], recorded: ReadonlyMap<string, number>, limit: number): KeyEvent[] {
  const used = new Map(recorded);
  const kept: KeyEvent[] = [];
  const heldBack = new Map<string, { first: KeyEvent; types: Partial<Record<EventType, number>> }>();
  const ordered = [...events].sort((a, b) => rank(a.type) - rank(b.type) || a.occurredAt - b.occurredAt);
  for (const event of ordered) {
    const slot = slotOf(event);
    const count = used.get(slot) ?? 0;
    if (count < limit) {
      used.set(slot, count + 1);
      kept.push(event);
      continue;
    }
    const held = heldBack.get(slot) ?? { first: event, types: {} };
    held.types[event.type] = (held.types[event.type] ?? 0) + 1;
    heldBack.set(slot, held);
  }
  for (const { first, types } of heldBack.values()) kept.push(limitReached(first, types, limit));
  return kept;
}

function limitReached(first: KeyEvent, heldBack: Partial<Record<EventType, number>>, limit: number): KeyEvent {
  const hour = hourOf(first.occurredAt);
  const room = roomOf(first.type);
  return {
    orgId: first.orgId,
    keyId: first.keyId,
    type: LIMIT_EVENT,
    occurredAt: first.occurredAt,
    details: { hour: new Date(hour).toISOString(), room, limit, heldBack },
    dedupeKey: `${LIMIT_EVENT}:${first.orgId}:${hour}:${room}`,
  };
}
