// Coalesces usage samples per (orgId, keyId) between flushes. Pure: the clock
// is injected and the flusher decides when to drain, so nothing here sleeps.
import { HEX_LOWER, OUTCOMES, UUID_LENGTH, uuidForm, zeroOutcomes, type Outcome, type UsageSample } from '../shared/usageWire';
import { NOT_LISTED, type KeyList } from './keyList';
import { PendingKey, TimeBase } from './pendingKey';
import { HOUR_MS } from '../shared/timeUnits';
import { networkOf } from '../shared/ipTruncation';

export interface IpStat {
  count: number;
  firstSeen: number;
  lastSeen: number;
}

// Counts per outcome in one hour bucket.
export type HourCounts = Record<Outcome, number>;

// One key's uses since the last drain. "Used" means the secret was proven: lastUsedAt, lastIp
// and ips move only for outcomes in PROVEN_OUTCOMES; a wrong secret is a failed attempt and
// moves only the failed* fields, so a stranger who knows a key's id cannot make it look used.
// A drained key is a PendingKey, whose times are getters and Maps made on first read: copy a delta field by
// field (as mergeBatches does), never with a spread, JSON or structuredClone, which leave them out.
export interface KeyUsageDelta {
  keyId: string;
  orgId: string;
  /** Every outcome, proven or not. */
  total: number;
  byOutcome: Record<Outcome, number>;
  /** -Infinity while the delta holds no proven use. */
  lastUsedAt: number;
  lastIp: string;
  ips: Map<string, IpStat>;
  /** -Infinity while the delta holds no failed attempt. */
  lastFailedAt: number;
  lastFailedIp: string;
  failedIps: Map<string, IpStat>;
  /** The right secret presented for a revoked (expired) key: its holder still uses it. -Infinity when not. */
  lastRevokedUseAt: number;
  lastExpiredUseAt: number;
  /**
   * The addresses of the revoked (expired) uses, for their event: absent while the delta holds none
   * (a row an earlier collector logged holds none either). The event named lastIp, the newest use
   * of any outcome: after a revoke often the rightful service still retrying, and the leaked
   * secret's holder was in no event.
   */
  revokedIps?: Map<string, IpStat>;
  expiredIps?: Map<string, IpStat>;
  /**
   * The newest proven use of the key's previous secret (a rotation's grace period, a line tagged
   * `secret:previous`) and its address: -Infinity and '' when none. A wrong secret never sets it.
   */
  lastPreviousSecretAt: number;
  lastPreviousSecretIp: string;
  hours: Map<number, HourCounts>;
  /**
   * The key list's generation that listed the key when the aggregator took it (KeyList.generation);
   * NOT_LISTED, or absent, when none did: its append hashes it again.
   */
  listedIn?: number;
}

export interface UsageBatch {
  keys: KeyUsageDelta[];
  uses: number;
}

export interface AggregatorOptions {
  maxKeys: number;
  maxIpsPerKey?: number;
  /** How far before the clock a sample's own timestamp (`|T`) may lie and still be believed (never after it). */
  timestampWindowMs?: number;
  /**
   * The keys that exist (collector/keyList.ts): keys it lacks take half of maxKeys at most
   * (rounded down), so forged ids cannot take the other half. Without it every new key is taken
   * up to maxKeys.
   */
  listedKeys?: Pick<KeyList, 'admits' | 'loaded' | 'generation'>;
  now: () => number;
}

const REFUSED = -1;
// A key the aggregator does not take because its ids are not lower-case UUIDs (see #admission).
const MALFORMED = -2;
const DEFAULT_MAX_IPS_PER_KEY = 16;
// Merged batches (a failed write's retries) keep, beyond a key's newest proven addresses, the
// first address of up to this many other networks: see keptIps. As many again as the newest: a
// held batch's key holds at most 1.5 times the addresses of a pending one.
export const MERGED_NETWORKS_PER_KEY = 16;
// The part of the cap kept apart for orgs holding less than that part (see #admission).
const CROWDED_SHARE = 20;

/** The smallest cap under which `keys` keys of one org are all taken (benchmarks of one org's keys). */
export const capHolding = (keys: number) => Math.ceil((keys * CROWDED_SHARE) / (CROWDED_SHARE - 1));
export const DEFAULT_TIMESTAMP_WINDOW_MS = HOUR_MS;

