// Requests of each org in progress at once in this API process, at most `limit`
// (API_MAX_CONCURRENT_PER_ORG). Every request of an org holds pooled database connections while
// its statements run, and the pool is every org's: one org's slow or many reads (a large key
// list sorted and searched, a long delivery history) could hold all of it, and every other org's
// requests then waited for a connection and failed with 503. Per process, as the pool is.
// Requests over the limit wait their turn, holding no connection (a dashboard's parallel reads
// are served one after another); beyond QUEUED_PER_RUNNING times the limit waiting, they are refused.
export const QUEUED_PER_RUNNING = 4;

/** A request's place: running once `started` settles, or waiting until then. */
export interface Turn {
  started: Promise<void>;
  /** Gives the place back (to the next waiting request), or leaves the queue if still waiting. Once; later calls do nothing. */
  release(): void;
  /** Whether it holds its place now (not waiting, not released). */
  readonly running: boolean;
}

/** Counted since start, for the metrics. */
export interface OrgTurnStats {
  /** Requests that waited for their org's turn. */
  waited: number;
  /** Requests refused because too many of their org's waited. */
  refused: number;
}

export interface OrgConcurrency {
  /** A request of the org: undefined if too many already wait (refuse it). */
  enter(orgId: string): Turn | undefined;
  readonly limit: number;
  readonly stats: Readonly<OrgTurnStats>;
  /** Orgs with a request in progress or waiting now. */
  busyOrgs(): number;
  /** Requests waiting for their org's turn now. */
  waiting(): number;
}

interface OrgTurns {
  running: number;
  waiting: Array<() => void>;
}

export function orgConcurrency(limit: number): OrgConcurrency {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const orgs = new Map<string, OrgTurns>();
  const stats: OrgTurnStats = { waited: 0, refused: 0 };
  let waiting = 0;
  const handOn = (orgId: string, org: OrgTurns) => {
    // The place passes to the next waiting request: the running count stays.
    const next = org.waiting.shift();
    if (next) {
      waiting -= 1;
      next();
    } else if (--org.running === 0) orgs.delete(orgId);
  };
  return {
    limit,
    enter(orgId) {
      const org = orgs.get(orgId) ?? orgs.set(orgId, { running: 0, waiting: [] }).get(orgId)!;
      if (org.running >= limit && org.waiting.length >= QUEUED_PER_RUNNING * limit) {
        stats.refused += 1;
        return undefined;
      }
      let state: 'waiting' | 'running' | 'released' = 'waiting';
      let start = () => {};
      const started = new Promise<void>((resolve) => (start = resolve));
      const begin = () => {
        state = 'running';
        start();
      };
      if (org.running < limit) {
        org.running += 1;
        begin();
      } else {
        org.waiting.push(begin);
        waiting += 1;
        stats.waited += 1;
      }
      return {
        started,
        release() {
          if (state === 'running') handOn(orgId, org);
          else if (state === 'waiting') {
            org.waiting.splice(org.waiting.indexOf(begin), 1);
            waiting -= 1;
          }
          state = 'released';
        },
        get running() {
          return state === 'running';
        },
      };
    },
    stats,
    busyOrgs: () => orgs.size,
    waiting: () => waiting,
  };
}
