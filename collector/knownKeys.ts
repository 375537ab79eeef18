// Keys an append found in the org their line named, trusted for a while so the next appends need
// not ask again. With 100 k keys used every second, asking every append cost PostgreSQL about
// 0.19 s of CPU a second, on the machine whose cores the receive loop needs (docs/benchmarks.md §3).
// Only keys the database confirmed enter, so forged ids never do; a key deleted while trusted still
// reaches the log until its entry ages out, and the fold, which checks every key again, drops its
// uses there. Pure: the clock is injected, and entries age out in two generations, so memory holds
// the keys confirmed within about the last TTL, and nothing is trusted for longer.

export interface KeyRef {
  keyId: string;
  orgId: string;
}

export class KnownKeys {
  #current = new Map<string, string>();
  #previous = new Map<string, string>();
  #turnedAt: number;

  /** ttlMs > 0: how long a confirmed key is trusted at most. */
  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {
    this.#turnedAt = now();
  }

  /** The keys of `keys` not confirmed in the org they name within the TTL, in their order. */
  unconfirmed<K extends KeyRef>(keys: readonly K[]): K[] {
    this.#age();
    return keys.filter(({ keyId, orgId }) => (this.#current.get(keyId) ?? this.#previous.get(keyId)) !== orgId);
  }

  /** Trusts `keys`, just confirmed by the database. */
  confirm(keys: readonly KeyRef[]): void {
    this.#age();
    for (const { keyId, orgId } of keys) this.#current.set(keyId, orgId);
  }

  get size(): number {
    return this.#current.size + this.#previous.size;
  }

  // Generations turn on a grid of half TTLs from the start, whenever the clock is next read: an
  // entry lives until the second turn after its confirmation, at most a TTL.
  #age(): void {
    const half = this.ttlMs / 2;
    const turns = Math.floor((this.now() - this.#turnedAt) / half);
    if (turns < 1) return;
    this.#previous = turns === 1 ? this.#current : new Map();
    this.#current = new Map();
    this.#turnedAt += turns * half;
  }
}
