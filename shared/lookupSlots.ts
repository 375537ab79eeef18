// Node resolves a name (dns.lookup, getaddrinfo) on libuv's thread pool, four threads by default,
// which file reads, async crypto and zlib share. A lookup its caller gave up on goes on holding its
// thread until the name server answers or the system resolver's own timeouts pass (tens of
// seconds), and Node cannot cancel it. Four webhook URLs whose name server stopped answering took
// every thread: the process's other lookups (the database's host among them) and, in the API, the
// dashboard's static files waited behind them. A process's webhook lookups now take `total`
// threads at most, and one owner (an org) `perOwner` of them: a lookup waits for a slot until its
// caller's deadline, and holds it until the lookup itself ends, not until its caller stops waiting.

/** Half of libuv's default thread pool: the other half stays for everything else. */
export const WEBHOOK_LOOKUP_SLOTS = 2;

export interface LookupSlots {
  /** Resolves with the slot's release once `owner` may start a lookup; undefined if none came free within `waitMs`. */
  take(owner: string, waitMs: number): Promise<(() => void) | undefined>;
  /** Lookups holding a slot now. */
  readonly inUse: number;
  /** Whether `owner`'s own lookups hold its whole share: a wait in vain was then for its own. */
  holdsShare(owner: string): boolean;
}

interface Waiter {
  owner: string;
  grant: (release: () => void) => void;
}

export function lookupSlots(total = WEBHOOK_LOOKUP_SLOTS, perOwner = 1): LookupSlots {
  const held = new Map<string, number>();
  let inUse = 0;
  const waiting: Waiter[] = [];
  const mayStart = (owner: string) => inUse < total && (held.get(owner) ?? 0) < perOwner;

  function start(owner: string): () => void {
    inUse += 1;
    held.set(owner, (held.get(owner) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      inUse -= 1;
      const left = held.get(owner)! - 1;
      if (left > 0) held.set(owner, left);
      else held.delete(owner);
      wake();
    };
  }

  // In arrival order, past those whose owner still holds its share.
  function wake(): void {
    for (let i = 0; i < waiting.length && inUse < total;) {
      const waiter = waiting[i];
      if (!mayStart(waiter.owner)) {
        i += 1;
        continue;
      }
      waiting.splice(i, 1);
      waiter.grant(start(waiter.owner));
    }
  }

  return {
    get inUse() {
      return inUse;
    },
    holdsShare: (owner) => (held.get(owner) ?? 0) >= perOwner,
    take(owner, waitMs) {
      if (mayStart(owner)) return Promise.resolve(start(owner));
      return new Promise((resolve) => {
        const waiter: Waiter = {
          owner,
          grant: (release) => {
            clearTimeout(timer);
            resolve(release);
          },
        };
        // Not unref'd, as within()'s: its caller waits for it, and it is cleared at the grant.
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(waiter), 1);
          resolve(undefined);
        }, waitMs);
        waiting.push(waiter);
      });
    },
  };
}
