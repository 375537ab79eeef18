import { setBounded } from './boundedMap';

// Changes (key and webhook writes) one org may make in this API process, as a token bucket of
// API_WRITES_PER_ORG_MINUTE refilled evenly over the minute. Every change writes its rows and an
// audit entry that is never deleted (append-only), and the write path is every org's: a key with
// keys:write changing a key's networks in a loop grew the shared database by an audit row per
// request, without bound. Only the change routes count (a dormant clean-up's dry run among them),
// but a key's revocation (REVOKE_KEY); reads do not. Per process, as the other per-org limits.

/** Counted since start, for the metrics. */
export interface OrgWriteStats {
  /** Changes refused because their org had used its budget. */
  refused: number;
}

export interface OrgWriteBudget {
  /** Takes one change from the org's budget: 0 if it may go ahead, else how many ms until it may. */
  take(orgId: string): number;
  /** Gives back what a take that went ahead took, for a request refused before it could change anything. */
  giveBack(orgId: string): void;
  readonly perMinute: number;
  readonly stats: Readonly<OrgWriteStats>;
}

interface Bucket {
  tokens: number;
  at: number;
}

// Orgs are made by operators, not callers, but an evicted org only gets a full bucket back early.
const MAX_ORGS = 100_000;
const MINUTE_MS = 60_000;

export function orgWriteBudget(perMinute: number, now: () => number): OrgWriteBudget {
  if (!Number.isInteger(perMinute) || perMinute < 1) throw new RangeError(`perMinute must be a positive integer, got ${perMinute}`);
  const perMs = perMinute / MINUTE_MS;
  const buckets = new Map<string, Bucket>();
  const stats: OrgWriteStats = { refused: 0 };
  return {
    perMinute,
    stats,
    take(orgId) {
      const at = now();
      const bucket = buckets.get(orgId);
      const tokens = bucket ? Math.min(perMinute, bucket.tokens + Math.max(0, at - bucket.at) * perMs) : perMinute;
      if (tokens >= 1) {
        setBounded(buckets, orgId, { tokens: tokens - 1, at }, MAX_ORGS);
        return 0;
      }
      setBounded(buckets, orgId, { tokens, at }, MAX_ORGS);
      stats.refused += 1;
      return Math.ceil((1 - tokens) / perMs);
    },
    giveBack(orgId) {
      const bucket = buckets.get(orgId);
      if (bucket) bucket.tokens = Math.min(perMinute, bucket.tokens + 1);
    },
  };
}
