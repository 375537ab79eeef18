// One key's uses while the aggregator adds them, kept so that a line is cheap to add; drained,
// the key is the KeyUsageDelta the flusher reads, its Maps made when first read. Per line the profile found
// the hour bucket's Map lookup, the outcome counters indexed by a string, and the address Map:
// with a new address on a full map of 16, V8 rebuilt the map's table on every line (a delete
// leaves a hole, the insert finds no room), and garbage collection took a third of the time. So
// the last hour's counts are kept at hand, outcomes go through a switch, addresses live in the key
// or one small array updated in place, and a key's Maps are made once, when a consumer first reads
// them. Nothing is added to a key once a consumer has read it (the aggregator hands a key out only
// at its drain, and adds nothing to it after): byOutcome and the Maps are made then, from the
// key's fields, and not kept in step with them.
// Times are kept as ms from their drain's base (TimeBase): an epoch ms is a double, which V8 keeps
// in a heap box of its own per field, and with 100 k distinct keys a second each key's boxes
// (seven, with its address's) lived a flush interval and made most of the garbage collectors' work.
// An offset is a small integer, held in the field itself. For the same reason the counts by outcome
// and a key's first address are fields of the key, not objects of their own: most keys are then one
// object for their interval (the byOutcome object, and the address list, are made when needed).
import { isProvenOutcome, zeroOutcomes, type Outcome } from '../shared/usageWire';
import type { HourCounts, IpStat, KeyUsageDelta } from './aggregator';
import { NOT_LISTED } from './keyList';

/** The time a drain's pending keys count their times from: one per drain, shared by its keys. */
export class TimeBase {
  constructor(readonly at: number) {}
}

// An idle key's (given back, not reused yet): it holds no drain's base.
const IDLE = new TimeBase(0);

// Which of a key's five last-seen times are set (none: -Infinity).
const USED = 1;
const FAILED = 2;
const REVOKED = 4;
const EXPIRED = 8;
const PREVIOUS_SECRET = 16;

export class PendingKey implements KeyUsageDelta {
  // Set by reset(), which the constructor calls: the aggregator reuses a written key for a new one.
  keyId!: string;
  orgId!: string;
  listedIn!: number;
  // The delta's counters and last-seen fields, updated in place from the first line: the key is
  // the delta the drain hands over (at 100 k distinct keys, a copy of each key made at the drain
  // doubled what each key allocated, and GC took 28 % of the time).
  total = 0;
  lastIp = '';
  lastFailedIp = '';
  lastPreviousSecretIp = '';
  #base!: TimeBase;
  #seen = 0;
  #lastUsed = 0;
  #lastFailed = 0;
  #lastRevokedUse = 0;
  #lastExpiredUse = 0;
  #lastPreviousSecret = 0;
  // The hour of the last line (from the base) and its counts; every hour in a Map once a second
  // one comes. While all lines were of one hour, that hour's counts are the key's byOutcome:
  // nothing to count twice or allocate for most keys.
  #hour!: number;
  #hourCounts: HourCounts | undefined;
  #hours: Map<number, HourCounts> | undefined;
  // The counts by outcome as fields of the key, and byOutcome made from them when first read (once
  // drained): with 100 k distinct keys a second, an object of its own per key lived a flush
  // interval, one of the key's four allocations.
  #ok = 0;
  #forbidden = 0;
  #expired = 0;
  #revoked = 0;
  #badSecret = 0;
  #crossOrg = 0;
  #byOutcome: Record<Outcome, number> | undefined;
  // The addresses: the first in the key itself (below), then a list while lines are added; the
  // drained key's Map once a consumer reads it, made then and not at the drain: the usage log's
  // append reads none (forEachIp), and with three Maps per key made at the drain, the drain and
  // encoding of a 100 k-key append took about twice the CPU (bench/appendEncode.ts: medians
  // 786-857 ms against 363-488, docs/benchmarks.md §4). No line is added once a Map is made.
  #ips: Addresses;
  #failedIps: Addresses;
  // The addresses of revoked (expired) uses, for their event: a list made by the first such use, so
  // a key whose uses are allowed carries nothing more, and an allowed line does nothing more.
  #revokedIps: Addresses;
  #expiredIps: Addresses;
  // The first proven address held in the key itself: most keys are used from one address in a
  // flush interval, and a list of their own (two heap objects) lived the interval. A second
  // address, or the Map's making, moves it into #ips, so at most one of the two holds addresses.
  #ip: string | undefined;
  #ipCount = 0;
  #ipFirst = 0;
  #ipLast = 0;
  #givenBack = false;

