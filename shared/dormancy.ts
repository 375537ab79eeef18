// What "dormant" means, the one definition behind the usage list's `dormant` filter and field
// (api/usage), the revoke-dormant clean-up (API and CLI) and the collector's key.dormant sweep:
// a key that can still be used (neither revoked nor expired at `now`) whose last proven use, or
// its creation if it was never used, is older than the threshold. Counting from creation is what
// an operator means by "unused for 90 days": a key minted yesterday has not been idle that long.
// A rotation counts as a creation: its secret is new, and a key rotated an hour ago (to be
// deployed, or because it leaked) was revoked by revoke-dormant before anyone could use the new
// secret when only its last use and creation counted. A restore (a key the clean-up revoked, given
// back) counts too: restored unused, the next clean-up revoked it again at once.

/** When the key's idle time started: its last proven use, creation, rotation or restore, the latest. */
export const IDLE_SINCE_SQL = 'greatest(u.last_used_at, k.rotated_at, k.created_at, k.restored_at)';

/**
 * The rule as an SQL condition over `api_keys k` and its `api_key_usage u` row (left-joined, so
 * `u` may be null). `now` and `idleSince` (now minus the threshold) are SQL expressions.
 */
export function dormantKeySql(now: string, idleSince: string): string {
  return `(k.revoked_at is null and (k.expires_at is null or k.expires_at > ${now})
    and ${IDLE_SINCE_SQL} < ${idleSince})`;
}
