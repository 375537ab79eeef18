// An org's events in a clock hour stop at EVENTS_MAX_PER_ORG_HOUR: one org's keys could raise
// events without bound (100,000 keys used from new networks, each event a delivery per webhook),
// all written in the flush every org shares. Pure: the counts already recorded come in.
import type { EventType } from '../shared/keyEvents';
import { HOUR_MS } from '../shared/timeUnits';
import type { KeyEvent } from './eventRules';

// What is kept first when an hour has less room than events: what an operator must act on
// (a revoked or expired key still in use, a key outside its networks) before what describes use.
const PRIORITY: readonly EventType[] = [
  'key.revoked_used',
  'key.expired_used',
  'key.outside_networks',
  'key.failed_attempts',
  'key.spike',
  'key.new_ip',
  'key.first_use',
  'key.dormant',
  'key.expiring',
];
function rank(type: EventType): number {
  const at = PRIORITY.indexOf(type);
  return at < 0 ? PRIORITY.length : at;
}

export const LIMIT_EVENT: EventType = 'org.event_limit_reached';

const hourOf = (ms: number) => ms - (ms % HOUR_MS);

/** The key of `recorded`: an org's clock hour. */
export const orgHour = (orgId: string, hourMs: number) => `${orgId}|${hourMs}`;

/**
 * The events that fit in their org's hour (`recorded`: events already in each org hour), most
 * urgent first, then earliest; for each org hour that ran out, one `org.event_limit_reached`
 * naming the limit and the types held back (once an hour: its dedupe key is the org hour's).
 */
export function withinOrgHourlyLimit(events: readonly KeyEvent[], recorded: ReadonlyMap<string, number>, limit: number): KeyEvent[] {
  const used = new Map(recorded);
  const kept: KeyEvent[] = [];
  const heldBack = new Map<string, { first: KeyEvent; types: Partial<Record<EventType, number>> }>();
  const ordered = [...events].sort((a, b) => rank(a.type) - rank(b.type) || a.occurredAt - b.occurredAt);
  for (const event of ordered) {
    const slot = orgHour(event.orgId, hourOf(event.occurredAt));
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
  return {
    orgId: first.orgId,
    keyId: first.keyId,
    type: LIMIT_EVENT,
    occurredAt: first.occurredAt,
    details: { hour: new Date(hour).toISOString(), limit, heldBack },
    dedupeKey: `${LIMIT_EVENT}:${first.orgId}:${hour}`,
  };
}
