// The closed list of key event types (issue 10). Webhooks subscribe to some of them, or to '*'.
export const KEY_EVENT_TYPES = [
  'key.first_use',
  'key.new_ip',
  'key.outside_networks',
  'key.spike',
  'key.revoked_used',
  'key.expired_used',
  'key.failed_attempts',
  'key.dormant',
  'key.expiring',
] as const;

/** Sent by `POST …/webhooks/:webhookId/test` only; no subscription needed. */
export const PING_EVENT_TYPE = 'webhook.ping';
