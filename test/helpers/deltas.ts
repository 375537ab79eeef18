import type { KeyUsageDelta, UsageBatch } from '../../collector/aggregator';

/**
 * `k` as a plain object, every field read: a drained key is a PendingKey, whose Maps are getters
 * (made when first read), so a spread would leave them out and a strict comparison with a plain
 * delta would fail on the prototype alone.
 */
export function plainDelta(k: KeyUsageDelta): KeyUsageDelta {
  return {
    keyId: k.keyId,
    orgId: k.orgId,
    total: k.total,
    byOutcome: k.byOutcome,
    lastUsedAt: k.lastUsedAt,
    lastIp: k.lastIp,
    ips: k.ips,
    lastFailedAt: k.lastFailedAt,
    lastFailedIp: k.lastFailedIp,
    failedIps: k.failedIps,
    lastRevokedUseAt: k.lastRevokedUseAt,
    lastExpiredUseAt: k.lastExpiredUseAt,
    lastPreviousSecretAt: k.lastPreviousSecretAt,
    lastPreviousSecretIp: k.lastPreviousSecretIp,
    hours: k.hours,
    // Absent while the key holds none, as a decoded row's.
    ...(k.revokedIps === undefined ? {} : { revokedIps: k.revokedIps }),
    ...(k.expiredIps === undefined ? {} : { expiredIps: k.expiredIps }),
  };
}

/** The batch's keys as plain objects (plainDelta), in (org, key) order. */
export function plainKeys(keys: readonly KeyUsageDelta[]): KeyUsageDelta[] {
  return keys.map(plainDelta).sort((a, b) => `${a.orgId}${a.keyId}`.localeCompare(`${b.orgId}${b.keyId}`));
}

export const plainBatch = (batch: UsageBatch): UsageBatch => ({ ...batch, keys: plainKeys(batch.keys) });