export class Aggregator {
  readonly #maxKeys: number;
  readonly #maxIpsPerKey: number;
  readonly #timestampWindowMs: number;
  readonly #now: () => number;
  readonly #listedKeys: AggregatorOptions['listedKeys'];
  readonly #maxUnlisted: number;
  // Keyed by the last hex digits of the key id: finding a string key in a Map hashes a string
  // fresh from the packet, which profiled at about half the cost of parsing a line; a small
  // integer hashes for free. The first key with each tail number is here, any other with the
  // same number in #sharedTails by its id, so colliding ids (chosen by a sender, or not random)
  // cost what a Map of ids does. Only the first key of a tail being here (a key is never in
  // both) spares a new key one insert into a Map of 100 k: a tail no key holds yet needs no look
  // in #sharedTails either. The org nearly always matches, and is checked on the entry found: the
  // same id claimed under another org (forged, or a bug) goes to #otherOrgs under a composite key.
  #byTail = new Map<number, PendingKey>();
  #sharedTails = new Map<string, PendingKey>();
  #otherOrgs = new Map<string, PendingKey>();
  #uses = 0;
  #overflowSamples = 0;
  #overflowUses = 0;
  #unlistedOverflowUses = 0;
  #crowdingOverflowUses = 0;
  // Pending keys by org, counted only once the keys reach #crowdedAt (then kept up to the drain):
  // below it, no key pays for it.
  #byOrg: Map<string, number> | undefined;
  readonly #crowdedAt: number;
  readonly #orgShareWhenCrowded: number;
  // Pending keys the key list lacked when they were taken.
  #unlistedPending = 0;
  #outOfWindowSamples = 0;
  #malformedSamples = 0;
  #malformedUses = 0;
  #hourFor = NaN;
  #hour = NaN;
  // What this drain's keys count their times from: the hour of its first key (collector/pendingKey.ts).
  #base: TimeBase | undefined;
  #nearFull: { keys: number; observer: () => void } | undefined;
  // Keys given back after their write, for new keys to reuse (recycle).
  #written: PendingKey[] = [];

  constructor(options: AggregatorOptions) {
    this.#maxKeys = positiveInteger('maxKeys', options.maxKeys);
    this.#maxIpsPerKey = positiveInteger('maxIpsPerKey', options.maxIpsPerKey ?? DEFAULT_MAX_IPS_PER_KEY);
    this.#timestampWindowMs = nonNegativeInteger('timestampWindowMs', options.timestampWindowMs ?? DEFAULT_TIMESTAMP_WINDOW_MS);
    this.#now = options.now;
    this.#listedKeys = options.listedKeys;
    this.#maxUnlisted = Math.floor(this.#maxKeys / 2);
    this.#orgShareWhenCrowded = Math.floor(this.#maxKeys / CROWDED_SHARE);
    // A cap too small for a share (under CROWDED_SHARE keys) keeps no room apart.
    this.#crowdedAt = this.#orgShareWhenCrowded > 0 ? this.#maxKeys - this.#orgShareWhenCrowded : Infinity;
  }

  /**
   * `received` may be passed by a caller that stamps a whole packet once; it defaults to the
   * clock. The uses count at the sample's own timestamp if it has one within the window.
   */
  add(sample: UsageSample, received: number = this.#now()): boolean {
    const now = sample.timestamp === undefined ? received : this.#believable(sample.timestamp, received);
    const hour = this.#hourOf(now);
    const entry = this.#entryFor(sample, hour);
    if (entry === MALFORMED) {
      this.#malformedSamples++;
      this.#malformedUses += sample.count;
      return false;
    }
    if (entry === undefined) {
      this.#overflowSamples++;
      this.#overflowUses += sample.count;
      return false;
    }
    entry.add(now, hour, sample.ip, sample.outcome, sample.count, this.#maxIpsPerKey, sample.previousSecret === true);
    this.#uses += sample.count;
    return true;
  }

  // The lines of a datagram share one receipt time: its hour is worked out once (a `%` on a
  // double), not per line.
  #hourOf(now: number): number {
    if (now !== this.#hourFor) {
      this.#hourFor = now;
      this.#hour = now - (now % HOUR_MS);
    }
    return this.#hour;
  }

