// Keys an append found in the org their line named, trusted for a while so the next appends need
// not ask again. With 100 k keys used every second, asking every append took PostgreSQL 0.19 s
// per 100 k keys, every second, on the machine whose cores the receive loop needs
// (docs/benchmarks.md §4). Only keys the database confirmed enter, so forged ids never do; a key
// deleted while trusted still reaches the log until its entry ages out, and the fold, which checks
// every key again, drops its uses there. Pure: the clock is injected, and entries age out in two
// generations, so memory holds the keys confirmed within about the last TTL, and nothing is
// trusted for longer, even when the clock steps back.
//
// Keys the collector's key list holds are trusted too, while the list vouches for them: it is
// itself a read of api_keys, and it saves the append's one big question, at a collector's first
// append and each time a whole generation of confirmed keys ages out (100 k keys: 0.3-0.6 s of a
// flush, docs/benchmarks.md §4). Those keys are looked up (a hash), not copied in; a key the
// aggregator found listed in the list's current generation (listedIn) is not even hashed again.

import { NOT_LISTED, type KeyList } from './keyList';

export interface KeyRef {
  keyId: string;
  orgId: string;
  /** The key list's generation that listed the key (KeyUsageDelta.listedIn). */
  listedIn?: number;
}

/** The key list (collector/keyList.ts) while it vouches that its keys exist; undefined when it does not. */
export type ListedKeys = () => Pick<KeyList, 'admits' | 'generation'> | undefined;

export class KnownKeys {
  #current = new Map<string, string>();
  #previous = new Map<string, string>();
  // One copy of each org id, shared by the entries of its keys confirmed since the last turn.
  #orgs = new Map<string, string>();
  #turnedAt: number;

  /** ttlMs > 0: how long a confirmed key is trusted at most. */
  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number,
    private readonly listed: ListedKeys = () => undefined,
  ) {
    this.#turnedAt = now();
  }

  /** The keys of `keys` neither listed nor confirmed in the org they name within the TTL, in their order. */
  unconfirmed<K extends KeyRef>(keys: readonly K[]): K[] {
    this.#age();
    const list = this.listed();
    const confirmed = ({ keyId, orgId }: K) => (this.#current.get(keyId) ?? this.#previous.get(keyId)) === orgId;
    if (list === undefined) return keys.filter((k) => !confirmed(k));
    const listed = ({ keyId, orgId, listedIn }: K) => (listedIn !== NOT_LISTED && listedIn === list.generation) || list.admits(keyId, orgId);
    return keys.filter((k) => !listed(k) && !confirmed(k));
  }

  /** Trusts `keys`, just confirmed by the database. */
  confirm(keys: readonly KeyRef[]): void {
    this.#age();
    for (const { keyId, orgId } of keys) this.#current.set(keyId, this.#orgOf(orgId));
  }

  #orgOf(orgId: string): string {
    let org = this.#orgs.get(orgId);
    if (org === undefined) this.#orgs.set((org = orgId), org);
    return org;
  }

  // Generations turn on a grid of half TTLs from the start, whenever the clock is next read: an
  // entry lives until the second turn after its confirmation, at most a TTL. A clock that went
  // back (a wall-clock step) would stop the turns until it caught up: everything is forgotten then.
  #age(): void {
    const half = this.ttlMs / 2;
    const now = this.now();
    const elapsed = now - this.#turnedAt;
    const turns = Math.floor(elapsed / half);
    if (turns === 0) return;
    this.#previous = turns === 1 ? this.#current : new Map();
    this.#current = new Map();
    this.#orgs = new Map();
    this.#turnedAt = elapsed < 0 ? now : this.#turnedAt + turns * half;
  }
}
