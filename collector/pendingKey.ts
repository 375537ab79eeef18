// One key's uses while the aggregator adds them, kept so that a line is cheap to add; the
// KeyUsageDelta the flusher reads is built when the aggregator drains. Per line the profile found
// the hour bucket's Map lookup, the outcome counters indexed by a string, and the address Map:
// with a new address on a full map of 16, V8 rebuilt the map's table on every line (a delete
// leaves a hole, the insert finds no room), and garbage collection took a third of the time. So
// the last hour's counts are kept at hand, outcomes go through a switch, addresses live in one
// small array updated in place, and a key's Maps are made once, at the drain.
import { isProvenOutcome, zeroOutcomes, type Outcome } from '../shared/usageWire';
import type { HourCounts, IpStat, KeyUsageDelta } from './aggregator';

export class PendingKey {
  readonly keyId: string;
  readonly orgId: string;
  #total = 0;
  readonly #byOutcome = zeroOutcomes();
  #lastUsedAt = -Infinity;
  #lastIp = '';
  #lastFailedAt = -Infinity;
  #lastFailedIp = '';
  #lastRevokedUseAt = -Infinity;
  #lastExpiredUseAt = -Infinity;
  // The hour of the last line and its counts; every hour in a Map once a second one comes.
  #hour: number;
  #hourCounts = zeroOutcomes();
  #hours: Map<number, HourCounts> | undefined;
  #ips: RecentIp[] | undefined;
  #failedIps: RecentIp[] | undefined;

  /** A key is created for its first line, and with the hour of that line. */
  constructor(keyId: string, orgId: string, hour: number) {
    this.keyId = keyId;
    this.orgId = orgId;
    this.#hour = hour;
  }

  add(now: number, hour: number, ip: string, outcome: Outcome, count: number, maxIps: number): void {
    this.#total += count;
    addTo(this.#byOutcome, outcome, count);
    addTo(hour === this.#hour ? this.#hourCounts : this.#countsOf(hour), outcome, count);
    if (isProvenOutcome(outcome)) {
      if (now >= this.#lastUsedAt) {
        this.#lastUsedAt = now;
        this.#lastIp = ip;
      }
      touchIp((this.#ips ??= []), ip, count, now, maxIps);
      if (outcome === 'revoked') this.#lastRevokedUseAt = Math.max(this.#lastRevokedUseAt, now);
      else if (outcome === 'expired') this.#lastExpiredUseAt = Math.max(this.#lastExpiredUseAt, now);
    } else {
      if (now >= this.#lastFailedAt) {
        this.#lastFailedAt = now;
        this.#lastFailedIp = ip;
      }
      touchIp((this.#failedIps ??= []), ip, count, now, maxIps);
    }
  }

  /** What the aggregator drains: built once, at the drain, so no line pays for its Maps. */
  drained(): KeyUsageDelta {
    return {
      keyId: this.keyId,
      orgId: this.orgId,
      total: this.#total,
      byOutcome: this.#byOutcome,
      lastUsedAt: this.#lastUsedAt,
      lastIp: this.#lastIp,
      ips: ipMap(this.#ips),
      lastFailedAt: this.#lastFailedAt,
      lastFailedIp: this.#lastFailedIp,
      failedIps: ipMap(this.#failedIps),
      lastRevokedUseAt: this.#lastRevokedUseAt,
      lastExpiredUseAt: this.#lastExpiredUseAt,
      hours: this.#hours ?? new Map<number, HourCounts>().set(this.#hour, this.#hourCounts),
    };
  }

  // A line of another hour than the last (a new hour began, or a timestamped sample).
  #countsOf(hour: number): HourCounts {
    this.#hours ??= new Map<number, HourCounts>().set(this.#hour, this.#hourCounts);
    let counts = this.#hours.get(hour);
    if (counts === undefined) this.#hours.set(hour, (counts = zeroOutcomes()));
    this.#hour = hour;
    this.#hourCounts = counts;
    return counts;
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

// An address and its IpStat fields in one object, so a key's addresses are one array.
interface RecentIp {
  ip: string;
  count: number;
  firstSeen: number;
  lastSeen: number;
}

// A key's most recently seen addresses, at most `max`, in the order a Map would hold them: first
// seen first, an address seen again keeping its place. Recency is lastSeen, not the order: only a
// new address arriving at a full list looks for the least recently seen (the first of equals),
// which gives its place up and its object to the newcomer, so a stream of new addresses
// allocates nothing. At most `max` (16 by default) string comparisons a line.
function touchIp(recent: RecentIp[], ip: string, count: number, now: number, max: number): void {
  for (let i = 0; i < recent.length; i++) {
    const seen = recent[i];
    if (seen.ip !== ip) continue;
    seen.count += count;
    // Timestamped samples (|T) may arrive out of order.
    if (now > seen.lastSeen) seen.lastSeen = now;
    else if (now < seen.firstSeen) seen.firstSeen = now;
    return;
  }
  if (recent.length < max) {
    recent.push({ ip, count, firstSeen: now, lastSeen: now });
    return;
  }
  const oldest = leastRecentlySeen(recent);
  const reused = recent[oldest];
  for (let i = oldest; i < recent.length - 1; i++) recent[i] = recent[i + 1];
  reused.ip = ip;
  reused.count = count;
  reused.firstSeen = now;
  reused.lastSeen = now;
  recent[recent.length - 1] = reused;
}

// Called on a full, so non-empty, list.
function leastRecentlySeen(recent: readonly RecentIp[]): number {
  let oldest = 0;
  for (let i = 1; i < recent.length; i++) if (recent[i].lastSeen < recent[oldest].lastSeen) oldest = i;
  return oldest;
}

function ipMap(recent: readonly RecentIp[] | undefined): Map<string, IpStat> {
  const map = new Map<string, IpStat>();
  if (recent !== undefined) for (const { ip, count, firstSeen, lastSeen } of recent) map.set(ip, { count, firstSeen, lastSeen });
  return map;
}