  // A client clock may be off, or a sender hostile: a timestamp beyond the window before our clock
  // would write the far past (a key looks dormant). One after it, even by a second, is not believed
  // either: a forged line an hour ahead held the key's last use there for the hour, and every real
  // use meanwhile lost to it, so its last address stayed the forger's. Such uses still count,
  // exactly, at the time they were received, and are counted apart.
  #believable(timestamp: number, received: number): number {
    if (timestamp <= received && received - timestamp <= this.#timestampWindowMs) return timestamp;
    this.#outOfWindowSamples++;
    return received;
  }

  // Bounds memory when a flood of distinct (forged) keys arrives faster than we flush: beyond
  // maxKeys a new key is refused (undefined); keys already pending keep counting exactly.
  #entryFor(sample: UsageSample, hour: number): PendingKey | typeof MALFORMED | undefined {
    const tail = idTail(sample.keyId);
    const fast = this.#byTail.get(tail);
    const entry = fast === undefined || fast.keyId === sample.keyId ? fast : this.#sharedTails.get(sample.keyId);
    if (entry !== undefined && entry.orgId === sample.orgId) return entry;
    if (entry === undefined) {
      const listedIn = this.#admission(sample);
      if (listedIn < 0) return listedIn === MALFORMED ? MALFORMED : undefined;
      const created = this.#newKey(sample, hour, listedIn);
      if (fast === undefined) this.#byTail.set(tail, created);
      else this.#sharedTails.set(sample.keyId, created);
      return this.#added(created);
    }
    const id = entryId(sample.orgId, sample.keyId);
    const other = this.#otherOrgs.get(id);
    if (other !== undefined) return other;
    const listedIn = this.#admission(sample);
    if (listedIn < 0) return listedIn === MALFORMED ? MALFORMED : undefined;
    const created = this.#newKey(sample, hour, listedIn);
    this.#otherOrgs.set(id, created);
    return this.#added(created);
  }

  // Whether a key not pending yet is refused (REFUSED): at the cap; and, with a key list, a key it
  // lacks once such keys hold half the cap (rounded down), so forged ids (listed never) take half
  // of it at most, while a key created since the list's last read is still taken outside a flood.
  // One lookup per new key per drain, not per line; but every line of a refused key is looked up
  // again. A key taken is told the list's generation that listed it (NOT_LISTED: none did), so the
  // usage log's append need not hash it again (collector/knownKeys.ts).
  // A key the list holds has ids read from PostgreSQL; any other must be lower-case UUIDs, as the
  // parser lets through: one that is not (an org id of 36 NULs was, until the parser's fix of
  // 2026-12-04) made every flush after it fail on the cast to uuid, holding back every key's uses.
  //
  // The last twentieth of the cap is kept for orgs holding less than a twentieth of it: one org's
  // keys (100,000 used in one interval, or a database outage that stops the drains) took the
  // whole cap, and every other org's new keys were refused. It starts above the 90 % at which a
  // held flush goes early (collector/flusher.ts), so a lone org loses at most that twentieth.
  #admission(sample: UsageSample): number {
    const pending = this.pendingKeys;
    if (pending >= this.#maxKeys) return REFUSED;
    if (pending >= this.#crowdedAt && this.#crowding(sample.orgId)) {
      this.#crowdingOverflowUses += sample.count;
      return REFUSED;
    }
    const list = this.#listedKeys;
    if (list !== undefined && list.loaded && list.admits(sample.keyId, sample.orgId)) return list.generation;
    if (!isCanonicalUuid(sample.keyId) || !isCanonicalUuid(sample.orgId)) return MALFORMED;
    if (list === undefined || !list.loaded) return NOT_LISTED;
    if (this.#unlistedPending < this.#maxUnlisted) {
      this.#unlistedPending += 1;
      return NOT_LISTED;
    }
    this.#unlistedOverflowUses += sample.count;
    return REFUSED;
  }

  #crowding(orgId: string): boolean {
    if (this.#byOrg === undefined) {
      this.#byOrg = new Map();
      for (const keys of [this.#byTail, this.#sharedTails, this.#otherOrgs]) for (const key of keys.values()) this.#countIn(key);
    }
    return (this.#byOrg.get(orgId) ?? 0) >= this.#orgShareWhenCrowded;
  }

  // A key the loaded list lacks is not its org's: anyone may send ids naming a victim's org id, and
  // a twentieth of the cap of them made the victim's real keys count as crowding, refused where
  // every other org's were taken (a review). Such keys are bounded by their own half of the cap.
  #countIn(key: PendingKey): void {
    if (key.listedIn === NOT_LISTED && this.#listedKeys?.loaded === true) return;
    this.#byOrg!.set(key.orgId, (this.#byOrg!.get(key.orgId) ?? 0) + 1);
  }

  // A written key's object if one was given back (recycle), else a new one.
  #newKey(sample: UsageSample, hour: number, listedIn: number): PendingKey {
    const base = this.#baseFor(hour);
    return this.#written.pop()?.reset(sample.keyId, sample.orgId, hour, base, listedIn) ?? new PendingKey(sample.keyId, sample.orgId, hour, base, listedIn);
  }

  #baseFor(hour: number): TimeBase {
    return (this.#base ??= new TimeBase(hour));
  }

  // The one place a new key is counted in: the observer hears when the keys reach its mark.
  #added(entry: PendingKey): PendingKey {
    if (this.#byOrg !== undefined) this.#countIn(entry);
    if (this.#nearFull !== undefined && this.pendingKeys === this.#nearFull.keys) this.#nearFull.observer();
    return entry;
  }

  /**
   * Calls `observer` when a new key brings the pending keys to `fraction` of the cap, once each time
   * they reach it (a drain empties them). It runs inside add(): it must not drain, only arrange to.
   */
  onNearFull(fraction: number, observer: () => void): void {
    this.#nearFull = { keys: Math.max(1, Math.ceil(fraction * this.#maxKeys)), observer };
  }

  /**
   * Gives back a drained batch's keys once they are written and nothing reads them any more (the
   * flusher, when its write succeeded): their objects become the next new keys. Every pending key
   * lived until its write, so with 100 k distinct keys a second V8's young generation copied each
   * one, and that was most of a line's cost (docs/benchmarks.md §3b); a reused key stays in the
   * old generation. Keeps at most the cap's worth. Whoever still held one would see a new key's
   * counts in it: the store must not keep a batch's keys past its write (UsageStore.write).
   */
  recycle(keys: readonly KeyUsageDelta[]): void {
    for (const key of keys) {
      if (this.#written.length >= this.#maxKeys) return;
      if (key instanceof PendingKey && key.giveBack()) this.#written.push(key);
    }
  }

  drain(): UsageBatch {
    const keys: KeyUsageDelta[] = [...this.#byTail.values(), ...this.#sharedTails.values(), ...this.#otherOrgs.values()];
    const batch = { keys, uses: this.#uses };
    this.#byTail = new Map();
    this.#sharedTails = new Map();
    this.#otherOrgs = new Map();
    this.#uses = 0;
    this.#unlistedPending = 0;
    this.#byOrg = undefined;
    this.#base = undefined;
    return batch;
  }

  get pendingKeys(): number {
    return this.#byTail.size + this.#sharedTails.size + this.#otherOrgs.size;
  }

  get overflowSamples(): number {
    return this.#overflowSamples;
  }

  get overflowUses(): number {
    return this.#overflowUses;
  }

  /** Of overflowUses, the uses of keys the key list lacks, refused because such keys held half the cap. */
  get unlistedOverflowUses(): number {
    return this.#unlistedOverflowUses;
  }

  /** Of overflowUses, the uses of new keys refused in the cap's last twentieth because their org held a twentieth of it. */
  get crowdingOverflowUses(): number {
    return this.#crowdingOverflowUses;
  }

  /** Samples not taken because their key or org id is not a lower-case UUID: a parser's bug. */
  get malformedSamples(): number {
    return this.#malformedSamples;
  }

  /** The uses of malformedSamples. */
  get malformedUses(): number {
    return this.#malformedUses;
  }

  /** Samples whose own timestamp lay outside the window, counted at their receipt time instead. */
  get outOfWindowSamples(): number {
    return this.#outOfWindowSamples;
  }
}

// Merges batches (e.g. one whose write failed with the next drain) into new
// objects; inputs are left untouched so a caller can still retry them.
export function mergeBatches(batches: readonly UsageBatch[], maxIpsPerKey = DEFAULT_MAX_IPS_PER_KEY): UsageBatch {
  positiveInteger('maxIpsPerKey', maxIpsPerKey);
  const merged = new Map<string, KeyUsageDelta>();
  let uses = 0;
  for (const batch of batches) {
    uses += batch.uses;
    for (const from of batch.keys) {
      const id = entryId(from.orgId, from.keyId);
      let into = merged.get(id);
      // Without listedIn: the merged keys may have been admitted under different generations of
      // the key list, so the append looks the key up again.
      if (into === undefined) {
        into = emptyDelta(from.keyId, from.orgId);
        merged.set(id, into);
      }
      mergeInto(into, from);
    }
  }
  const keys = [...merged.values()];
  for (const delta of keys) {
    delta.ips = keptIps(delta.ips, maxIpsPerKey);
    // Failed attempts' addresses feed no history and no event: the newest only. So do refused uses'
    // beyond their event's list.
    delta.failedIps = keptIps(delta.failedIps, maxIpsPerKey, 0);
    if (delta.revokedIps !== undefined) delta.revokedIps = keptIps(delta.revokedIps, maxIpsPerKey, 0);
    if (delta.expiredIps !== undefined) delta.expiredIps = keptIps(delta.expiredIps, maxIpsPerKey, 0);
  }
  return { keys, uses };
}

/**
 * Each key's deltas merged into the first of them, in place, as they are added: for deltas nobody
 * else holds (the usage log's, decoded for a fold), which mergeBatches would copy first. A fold
 * adds each row as it reads it, so it holds one delta per key, not one per row. Addresses are
 * capped as mergeBatches caps them, once every delta is in.
 */
export class DeltaCoalescer {
  private readonly byKey = new Map<string, KeyUsageDelta>();
  constructor(private readonly maxIpsPerKey = DEFAULT_MAX_IPS_PER_KEY) {}

  add(delta: KeyUsageDelta): void {
    const id = entryId(delta.orgId, delta.keyId);
    const into = this.byKey.get(id);
    if (into === undefined) this.byKey.set(id, delta);
    else mergeInto(into, delta);
  }

  keys(): KeyUsageDelta[] {
    const keys = [...this.byKey.values()];
    for (const delta of keys) {
      if (delta.ips.size > this.maxIpsPerKey) delta.ips = keptIps(delta.ips, this.maxIpsPerKey);
      if (delta.failedIps.size > this.maxIpsPerKey) delta.failedIps = keptIps(delta.failedIps, this.maxIpsPerKey, 0);
      if (delta.revokedIps !== undefined && delta.revokedIps.size > this.maxIpsPerKey) delta.revokedIps = keptIps(delta.revokedIps, this.maxIpsPerKey, 0);
      if (delta.expiredIps !== undefined && delta.expiredIps.size > this.maxIpsPerKey) delta.expiredIps = keptIps(delta.expiredIps, this.maxIpsPerKey, 0);
    }
    return keys;
  }
}

function mergeInto(into: KeyUsageDelta, from: KeyUsageDelta): void {
  // Read before byOutcome changes, whatever `from` holds: a drained pending key's one hour is its
  // byOutcome until its hours are first read (PendingKey).
  const hours = into.hours;
  for (const [hour, counts] of from.hours) {
    const seen = hours.get(hour);
    if (seen === undefined) hours.set(hour, { ...counts });
    else for (const outcome of OUTCOMES) seen[outcome] = saturatingAdd(seen[outcome], counts[outcome]);
  }
  into.total = saturatingAdd(into.total, from.total);
  for (const outcome of OUTCOMES) into.byOutcome[outcome] = saturatingAdd(into.byOutcome[outcome], from.byOutcome[outcome]);
  if (from.lastUsedAt >= into.lastUsedAt) {
    into.lastUsedAt = from.lastUsedAt;
    into.lastIp = from.lastIp;
  }
  if (from.lastFailedAt >= into.lastFailedAt) {
    into.lastFailedAt = from.lastFailedAt;
    into.lastFailedIp = from.lastFailedIp;
  }
  // A max-merge as the others: the latest time wins, its address with it, whatever the order.
  if (from.lastPreviousSecretAt >= into.lastPreviousSecretAt && from.lastPreviousSecretAt !== -Infinity) {
    into.lastPreviousSecretAt = from.lastPreviousSecretAt;
    into.lastPreviousSecretIp = from.lastPreviousSecretIp;
  }
  into.lastRevokedUseAt = Math.max(into.lastRevokedUseAt, from.lastRevokedUseAt);
  into.lastExpiredUseAt = Math.max(into.lastExpiredUseAt, from.lastExpiredUseAt);
  mergeIps(into.ips, from.ips);
  mergeIps(into.failedIps, from.failedIps);
  if (from.revokedIps !== undefined) mergeIps((into.revokedIps ??= new Map()), from.revokedIps);
  if (from.expiredIps !== undefined) mergeIps((into.expiredIps ??= new Map()), from.expiredIps);
}

function mergeIps(into: Map<string, IpStat>, from: Map<string, IpStat>): void {
  for (const [ip, stat] of from) {
    const seen = into.get(ip);
    if (seen === undefined) {
      into.set(ip, { ...stat });
    } else {
      seen.count = saturatingAdd(seen.count, stat.count);
      seen.firstSeen = Math.min(seen.firstSeen, stat.firstSeen);
      seen.lastSeen = Math.max(seen.lastSeen, stat.lastSeen);
    }
  }
}

// Batches kept through a long database outage merge again and again; their sums stay exact
// integers (PostgreSQL's bigint saturates the same way, see keyusage_add) instead of rounding.
function saturatingAdd(a: number, b: number): number {
  return Math.min(a + b, Number.MAX_SAFE_INTEGER);
}

// Keeps the `max` most recently seen addresses and, of every other network (/24, /64) none of
// them is in, its first seen address, the earliest networks first, up to MERGED_NETWORKS_PER_KEY;
// ordered least recent first. The newest alone, a batch merged through a database outage lost
// every network a key had used before its last 16 addresses: never in its history, never raised
// as key.new_ip or key.outside_networks. The networks' bound keeps such a batch's memory bounded.
function keptIps(ips: Map<string, IpStat>, max: number, networks = MERGED_NETWORKS_PER_KEY): Map<string, IpStat> {
  const byLastSeen = [...ips].sort(([, a], [, b]) => a.lastSeen - b.lastSeen);
  if (byLastSeen.length <= max || networks === 0) return new Map(byLastSeen.slice(Math.max(0, byLastSeen.length - max)));
  const newest = byLastSeen.slice(byLastSeen.length - max);
  const covered = new Set(newest.map(([ip]) => networkOf(ip)));
  const firstOfNetwork = new Map<string, [string, IpStat]>();
  for (const entry of byLastSeen.slice(0, byLastSeen.length - max)) {
    const network = networkOf(entry[0]);
    const seen = firstOfNetwork.get(network);
    if (!covered.has(network) && (seen === undefined || entry[1].firstSeen < seen[1].firstSeen)) firstOfNetwork.set(network, entry);
  }
  const others = [...firstOfNetwork.values()].sort(([, a], [, b]) => a.firstSeen - b.firstSeen).slice(0, networks);
  return new Map([...others.sort(([, a], [, b]) => a.lastSeen - b.lastSeen), ...newest]);
}

/** The Maps may be given: a decoded usage log row's are. */
export function emptyDelta(
  keyId: string,
  orgId: string,
  ips = new Map<string, IpStat>(),
  failedIps = new Map<string, IpStat>(),
  hours = new Map<number, HourCounts>(),
): KeyUsageDelta {
  // -Infinity so the first add or merge always sets the last-seen times and addresses.
  return {
    keyId,
    orgId,
    total: 0,
    byOutcome: zeroOutcomes(),
    lastUsedAt: -Infinity,
    lastIp: '',
    ips,
    lastFailedAt: -Infinity,
    lastFailedIp: '',
    failedIps,
    lastRevokedUseAt: -Infinity,
    lastExpiredUseAt: -Infinity,
    lastPreviousSecretAt: -Infinity,
    lastPreviousSecretIp: '',
    hours,
  };
}

// The last 7 hex digits as a 28-bit integer (a small integer in V8): of a key id, digits that are
// random in UUID v4 and v7 alike. Any string gives some number; it is only an index.
function idTail(id: string): number {
  let tail = 0;
  for (let i = Math.max(0, id.length - 7); i < id.length; i++) {
    const c = id.charCodeAt(i);
    tail = (tail << 4) + (c & 0xf) + (c >> 6) * 9; // '0'-'9' → 0-9, 'a'-'f' → 10-15
  }
  return tail & 0xfffffff;
}

const isCanonicalUuid = (id: string) => id.length === UUID_LENGTH && uuidForm(id, 0) === HEX_LOWER;

// Length-prefixed so no (orgId, keyId) pair can collide with another,
// whatever characters the ids hold.
function entryId(orgId: string, keyId: string): string {
  return `${orgId.length}:${orgId}${keyId}`;
}

function nonNegativeInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  return value;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
  return value;
}
