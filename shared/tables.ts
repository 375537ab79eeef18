// Tables the API and the collector both name in SQL (migrations/ creates them). One spelling here,
// so a rename is one edit and a typo is a compile error instead of a failing query at run time.
export const TABLE = {
  organizations: 'organizations',
  apiKeys: 'api_keys',
  usage: 'api_key_usage',
  usageHourly: 'api_key_usage_hourly',
  usageCurrentHours: 'api_key_usage_current_hours',
  usageLog: 'api_key_usage_log',
  usageSetAside: 'api_key_usage_set_aside',
  recentIps: 'api_key_recent_ips',
  failedIps: 'api_key_failed_ips',
  ipHistory: 'api_key_ip_history',
  deferredNetworkOrgs: 'deferred_network_orgs',
  keyEvents: 'key_events',
  webhooks: 'webhooks',
  webhookDeliveries: 'webhook_deliveries',
  webhookDeliveryAttempts: 'webhook_delivery_attempts',
  auditLog: 'audit_log',
  idempotencyKeys: 'idempotency_keys',
  collectorSpans: 'collector_listening_spans',
} as const;

/** A key's addresses: those of proven uses and those of failed attempts, each with its own count column. */
export const IP_TABLES = {
  proven: { table: TABLE.recentIps, count: 'request_count' },
  failed: { table: TABLE.failedIps, count: 'attempt_count' },
} as const;

/** Addresses kept per key and IP table: the collector trims to this after each flush, the API reads no more. */
export const RECENT_IPS_PER_KEY = 5;

/**
 * A key's hourly buckets live in two tables: the hours the flush still adds to (plain primary key,
 * HOT updates) and the closed hours the collector's upkeep moved out of it (collector/hourMove.ts;
 * covering primary key, index-only window sums). Each count is in exactly one of them at any
 * instant, and an hour may have a row in both (a late use after its move): readers sum both.
 */
export const HOUR_TABLES = [TABLE.usageHourly, TABLE.usageCurrentHours] as const;

/**
 * Both tables' buckets as one relation, for a FROM clause: `columns` of the rows matching `filter`,
 * which is applied in each branch so that each reads its own primary key.
 */
export const hourBuckets = (columns: string, filter: string) =>
  `(${HOUR_TABLES.map((table) => `select ${columns} from ${table} where ${filter}`).join(' union all ')})`;
