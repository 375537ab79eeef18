// The (key, org) pairs that exist in PostgreSQL, as the collector last read them: the aggregator's
// admission list. Keys it lacks take half of COLLECTOR_MAX_PENDING_KEYS at most, so a flood of
// forged ids fills half the cap and the keys that exist keep the other half
// (collector/aggregator.ts). Pure: collector/keyListSync.ts reads PostgreSQL and hands the pairs in.
//
// Held as 53-bit hashes in an open-addressing table of doubles, a power of two at least twice the
// keys: 16-32 B a key (1 M keys in 16 MiB, bench/keyList.ts), where a Map of id strings took about
// 128 B a key, and
// a lookup is one hash and a probe or two. A forged pair is admitted only if its hash equals a
// listed one's: with n keys listed, n / 2^53 per forged id (1 M keys: one in 9 × 10⁹). The seed is
// drawn per process, and the collector answers nothing on UDP, so no sender can search for collisions.

const UUID_CHARS = 36;
/** A (key id, org id) pair as the full read packs it: two UUIDs in their text form, back to back. */
export const PACKED_PAIR_CHARS = 2 * UUID_CHARS;
const LOW_BITS = 2 ** 21; // the second lane's 21 bits below the first lane's 32: 53 in all
const MIN_SLOTS = 1024;
const EMPTY = 0; // a hash of 0 is stored as 1: a pair that hashes to 1 is then admitted with it
/** The generation before the first full read, which lists nothing: a key no generation listed. */
export const NOT_LISTED = 0;

// Generations are numbered across every list made by this module instance (a worker thread has its
// own, and holds no list), so a key's generation read from one list never matches another's.
let lastGeneration = NOT_LISTED;

export class KeyList {
  #slots = new Float64Array(MIN_SLOTS);
  #size = 0;
  #loaded = false;
  #generation = NOT_LISTED;

  /** `seed`: an integer below 2^31, drawn per process. */
  constructor(private readonly seed: number) {}

  /** False until the first full read: until then every key is admitted, as without a list. */
  get loaded(): boolean {
    return this.#loaded;
  }

  /**
   * Which full read the list holds: NOT_LISTED before the first, a new number at each. A pair
   * listed in a generation stays listed until the next (add() only adds), so a caller that found it
   * listed may keep that answer while the generation is the same instead of hashing the pair again.
   */
  get generation(): number {
    return this.#generation;
  }

  get size(): number {
    return this.#size;
  }

  hash(keyId: string, orgId: string): number {
    return this.#hashOf(keyId, 0, keyId.length, orgId, 0, orgId.length);
  }

  /** The pair at `at` of text packed as the full read packs it: a key id, then its org id, 36 characters each. */
  hashPacked(text: string, at: number): number {
    return this.#hashOf(text, at, at + UUID_CHARS, text, at + UUID_CHARS, at + PACKED_PAIR_CHARS);
  }

  #hashOf(keyText: string, keyFrom: number, keyTo: number, orgText: string, orgFrom: number, orgTo: number): number {
    let a = this.seed ^ 0x811c9dc5;
    let b = Math.imul(this.seed, 0x9e3779b1) ^ 0x27d4eb2f;
    for (let i = keyFrom; i < keyTo; i += 1) {
      const c = keyText.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995);
    }
    // A separator no id contains, so ("ab", "c") and ("a", "bc") differ.
    a = Math.imul(a ^ 0x2f, 0x01000193);
    b = Math.imul(b ^ 0x2f, 0x5bd1e995);
    for (let i = orgFrom; i < orgTo; i += 1) {
      const c = orgText.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995);
    }
    return (mix(a) >>> 0) * LOW_BITS + ((mix(b) >>> 0) % LOW_BITS) || 1;
  }

  /** The whole list, from a full read of api_keys: forgets keys deleted since the last one. */
  replace(hashes: readonly number[]): void {
    this.#slots = new Float64Array(slotsFor(hashes.length));
    this.#size = 0;
    for (const hash of hashes) this.#insert(hash);
    this.#loaded = true;
    this.#generation = ++lastGeneration;
  }

  /** Keys created since the last read (listed already or not). */
  add(hashes: readonly number[]): void {
    for (const hash of hashes) {
      if (2 * (this.#size + 1) > this.#slots.length) this.#grow();
      this.#insert(hash);
    }
  }

  /** Whether the pair is listed; every pair is before the first full read. */
  admits(keyId: string, orgId: string): boolean {
    if (!this.#loaded) return true;
    const hash = this.hash(keyId, orgId);
    return this.#slots[this.#slotFor(hash)] === hash;
  }

  #insert(hash: number): void {
    const at = this.#slotFor(hash);
    if (this.#slots[at] !== EMPTY) return;
    this.#slots[at] = hash;
    this.#size += 1;
  }

  // The slot holding `hash`, or the empty one where it would go. Linear probing in a table never
  // more than half full: an empty slot is always found.
  #slotFor(hash: number): number {
    const slots = this.#slots;
    const mask = slots.length - 1;
    let at = slotOf(hash) & mask;
    while (slots[at] !== hash && slots[at] !== EMPTY) at = (at + 1) & mask;
    return at;
  }

  #grow(): void {
    const old = this.#slots;
    this.#slots = new Float64Array(old.length * 2);
    this.#size = 0;
    for (const value of old) if (value !== EMPTY) this.#insert(value);
  }
}

// The first lane, 32 well-mixed bits: the slot index.
const slotOf = (hash: number) => Math.floor(hash / LOW_BITS);

function slotsFor(keys: number): number {
  let slots = MIN_SLOTS;
  while (slots < 2 * keys) slots *= 2;
  return slots;
}

// murmur3's finalizer: every input bit reaches every output bit, so ids that differ in one
// character (sequential ids of another generator) land far apart.
function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return h ^ (h >>> 16);
}