  /** A key is created for its first line, and with the hour of that line. */
  constructor(keyId: string, orgId: string, hour: number, base: TimeBase, listedIn: number) {
    this.reset(keyId, orgId, hour, base, listedIn);
  }

  /**
   * This object as a key just created for its first line (as the constructor makes one), for the
   * aggregator to reuse a key whose interval was written (Aggregator.recycle): every field back to
   * its start, so nothing of the earlier key is left in the new one.
   */
  reset(keyId: string, orgId: string, hour: number, base: TimeBase, listedIn: number): this {
    this.#givenBack = false;
    this.keyId = keyId;
    this.orgId = orgId;
    this.listedIn = listedIn;
    this.#base = base;
    this.#hour = hour - base.at;
    this.total = 0;
    this.lastIp = this.lastFailedIp = this.lastPreviousSecretIp = '';
    this.#seen = this.#lastUsed = this.#lastFailed = this.#lastRevokedUse = this.#lastExpiredUse = this.#lastPreviousSecret = 0;
    this.#hourCounts = this.#hours = undefined;
    this.#ok = this.#forbidden = this.#expired = this.#revoked = this.#badSecret = this.#crossOrg = 0;
    this.#byOutcome = undefined;
    this.#ips = this.#failedIps = this.#revokedIps = this.#expiredIps = undefined;
    this.#ip = undefined;
    this.#ipCount = this.#ipFirst = this.#ipLast = 0;
    return this;
  }

