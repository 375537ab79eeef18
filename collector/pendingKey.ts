// One key's uses while the aggregator adds them, kept so that a line is cheap to add; drained,
// the key is the KeyUsageDelta the flusher reads, its Maps made when first read. Per line the profile found
// the hour bucket's Map lookup, the outcome counters indexed by a string, and the address Map:
// with a new address on a full map of 16, V8 rebuilt the map's table on every line (a delete
// leaves a hole, the insert finds no room), and garbage collection took a third of the time. So
// the last hour's counts are kept at hand, outcomes go through a switch, addresses live in one
// small array updated in place, and a key's Maps are made once, when a consumer first reads them.
import { isProvenOutcome, zeroOutcomes, type Outcome } from '../shared/usageWire';
import type { HourCounts, IpStat, KeyUsageDelta } from './aggregator';

export class PendingKey implements KeyUsageDelta {
  readonly keyId: string;
  readonly orgId: string;
  // The delta's counters and last-seen fields, updated in place from the first line: the key is
  // the delta the drain hands over (at 100 k distinct keys, a copy of each key made at the drain
  // doubled what each key allocated, and GC took 28 % of the time).
  total = 0;
  byOutcome = zeroOutcomes();
  lastUsedAt = -Infinity;
  lastIp = '';
  lastFailedAt = -Infinity;
  lastFailedIp = '';
  lastRevokedUseAt = -Infinity;
  lastExpiredUseAt = -Infinity;
  // The hour of the last line and its counts; every hour in a Map once a second one comes. While
  // all lines were of one hour, that hour's counts are the key's byOutcome: nothing to count twice
  // or allocate for most keys.
  #hour: number;
  #hourCounts: HourCounts | undefined;
  #hours: Map<number, HourCounts> | undefined;
  // The addresses: a list while lines are added; the drained key's Map once a consumer reads it,
  // made then and not at the drain: the usage log's append reads none (forEachIp), and with three
  // Maps per key made at the drain, the drain and encoding of a 100 k-key append took about twice
  // the CPU (bench/appendEncode.ts: medians 786-857 ms against 363-488, docs/benchmarks.md §4).
  // No line is added once a Map is made (see the getters).
  #ips: Addresses;
  #failedIps: Addresses;

  /** A key is created for its first line, and with the hour of that line. */
  constructor(keyId: string, orgId: string, hour: number) {
    this.keyId = keyId;
    this.orgId = orgId;
    this.#hour = hour;
  }

