// Requests of each org in progress at once in this API process, at most `limit`
// (API_MAX_CONCURRENT_PER_ORG). Every request of an org holds a pooled database connection while
// its statements run, and the pool is every org's: one org's slow or many reads (a large key
// list sorted and searched, a long delivery history) could hold all of it, and every other org's
// requests then waited for a connection and failed with 503. Per process, as the pool is.
// Requests over the limit wait their turn, holding no connection (a dashboard's parallel reads
// are served one after another); beyond QUEUED_PER_RUNNING times the limit waiting, they are refused.
export const QUEUED_PER_RUNNING = 4;

export interface OrgConcurrency {
  /**
   * A request of the org: undefined if too many already wait (refuse it); otherwise a promise that
   * settles when it may start, after which it must call leave() once, when it ends.
   */
  enter(orgId: string): Promise<void> | undefined;
  leave(orgId: string): void;
  readonly limit: number;
  /** Orgs with a request in progress or waiting now. */
  busyOrgs(): number;
}

interface OrgTurns {
  running: number;
  waiting: Array<() => void>;
}

export function orgConcurrency(limit: number): OrgConcurrency {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const orgs = new Map<string, OrgTurns>();
  return {
    limit,
    enter(orgId) {
      const org = orgs.get(orgId) ?? orgs.set(orgId, { running: 0, waiting: [] }).get(orgId)!;
      if (org.running < limit) {
        org.running += 1;
        return Promise.resolve();
      }
      if (org.waiting.length >= QUEUED_PER_RUNNING * limit) return undefined;
      return new Promise<void>((start) => org.waiting.push(start));
    },
    leave(orgId) {
      const org = orgs.get(orgId);
      if (!org) return;
      // The place passes to the next waiting request: the running count stays.
      const next = org.waiting.shift();
      if (next) next();
      else if (--org.running === 0) orgs.delete(orgId);
    },
    busyOrgs: () => orgs.size,
  };
}