  /**
   * Marks the key given back to the aggregator, and lets go of what it held (its ids, addresses
   * and hours), so an idle key holds nothing but its fields; false if it was given back already (a
   * second give-back is ignored).
   */
  giveBack(): boolean {
    if (this.#givenBack) return false;
    this.reset('', '', 0, IDLE, NOT_LISTED);
    this.#givenBack = true;
    return true;
  }

  /** `previousSecret`: the line was tagged as a use of the key's previous secret. */
  add(now: number, hour: number, ip: string, outcome: Outcome, count: number, maxIps: number, previousSecret = false): void {
    const at = now - this.#base.at;
    if (hour - this.#base.at !== this.#hour) addTo(this.#countsOf(hour), outcome, count);
    else if (this.#hourCounts !== undefined) addTo(this.#hourCounts, outcome, count);
    this.total += count;
    this.#countOutcome(outcome, count);
    if (isProvenOutcome(outcome)) {
      if (this.#isLatest(USED, this.#lastUsed, at)) {
        this.#lastUsed = at;
        this.lastIp = ip;
      }
      this.#touchProvenIp(ip, count, at, maxIps);
      if (outcome === 'revoked') {
        if (this.#isLatest(REVOKED, this.#lastRevokedUse, at)) this.#lastRevokedUse = at;
        this.#revokedIps = touchIp(this.#revokedIps as RecentIps | undefined, ip, count, at, maxIps);
      } else if (outcome === 'expired') {
        if (this.#isLatest(EXPIRED, this.#lastExpiredUse, at)) this.#lastExpiredUse = at;
        this.#expiredIps = touchIp(this.#expiredIps as RecentIps | undefined, ip, count, at, maxIps);
      }
      if (previousSecret && this.#isLatest(PREVIOUS_SECRET, this.#lastPreviousSecret, at)) {
        this.#lastPreviousSecret = at;
        this.lastPreviousSecretIp = ip;
      }
    } else {
      if (this.#isLatest(FAILED, this.#lastFailed, at)) {
        this.#lastFailed = at;
        this.lastFailedIp = ip;
      }
      this.#failedIps = touchIp(this.#failedIps as RecentIps | undefined, ip, count, at, maxIps);
    }
  }

  // Whether `at` is as late as the time `flag` marks, or that time is not set yet; marks it set,
  // for the caller to write.
  #isLatest(flag: number, time: number, at: number): boolean {
    if ((this.#seen & flag) !== 0 && at < time) return false;
    this.#seen |= flag;
    return true;
  }

  #timeOf(flag: number, time: number): number {
    return (this.#seen & flag) === 0 ? -Infinity : this.#base.at + time;
  }

  // A drained key may be merged into (DeltaCoalescer), as any delta.
  #offsetOf(flag: number, time: number): number {
    if (time === -Infinity) {
      this.#seen &= ~flag;
      return 0;
    }
    this.#seen |= flag;
    return time - this.#base.at;
  }

  get lastUsedAt(): number {
    return this.#timeOf(USED, this.#lastUsed);
  }
  set lastUsedAt(time: number) {
    this.#lastUsed = this.#offsetOf(USED, time);
  }
  get lastFailedAt(): number {
    return this.#timeOf(FAILED, this.#lastFailed);
  }
  set lastFailedAt(time: number) {
    this.#lastFailed = this.#offsetOf(FAILED, time);
  }
  get lastRevokedUseAt(): number {
    return this.#timeOf(REVOKED, this.#lastRevokedUse);
  }
  set lastRevokedUseAt(time: number) {
    this.#lastRevokedUse = this.#offsetOf(REVOKED, time);
  }
  get lastExpiredUseAt(): number {
    return this.#timeOf(EXPIRED, this.#lastExpiredUse);
  }
  set lastExpiredUseAt(time: number) {
    this.#lastExpiredUse = this.#offsetOf(EXPIRED, time);
  }

  get lastPreviousSecretAt(): number {
    return this.#timeOf(PREVIOUS_SECRET, this.#lastPreviousSecret);
  }
  set lastPreviousSecretAt(time: number) {
    this.#lastPreviousSecret = this.#offsetOf(PREVIOUS_SECRET, time);
  }

  // Read only once drained (the aggregator hands a key out only then, and adds nothing after):
  // the first read makes the object from the key's fields, which it then replaces.
  get byOutcome(): Record<Outcome, number> {
    return (this.#byOutcome ??= this.#outcomes());
  }
  set byOutcome(counts: Record<Outcome, number>) {
    this.#byOutcome = counts;
  }

  // Read only once drained, as byOutcome: the first read makes the Map from the key's own list,
  // which it then replaces.
  get ips(): Map<string, IpStat> {
    return (this.#ips = ipMap(this.#ips ?? this.#inlineIp(), this.#base.at));
  }
  set ips(ips: Map<string, IpStat>) {
    this.#ip = undefined;
    this.#ips = ips;
  }
  get failedIps(): Map<string, IpStat> {
    return (this.#failedIps = ipMap(this.#failedIps, this.#base.at));
  }
  set failedIps(ips: Map<string, IpStat>) {
    this.#failedIps = ips;
  }
  get revokedIps(): Map<string, IpStat> | undefined {
    return this.#revokedIps === undefined ? undefined : (this.#revokedIps = ipMap(this.#revokedIps, this.#base.at));
  }
  set revokedIps(ips: Map<string, IpStat> | undefined) {
    this.#revokedIps = ips;
  }
  get expiredIps(): Map<string, IpStat> | undefined {
    return this.#expiredIps === undefined ? undefined : (this.#expiredIps = ipMap(this.#expiredIps, this.#base.at));
  }
  set expiredIps(ips: Map<string, IpStat> | undefined) {
    this.#expiredIps = ips;
  }
  get hours(): Map<number, HourCounts> {
    return (this.#hours ??= new Map<number, HourCounts>().set(this.#base.at + this.#hour, { ...this.byOutcome }));
  }
  set hours(hours: Map<number, HourCounts>) {
    this.#hours = hours;
  }

  /** The proven (or failed) addresses in the order of the ips (failedIps) Map, without making it. */
  forEachIp(proven: boolean, each: EachIp): void {
    if (proven && this.#ip !== undefined) {
      each(this.#ip, this.#ipCount, this.#base.at + this.#ipFirst, this.#base.at + this.#ipLast);
      return;
    }
    const addresses = proven ? this.#ips : this.#failedIps;
    if (addresses instanceof Map) addresses.forEach((stat, ip) => each(ip, stat.count, stat.firstSeen, stat.lastSeen));
    else if (addresses !== undefined) {
      const base = this.#base.at;
      for (let i = 0; i < addresses.length; i += STRIDE) {
        each(addresses[i] as string, addresses[i + 1] as number, base + (addresses[i + 2] as number), base + (addresses[i + 3] as number));
      }
    }
  }

  /** The hours and their counts in the order of the hours Map, without making it. */
  forEachHour(each: (hour: number, counts: HourCounts) => void): void {
    if (this.#hours === undefined) each(this.#base.at + this.#hour, this.byOutcome);
    else this.#hours.forEach((counts, hour) => each(hour, counts));
  }

  /** How many addresses forEachIp gives. */
  ipCount(proven: boolean): number {
    if (proven && this.#ip !== undefined) return 1;
    const addresses = proven ? this.#ips : this.#failedIps;
    return addresses instanceof Map ? addresses.size : addresses === undefined ? 0 : addresses.length / STRIDE;
  }

  /** How many hours forEachHour gives. */
  get hourCount(): number {
    return this.#hours === undefined ? 1 : this.#hours.size;
  }

  // A line of another hour than the last (a new hour began, or a timestamped sample); called
  // before the line is counted in the key's counts by outcome.
  #countsOf(hour: number): HourCounts {
    this.#hours ??= new Map<number, HourCounts>().set(this.#base.at + this.#hour, this.#outcomes());
    let counts = this.#hours.get(hour);
    if (counts === undefined) this.#hours.set(hour, (counts = zeroOutcomes()));
    this.#hour = hour - this.#base.at;
    this.#hourCounts = counts;
    return counts;
  }

  #touchProvenIp(ip: string, count: number, at: number, maxIps: number): void {
    if (this.#ips === undefined && (this.#ip === undefined || this.#ip === ip)) {
      if (this.#ip === undefined) {
        this.#ip = ip;
        this.#ipFirst = at;
        this.#ipLast = at;
      }
      // Timestamped samples (|T) may arrive out of order, as in touchIp.
      else if (at > this.#ipLast) this.#ipLast = at;
      else if (at < this.#ipFirst) this.#ipFirst = at;
      this.#ipCount += count;
      return;
    }
    this.#ips = touchIp((this.#ips ?? this.#inlineIp()) as RecentIps, ip, count, at, maxIps);
  }

  // The address held in the key as a list of one, which it then leaves.
  #inlineIp(): RecentIps | undefined {
    if (this.#ip === undefined) return undefined;
    const list = [this.#ip, this.#ipCount, this.#ipFirst, this.#ipLast];
    this.#ip = undefined;
    return list;
  }

  #outcomes(): Record<Outcome, number> {
    return { ok: this.#ok, forbidden: this.#forbidden, expired: this.#expired, revoked: this.#revoked, bad_secret: this.#badSecret, cross_org: this.#crossOrg };
  }

  // A switch onto named fields, as addTo's.
  #countOutcome(outcome: Outcome, count: number): void {
    switch (outcome) {
      case 'ok':
        this.#ok += count;
        break;
      case 'forbidden':
        this.#forbidden += count;
        break;
      case 'expired':
        this.#expired += count;
        break;
      case 'revoked':
        this.#revoked += count;
        break;
      case 'bad_secret':
        this.#badSecret += count;
        break;
      case 'cross_org':
        this.#crossOrg += count;
        break;
    }
  }
}

// A switch onto named fields: indexing the counts by the outcome string is a keyed access that
// profiled at ≈ 5 % of a line.
function addTo(counts: Record<Outcome, number>, outcome: Outcome, count: number): void {
  switch (outcome) {
    case 'ok':
      counts.ok += count;
      break;
    case 'forbidden':
      counts.forbidden += count;
      break;
    case 'expired':
      counts.expired += count;
      break;
    case 'revoked':
      counts.revoked += count;
      break;
    case 'bad_secret':
      counts.bad_secret += count;
      break;
    case 'cross_org':
      counts.cross_org += count;
      break;
  }
}

/** An address, its count, and when it was first and last seen (epoch ms). */
export type EachIp = (ip: string, count: number, firstSeen: number, lastSeen: number) => void;

/** Any delta's proven (or failed) addresses, in its Map's order; a drained pending key's without making the Map. */
export function forEachIp(k: KeyUsageDelta, proven: boolean, each: EachIp): void {
  if (k instanceof PendingKey) k.forEachIp(proven, each);
  else (proven ? k.ips : k.failedIps).forEach((stat, ip) => each(ip, stat.count, stat.firstSeen, stat.lastSeen));
}

/** Any delta's hours and their counts, in its Map's order; a drained pending key's without making the Map. */
export function forEachHour(k: KeyUsageDelta, each: (hour: number, counts: HourCounts) => void): void {
  if (k instanceof PendingKey) k.forEachHour(each);
  else k.hours.forEach((counts, hour) => each(hour, counts));
}

/** How many proven (or failed) addresses forEachIp gives, without making a drained pending key's Map. */
export const ipCount = (k: KeyUsageDelta, proven: boolean): number => (k instanceof PendingKey ? k.ipCount(proven) : (proven ? k.ips : k.failedIps).size);

/** How many hours forEachHour gives, without making a drained pending key's Map. */
export const hourCount = (k: KeyUsageDelta): number => (k instanceof PendingKey ? k.hourCount : k.hours.size);

// A key's most recently seen addresses in one array, four items each: the address, its count, and
// when it was first and last seen (from the base), in the order a Map would hold them: first seen
// first, an address seen again keeping its place. Recency is the last seen time, not the order:
// only a new address arriving at a full list looks for the least recently seen (the first of
// equals), which gives its place up to the newcomer, so a stream of new addresses allocates
// nothing. At most `max` (16 by default) string comparisons a line.
type RecentIps = Array<string | number>;
const STRIDE = 4;

function touchIp(recent: RecentIps | undefined, ip: string, count: number, at: number, max: number): RecentIps {
  if (recent === undefined) return [ip, count, at, at];
  for (let i = 0; i < recent.length; i += STRIDE) {
    if (recent[i] !== ip) continue;
    recent[i + 1] = (recent[i + 1] as number) + count;
    // Timestamped samples (|T) may arrive out of order.
    if (at > (recent[i + 3] as number)) recent[i + 3] = at;
    else if (at < (recent[i + 2] as number)) recent[i + 2] = at;
    return recent;
  }
  if (recent.length < STRIDE * max) {
    recent.push(ip, count, at, at);
    return recent;
  }
  const end = recent.length - STRIDE;
  for (let i = leastRecentlySeen(recent); i < end; i++) recent[i] = recent[i + STRIDE];
  recent[end] = ip;
  recent[end + 1] = count;
  recent[end + 2] = at;
  recent[end + 3] = at;
  return recent;
}

// Called on a full, so non-empty, list; the index of the address.
function leastRecentlySeen(recent: RecentIps): number {
  let oldest = 0;
  for (let i = STRIDE; i < recent.length; i += STRIDE) if ((recent[i + 3] as number) < (recent[oldest + 3] as number)) oldest = i;
  return oldest;
}

type Addresses = RecentIps | Map<string, IpStat> | undefined;

// The Map of a key's addresses, made from its list the first time, with epoch ms.
function ipMap(addresses: Addresses, base: number): Map<string, IpStat> {
  if (addresses instanceof Map) return addresses;
  const map = new Map<string, IpStat>();
  if (addresses === undefined) return map;
  for (let i = 0; i < addresses.length; i += STRIDE) {
    map.set(addresses[i] as string, {
      count: addresses[i + 1] as number,
      firstSeen: base + (addresses[i + 2] as number),
      lastSeen: base + (addresses[i + 3] as number),
    });
  }
  return map;
}
