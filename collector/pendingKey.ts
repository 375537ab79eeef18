// One key's uses while the aggregator adds them, kept so that a line is cheap to add; the
// KeyUsageDelta the flusher reads gets its Maps when the aggregator drains. Per line the profile found
// the hour bucket's Map lookup, the outcome counters indexed by a string, and the address Map:
// with a new address on a full map of 16, V8 rebuilt the map's table on every line (a delete
// leaves a hole, the insert finds no room), and garbage collection took a third of the time. So
// the last hour's counts are kept at hand, outcomes go through a switch, addresses live in one
// small array updated in place, and a key's Maps are made once, at the drain.
import { isProvenOutcome, zeroOutcomes, type Outcome } from '../shared/usageWire';
import { emptyDelta, type HourCounts, type IpStat, type KeyUsageDelta } from './aggregator';

export class PendingKey {
  readonly keyId: string;
  readonly orgId: string;
  // The delta the drain hands over, its counters and last-seen fields updated in place from the
  // first line: at 100 k distinct keys, copying every key into a new delta at the drain (and its
  // addresses into new IpStats) doubled what each key allocated, and GC took 28 % of the time.
  // Only its three Maps are made at the drain; until then they are placeholders.
  readonly #delta: KeyUsageDelta;
  // The hour of the last line and its counts; every hour in a Map once a second one comes. While
  // all lines were of one hour, that hour's counts are the key's byOutcome: nothing to count twice
  // or allocate for most keys (the hour's own counts are copied at the drain).
  #hour: number;
  #hourCounts: HourCounts | undefined;
  #hours: Map<number, HourCounts> | undefined;
  #ips: RecentIps | undefined;
  #failedIps: RecentIps | undefined;

  /** A key is created for its first line, and with the hour of that line. */
  constructor(keyId: string, orgId: string, hour: number) {
    this.keyId = keyId;
    this.orgId = orgId;
    this.#delta = emptyDelta(keyId, orgId, UNTIL_DRAINED.ips, UNTIL_DRAINED.ips, UNTIL_DRAINED.hours);
    this.#hour = hour;
  }

  add(now: number, hour: number, ip: string, outcome: Outcome, count: number, maxIps: number): void {
    const delta = this.#delta;
    if (hour !== this.#hour) addTo(this.#countsOf(hour), outcome, count);
    else if (this.#hourCounts !== undefined) addTo(this.#hourCounts, outcome, count);
    delta.total += count;
    addTo(delta.byOutcome, outcome, count);
    if (isProvenOutcome(outcome)) {
      if (now >= delta.lastUsedAt) {
        delta.lastUsedAt = now;
        delta.lastIp = ip;
      }
      this.#ips = touchIp(this.#ips, ip, count, now, maxIps);
      if (outcome === 'revoked') delta.lastRevokedUseAt = Math.max(delta.lastRevokedUseAt, now);
      else if (outcome === 'expired') delta.lastExpiredUseAt = Math.max(delta.lastExpiredUseAt, now);
    } else {
      if (now >= delta.lastFailedAt) {
        delta.lastFailedAt = now;
        delta.lastFailedIp = ip;
      }
      this.#failedIps = touchIp(this.#failedIps, ip, count, now, maxIps);
    }
  }

  /** What the aggregator drains, once: the key is not added to after. */
  drained(): KeyUsageDelta {
    const delta = this.#delta;
    delta.ips = ipMap(this.#ips);
    delta.failedIps = ipMap(this.#failedIps);
    delta.hours = this.#hours ?? new Map<number, HourCounts>().set(this.#hour, { ...delta.byOutcome });
    return delta;
  }

  // A line of another hour than the last (a new hour began, or a timestamped sample); called
  // before the line is counted in byOutcome.
  #countsOf(hour: number): HourCounts {
    this.#hours ??= new Map<number, HourCounts>().set(this.#hour, { ...this.#delta.byOutcome });
    let counts = this.#hours.get(hour);
    if (counts === undefined) this.#hours.set(hour, (counts = zeroOutcomes()));
    this.#hour = hour;
    this.#hourCounts = counts;
    return counts;
  }
}

// Never handed out: drained() puts a key's own Maps in their place.
const UNTIL_DRAINED = { ips: new Map<string, IpStat>(), hours: new Map<number, HourCounts>() };

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

function ipMap(recent: RecentIps | undefined): Map<string, IpStat> {
  const map = new Map<string, IpStat>();
  if (recent !== undefined) for (let i = 0; i < recent.length; i += 2) map.set(recent[i] as string, recent[i + 1] as IpStat);
  return map;
}
