// The closed list of key event types, shared by the collector (which detects them) and the API
// (which lists them). docs/events.md defines each.
export const EVENT_TYPES = [
  'key.first_use',
  'key.new_ip',
  'key.outside_networks',
  'key.spike',
  'key.revoked_used',
  'key.expired_used',
  'key.failed_attempts',
  'key.dormant',
  'key.expiring',
  'org.event_limit_reached',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/**
 * The org's event saying its hourly limit held events back (collector/eventBudget.ts): an org's,
 * filed under the key of the first event held back, and left out of that key's own event counts.
 */
export const LIMIT_EVENT: EventType = 'org.event_limit_reached';

/** key.spike compares an hour with the same hour on each of this many days before it. */
export const BASELINE_DAYS = 7;

/**
 * The fields of an event's details that hold client addresses or their networks (docs/events.md):
 * erased with the key's other addresses (shared/ipRetention.ts). A new event field holding one
 * joins this list.
 */
export const IP_DETAIL_FIELDS = ['ip', 'ips', 'lastIp', 'prefix'] as const;

/** Sent by `POST …/webhooks/:webhookId/test` only; no subscription needed. */
export const PING_EVENT_TYPE = 'webhook.ping';