  add(now: number, hour: number, ip: string, outcome: Outcome, count: number, maxIps: number): void {
    if (hour !== this.#hour) addTo(this.#countsOf(hour), outcome, count);
    else if (this.#hourCounts !== undefined) addTo(this.#hourCounts, outcome, count);
    this.total += count;
    addTo(this.byOutcome, outcome, count);
    if (isProvenOutcome(outcome)) {
      if (now >= this.lastUsedAt) {
        this.lastUsedAt = now;
        this.lastIp = ip;
      }
      this.#ips = touchIp(this.#ips as RecentIps | undefined, ip, count, now, maxIps);
      if (outcome === 'revoked') this.lastRevokedUseAt = Math.max(this.lastRevokedUseAt, now);
      else if (outcome === 'expired') this.lastExpiredUseAt = Math.max(this.lastExpiredUseAt, now);
    } else {
      if (now >= this.lastFailedAt) {
        this.lastFailedAt = now;
        this.lastFailedIp = ip;
      }
      this.#failedIps = touchIp(this.#failedIps as RecentIps | undefined, ip, count, now, maxIps);
    }
  }

  // Read only once drained (the aggregator hands a key out only then, and adds nothing after):
  // the first read makes the Map from the key's own list, which it then replaces.
  get ips(): Map<string, IpStat> {
    return (this.#ips = ipMap(this.#ips));
  }
  set ips(ips: Map<string, IpStat>) {
    this.#ips = ips;
  }
  get failedIps(): Map<string, IpStat> {
    return (this.#failedIps = ipMap(this.#failedIps));
  }
  set failedIps(ips: Map<string, IpStat>) {
    this.#failedIps = ips;
  }
  get hours(): Map<number, HourCounts> {
    return (this.#hours ??= new Map<number, HourCounts>().set(this.#hour, { ...this.byOutcome }));
  }
  set hours(hours: Map<number, HourCounts>) {
    this.#hours = hours;
  }

  /** The proven (or failed) addresses in the order of the ips (failedIps) Map, without making it. */
  forEachIp(proven: boolean, each: (ip: string, stat: IpStat) => void): void {
    const addresses = proven ? this.#ips : this.#failedIps;
    if (addresses instanceof Map) addresses.forEach((stat, ip) => each(ip, stat));
    else if (addresses !== undefined) for (let i = 0; i < addresses.length; i += 2) each(addresses[i] as string, addresses[i + 1] as IpStat);
  }

  /** The hours and their counts in the order of the hours Map, without making it. */
  forEachHour(each: (hour: number, counts: HourCounts) => void): void {
    if (this.#hours === undefined) each(this.#hour, this.byOutcome);
    else this.#hours.forEach((counts, hour) => each(hour, counts));
  }

  /** How many addresses forEachIp gives. */
  ipCount(proven: boolean): number {
    const addresses = proven ? this.#ips : this.#failedIps;
    return addresses instanceof Map ? addresses.size : addresses === undefined ? 0 : addresses.length / 2;
  }

  /** How many hours forEachHour gives. */
  get hourCount(): number {
    return this.#hours === undefined ? 1 : this.#hours.size;
  }

  // A line of another hour than the last (a new hour began, or a timestamped sample); called
  // before the line is counted in byOutcome.
  #countsOf(hour: number): HourCounts {
    this.#hours ??= new Map<number, HourCounts>().set(this.#hour, { ...this.byOutcome });
    let counts = this.#hours.get(hour);
    if (counts === undefined) this.#hours.set(hour, (counts = zeroOutcomes()));
    this.#hour = hour;
    this.#hourCounts = counts;
    return counts;
  }
}

/** Any delta's proven (or failed) addresses, in its Map's order; a drained pending key's without making the Map. */
export function forEachIp(k: KeyUsageDelta, proven: boolean, each: (ip: string, stat: IpStat) => void): void {
  if (k instanceof PendingKey) k.forEachIp(proven, each);
  else (proven ? k.ips : k.failedIps).forEach((stat, ip) => each(ip, stat));
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

// A key's most recently seen addresses and their IpStats, alternating (address, IpStat, ...) in
// one array, in the order a Map would hold them: first seen first, an address seen again keeping
// its place. The IpStats are the ones the drained delta's Map holds. Recency is lastSeen, not the
// order: only a new address arriving at a full list looks for the least recently seen (the first
// of equals), which gives its place up and its IpStat to the newcomer, so a stream of new
// addresses allocates nothing. At most `max` (16 by default) string comparisons a line.
type RecentIps = Array<string | IpStat>;

function touchIp(recent: RecentIps | undefined, ip: string, count: number, now: number, max: number): RecentIps {
  if (recent === undefined) return [ip, { count, firstSeen: now, lastSeen: now }];
  for (let i = 0; i < recent.length; i += 2) {
    if (recent[i] !== ip) continue;
    const seen = recent[i + 1] as IpStat;
    seen.count += count;
    // Timestamped samples (|T) may arrive out of order.
    if (now > seen.lastSeen) seen.lastSeen = now;
    else if (now < seen.firstSeen) seen.firstSeen = now;
    return recent;
  }
  if (recent.length < 2 * max) {
    recent.push(ip, { count, firstSeen: now, lastSeen: now });
    return recent;
  }
  const oldest = leastRecentlySeen(recent);
  const reused = recent[oldest + 1] as IpStat;
  for (let i = oldest; i < recent.length - 2; i++) recent[i] = recent[i + 2];
  reused.count = count;
  reused.firstSeen = now;
  reused.lastSeen = now;
  recent[recent.length - 2] = ip;
  recent[recent.length - 1] = reused;
  return recent;
}

// Called on a full, so non-empty, list; the index of the address (its IpStat follows).
function leastRecentlySeen(recent: RecentIps): number {
  let oldest = 0;
  for (let i = 2; i < recent.length; i += 2) if ((recent[i + 1] as IpStat).lastSeen < (recent[oldest + 1] as IpStat).lastSeen) oldest = i;
  return oldest;
}

type Addresses = RecentIps | Map<string, IpStat> | undefined;

// The Map of a key's addresses, made from its list the first time.
function ipMap(addresses: Addresses): Map<string, IpStat> {
  if (addresses instanceof Map) return addresses;
  const map = new Map<string, IpStat>();
  if (addresses !== undefined) for (let i = 0; i < addresses.length; i += 2) map.set(addresses[i] as string, addresses[i + 1] as IpStat);
  return map;
}
