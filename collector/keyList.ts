// The (key, org) pairs that exist in PostgreSQL, as the collector last read them: the aggregator's
// admission list. Keys it lacks take half of COLLECTOR_MAX_PENDING_KEYS at most, so a flood of
// forged ids fills half the cap and the keys that exist keep the other half
// (collector/aggregator.ts). Pure: collector/keyListSync.ts reads PostgreSQL and hands the pairs in.
//
// Held as 53-bit hashes in one sorted Float64Array, 8 B a key (1 M keys in 8 MiB), where a Map of
// id strings took about 128 B a key. A forged pair is admitted only if its hash equals a listed
// one's: with n keys listed, n / 2^53 per forged id (1 M keys: one in 9 × 10⁹). The seed is drawn
// per process, and the collector answers nothing on UDP, so no sender can search for collisions.

const LOW_BITS = 2 ** 21; // the second lane's 21 bits below the first lane's 32: 53 in all

export class KeyList {
  #sorted = new Float64Array(0);
  // Keys read since the last full read: a refresh adds the newly created ones here.
  #recent = new Set<number>();
  #loaded = false;

  /** `seed`: a 32-bit integer drawn per process. */
  constructor(private readonly seed: number) {}

  /** False until the first full read: until then every key is admitted, as without a list. */
  get loaded(): boolean {
    return this.#loaded;
  }

  get size(): number {
    return this.#sorted.length + this.#recent.size;
  }

  hash(keyId: string, orgId: string): number {
    let a = this.seed ^ 0x811c9dc5;
    let b = Math.imul(this.seed, 0x9e3779b1) ^ 0x27d4eb2f;
    for (let i = 0; i < keyId.length; i += 1) {
      const c = keyId.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995);
    }
    // A separator no id contains, so ("ab", "c") and ("a", "bc") differ.
    a = Math.imul(a ^ 0x2f, 0x01000193);
    b = Math.imul(b ^ 0x2f, 0x5bd1e995);
    for (let i = 0; i < orgId.length; i += 1) {
      const c = orgId.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995);
    }
    return (mix(a) >>> 0) * LOW_BITS + ((mix(b) >>> 0) % LOW_BITS);
  }

  /** The whole list, from a full read of api_keys: forgets keys deleted since the last one. */
  replace(hashes: readonly number[]): void {
    this.#sorted = Float64Array.from(hashes).sort();
    this.#recent = new Set();
    this.#loaded = true;
  }

  /** Keys created since the last read (listed already or not). */
  add(hashes: readonly number[]): void {
    for (const hash of hashes) if (!this.#has(hash)) this.#recent.add(hash);
  }

  /** Whether the pair is listed; every pair is before the first full read. */
  admits(keyId: string, orgId: string): boolean {
    return !this.#loaded || this.#has(this.hash(keyId, orgId));
  }

  #has(hash: number): boolean {
    const sorted = this.#sorted;
    let low = 0;
    let high = sorted.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const value = sorted[middle];
      if (value === hash) return true;
      if (value < hash) low = middle + 1;
      else high = middle - 1;
    }
    return this.#recent.has(hash);
  }
}

// murmur3's finalizer: every input bit reaches every output bit, so ids that differ in one
// character (sequential ids of another generator) land far apart.
function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return h ^ (h >>> 16);
}
