// Which key events a flush raises, decided from the batch and the facts PostgreSQL returned for
// its keys (collector/eventStore.ts gathers them and inserts the result). Pure: no clock, no I/O,
// so every rule is tested with plain values.
import { createHash } from 'node:crypto';
import { BlockList, isIPv4 } from 'node:net';
import { BASELINE_DAYS, type EventType } from '../shared/keyEvents';
import { canonicalIpv6 } from '../shared/ipv6Canonical';
import { truncationBits } from '../shared/ipTruncation';
import { provenCount } from '../shared/usageWire';
import type { IpStat, KeyUsageDelta } from './aggregator';
import { DAY_MS, HOUR_MS, hourOf } from '../shared/timeUnits';

export interface KeyEvent {
  orgId: string;
  keyId: string;
  type: EventType;
  occurredAt: number;
  /** Addresses, counts and thresholds; never key material. */
  details: Record<string, unknown>;
  /** Unique in key_events: the same key can raise the same event at most once per this value. */
  dedupeKey: string;
}

export interface DetectionThresholds {
  /** key.spike: uses in an hour > spikeFactor × the median of the same hour on the active days of the 7 before… */
  spikeFactor: number;
  /** …and at least this many uses. */
  spikeMinUses: number;
  /** key.failed_attempts: this many failed attempts in one clock hour. */
  failedAttemptsPerHour: number;
  /** key.new_ip: at most this many per key in one clock hour (of the networks' first use). */
  newIpPerKeyHour: number;
  /** IP_TRUNCATE: addresses arrive cut to their /24 or /48, a 6to4 one to its /40 (see outsideNetworks). */
  addressesTruncated?: boolean;
  /**
   * key.first_use: the networks first used within this long of the first use are its own (no
   * key.new_ip); the collector's flush interval, what one direct write holds. Default 1 s.
   */
  firstUseSpanMs?: number;
}

const DEFAULT_FIRST_USE_SPAN_MS = 1000;
// How long after its recording a first use's span still holds for other writes: honest ones come
// late too (a collector's retries back off up to 30 s, a fold runs after the one before it).
const FIRST_USE_FRESH_MS = 30_000;

/** One hour the batch touched, as persisted after this flush's write. */
export interface HourFacts {
  hour: number;
  uses: number;
  failed: number;
  /** Uses in the same hour on each of the 7 days before, 0 for a day without uses in it; null when not fetched (uses below spikeMinUses). */
  baseline: number[] | null;
}

export interface KeyFacts {
  /** Proven uses since the key was created, this flush included. */
  requestCount: number;
  createdAt: number;
  expectedNetworks: readonly string[] | null;
  hours: HourFacts[];
  /** Networks (/24, /64) this flush added to the key's history: never seen before, or forgotten. */
  newPrefixes: Array<{ prefix: string; ip: string; firstSeen: number }>;
  /** key.new_ip events already recorded for the key, by the clock hour (ms) they occurred in: only hours of newPrefixes. */
  newIpEventsByHour: ReadonlyMap<number, number>;
  /** Networks of the key whose events the hourly limit deferred, still waiting for the sweep. */
  networksWaiting: number;
  /** When the key's key.first_use, recorded before this flush, occurred: only for keys with newPrefixes. */
  firstUseAt: number | null;
  /** How long before this write's transaction began that key.first_use was recorded (its row's created_at, PostgreSQL's clock); null with firstUseAt. */
  firstUseAgeMs: number | null;
  /** Until when the key, revoked by the dormant clean-up, can be restored; null otherwise (api_keys.restorable_until). */
  restorableUntil: number | null;
}

const hourIso = (ms: number) => new Date(hourOf(ms)).toISOString();
// A time inside `hour`, as close to `at` as the hour allows.
const within = (hour: number, at: number) => Math.min(Math.max(at, hour), hour + HOUR_MS - 1);

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * The usual uses of an hour: the median of the days among the 7 before that had uses in it, 0
 * when none had. Idle days counted as 0 made four of them the median: after a four-day holiday a
 * key at its usual 150 an hour spiked for four working days, and a weekly job at every run.
 */
export function usualUses(baseline: readonly number[]): number {
  const active = baseline.filter((uses) => uses > 0);
  return active.length === 0 ? 0 : median(active);
}

/** A spike needs a full baseline: a key younger than 7 days has no "usual" to exceed yet. */
export function isSpike(hour: HourFacts, createdAt: number, t: DetectionThresholds): boolean {
  if (hour.baseline === null || createdAt > hour.hour - BASELINE_DAYS * DAY_MS) return false;
  return hour.uses >= t.spikeMinUses && hour.uses > t.spikeFactor * usualUses(hour.baseline);
}

/**
 * Addresses outside every expected network; none when the key expects none (null or empty). A
 * truncated address stands for its whole block (shared/ipTruncation.ts): it is outside only when no expected network
 * overlaps that block. Checked as an address, 203.0.113.0 was inside 203.0.113.0/25 for every
 * client of the /24 and outside 203.0.113.128/25 for every one: a use from outside a narrower
 * network cannot be told once truncated, and is not claimed.
 */
export function outsideNetworks(ips: Iterable<string>, networks: readonly string[] | null, truncated = false): string[] {
  if (!networks || networks.length === 0) return [];
  const allowed = new BlockList();
  const bases: Array<[string, 'ipv4' | 'ipv6']> = [];
  for (const network of networks) {
    const [address, prefix] = asKept(network);
    const type = isIPv4(address) ? 'ipv4' : 'ipv6';
    allowed.addSubnet(address, prefix, type);
    bases.push([address, type]);
  }
  const overlapsBlock = (ip: string, type: 'ipv4' | 'ipv6') => {
    const block = new BlockList();
    block.addSubnet(ip, truncationBits(ip), type);
    return bases.some(([address, family]) => family === type && block.check(address, type));
  };
  return [...ips].filter((ip) => {
    const type = isIPv4(ip) ? 'ipv4' : 'ipv6';
    return !allowed.check(ip, type) && !(truncated && overlapsBlock(ip, type));
  });
}

// An expected network as the addresses it is checked against are kept: an IPv4-mapped one
// (::ffff:10.0.0.0/104, as PostgreSQL may print what was given so) as the IPv4 network it maps,
// since the collector keeps a mapped address as IPv4 (shared/usageWire.ts wireAddress). Kept as
// IPv6, it matched no address, and every use raised key.outside_networks.
function asKept(network: string): [string, number] {
  const [address, bits] = network.split('/');
  if (isIPv4(address)) return [address, Number(bits ?? 32)];
  const prefix = Number(bits ?? 128);
  const kept = canonicalIpv6(address);
  return isIPv4(kept) && prefix >= 96 ? [kept, prefix - 96] : [address, prefix];
}

type Emit = (type: EventType, occurredAt: number, details: Record<string, unknown>, dedupe: string) => void;

/** Told of each new network the hourly limit kept from raising key.new_ip now. */
export type OnDeferred = (prefix: string) => void;

function useEvents(delta: KeyUsageDelta, facts: KeyFacts, thresholds: DetectionThresholds, emit: Emit, onDeferred: OnDeferred): void {
  const proven = provenCount(delta.byOutcome);
  if (proven === 0) return;
  let firstUseAt = facts.firstUseAt;
  let firstUseAgeMs = facts.firstUseAgeMs;
  if (facts.requestCount <= proven) {
    // The first use: every address it came from is new, so no key.new_ip beside it.
    const [ip, first] = [...delta.ips].sort(([, a], [, b]) => a.firstSeen - b.firstSeen)[0] ?? [delta.lastIp, { firstSeen: delta.lastUsedAt }];
    emit('key.first_use', first.firstSeen, { ip }, '');
    firstUseAt = first.firstSeen;
    firstUseAgeMs = 0;
  }
  const newPrefixes = afterFirstUse(facts.newPrefixes, firstUseAt, firstUseAgeMs, thresholds);
  newNetworkEvents({ ...facts, newPrefixes }, thresholds.newIpPerKeyHour, emit, onDeferred);
  const outside = newestOutside(delta, facts.expectedNetworks, thresholds.addressesTruncated);
  if (outside.ips.length > 0) {
    const dedupe = `${hourIso(delta.lastUsedAt)}:${networksDigest(facts.expectedNetworks!)}`;
    const { ips, ...omitted } = listedIps(outside);
    emit('key.outside_networks', delta.lastUsedAt, { ips, expectedNetworks: facts.expectedNetworks, ...omitted }, dedupe);
  }
  if (delta.lastRevokedUseAt > -Infinity)
    emit('key.revoked_used', delta.lastRevokedUseAt, revokedUseDetails(delta, facts.restorableUntil), hourIso(delta.lastRevokedUseAt));
  if (delta.lastExpiredUseAt > -Infinity)
    emit('key.expired_used', delta.lastExpiredUseAt, refusedDetails(delta.expiredIps, delta), hourIso(delta.lastExpiredUseAt));
}

// The addresses the refused uses came from, newest first, as key.outside_networks names its own.
// `ip` was the newest address of any use in the flush: right after a revoke, the rightful service
// still retrying until redeployed, so the leaked secret's holder was in no event. It is now the
// newest refused use's; the key's last use (lastIp) only for a delta holding no such list (logged
// by an earlier collector).
function refusedDetails(ips: Map<string, IpStat> | undefined, delta: KeyUsageDelta): Record<string, unknown> {
  if (ips === undefined || ips.size === 0) return { ip: delta.lastIp };
  const newest = newestOf([...ips.keys()], (ip) => ips.get(ip)!.lastSeen);
  return { ip: newest.ips[0], ...listedIps(newest) };
}

// A key the dormant clean-up revoked and still in use is the clean-up's likely mistake: the event
// says until when it can be restored (as the use found it), where the receiver had to read the
// key's view to know whether a restore was possible at all. A leak raises the same event; the
// addresses tell them apart (docs/events.md).
function revokedUseDetails(delta: KeyUsageDelta, restorableUntil: number | null): Record<string, unknown> {
  const details = refusedDetails(delta.revokedIps, delta);
  if (restorableUntil === null || restorableUntil <= delta.lastRevokedUseAt) return details;
  return { ...details, restorableUntil: new Date(restorableUntil).toISOString() };
}

// An event's `ips`, and `ipsOmitted` when some were left out.
const listedIps = ({ ips, omitted }: { ips: string[]; omitted: number }) => ({ ips, ...(omitted > 0 ? { ipsOmitted: omitted } : {}) });

// The networks that are not the first use's own: those first used more than one flush interval
// after it. A fold, or a batch merged while writes failed, holds many flush intervals: a network
// first used later was hidden for good (its history row written with the first use), where a
// direct write of the later interval raised it. And with collectors writing directly, the first
// use is the one whose flush committed first: another collector's later flush can hold a use dated
// before it, or within its interval, which one flush holding both would have made the first use's
// own. Raised, the key's first network came as a key.new_ip dated before its key.first_use.
// Only while the first use is fresh, though: recorded within FIRST_USE_FRESH_MS (or two flush
// intervals, if longer) of this write. A network's first use is the time its line claims (|T,
// believed up to an hour back), so a forged line dated into the first use's interval, sent any
// time in the hour after it, wrote its network as known with no event, now or later (a review,
// 2026-12-08). An honest write later than that raises its networks, dated before the first use.
function afterFirstUse(
  networks: KeyFacts['newPrefixes'],
  firstUseAt: number | null,
  firstUseAgeMs: number | null,
  thresholds: DetectionThresholds,
): KeyFacts['newPrefixes'] {
  const span = thresholds.firstUseSpanMs ?? DEFAULT_FIRST_USE_SPAN_MS;
  if (firstUseAt === null || firstUseAgeMs === null || firstUseAgeMs > Math.max(2 * span, FIRST_USE_FRESH_MS)) return networks;
  return networks.filter((network) => network.firstSeen > firstUseAt + span);
}

// key.outside_networks is raised once an hour for each expected list, not once an hour: keyed by
// the hour alone, an operator who fixed the list (a PATCH) after the hour's first event heard of
// no address outside the new list until the next hour. The operator's own setting, never a client
// address, so no erased address can be found from the dedupe key or the id derived from it.
function networksDigest(networks: readonly string[]): string {
  return createHash('sha256')
    .update([...networks].sort().join(','))
    .digest('hex')
    .slice(0, 12);
}

// A flush's key holds at most 16 addresses, but a fold's holds every address of the log rows it
// takes: with folds behind, one event (and each webhook's copy) listed thousands, growing with the
// backlog (a review: 3,200 addresses, 47 kB, from 200 rows). The newest are named, the rest counted.
// So are a revoked (expired) key's refused uses' (refusedDetails).
export const OUTSIDE_IPS_PER_EVENT = 16;

function newestOutside(delta: KeyUsageDelta, networks: readonly string[] | null, truncated?: boolean): { ips: string[]; omitted: number } {
  const outside = outsideNetworks(delta.ips.keys(), networks, truncated);
  if (outside.length <= OUTSIDE_IPS_PER_EVENT) return { ips: outside, omitted: 0 };
  return newestOf(outside, (ip) => delta.ips.get(ip)!.lastSeen);
}

// The OUTSIDE_IPS_PER_EVENT newest addresses, newest first, and how many more there were.
function newestOf(ips: string[], lastSeen: (ip: string) => number): { ips: string[]; omitted: number } {
  const newest = ips.sort((a, b) => lastSeen(b) - lastSeen(a)).slice(0, OUTSIDE_IPS_PER_EVENT);
  return { ips: newest, omitted: ips.length - newest.length };
}

// A key used from many networks (a mobile app's, or one whose forged uses name new networks) raised
// one event per network, each a delivery per webhook: at most `limit` a clock hour now, counted with
// the events already recorded in that hour. The event that reaches the limit says so. The networks
// after it are handed to onDeferred, whose caller makes their events due in the key's history: the
// time sweep raises their events later, in an hour with room (deferredNetworkEvents). Dropped,
// they never raised one, so whoever filled an hour's limit (ten forged lines) hid a leaked key's
// new network for good.
// The key's networks still waiting for the sweep keep their room: a new network is raised here
// only if the hour has room for it after them, and is deferred behind them otherwise (and behind
// those this flush deferred). When the flush raised new networks ahead of waiting ones, a sender
// naming `limit` new networks at the start of every hour took each hour's room before the sweep,
// and a leaked key's real new network waited as long as they kept on.
// Collectors flushing the same key at once each count only what committed: up to `limit` each.
function newNetworkEvents(facts: KeyFacts, limit: number, emit: Emit, onDeferred: OnDeferred): void {
  const raised = new Map(facts.newIpEventsByHour);
  let waiting = facts.networksWaiting;
  for (const { prefix, ip, firstSeen } of [...facts.newPrefixes].sort((a, b) => a.firstSeen - b.firstSeen)) {
    const hour = hourOf(firstSeen);
    const count = (raised.get(hour) ?? 0) + 1;
    if (count + waiting > limit) {
      onDeferred(prefix);
      waiting += 1;
      continue;
    }
    raised.set(hour, count);
    emit('key.new_ip', firstSeen, newIpDetails({ ip, prefix }, count, limit), newIpDedupe(prefix, firstSeen));
  }
}

const newIpDetails = (details: Record<string, unknown>, count: number, limit: number) =>
  count === limit ? { ...details, hourlyLimitReached: limit } : details;
// The same network's event, raised by the flush or deferred to the sweep, has the same dedupe key.
const newIpDedupe = (prefix: string, firstSeen: number) => `${prefix}:${firstSeen}`;

/** A network of one key the hourly limit deferred (api_key_ip_history.event_due_at set). */
export interface DeferredNetwork {
  orgId: string;
  keyId: string;
  prefix: string;
  ip: string;
  firstSeen: number;
}

/**
 * The key.new_ip events the sweep raises at `now` for one key's deferred networks, earliest first,
 * given the key's events already recorded in now's clock hour: at most up to the limit. They occur
 * now, so they count in this hour's limit as a flush's would; details.firstSeen keeps when the
 * network was first used.
 */
export function deferredNetworkEvents(networks: readonly DeferredNetwork[], raisedThisHour: number, limit: number, now: number): KeyEvent[] {
  const room = Math.max(0, limit - raisedThisHour);
  return [...networks]
    .sort((a, b) => a.firstSeen - b.firstSeen)
    .slice(0, room)
    .map(({ orgId, keyId, prefix, ip, firstSeen }, i) => ({
      orgId,
      keyId,
      type: 'key.new_ip',
      occurredAt: now,
      details: newIpDetails({ ip, prefix, firstSeen: new Date(firstSeen).toISOString(), deferred: true }, raisedThisHour + i + 1, limit),
      dedupeKey: dedupeKey('key.new_ip', keyId, newIpDedupe(prefix, firstSeen)),
    }));
}

function hourEvents(delta: KeyUsageDelta, facts: KeyFacts, t: DetectionThresholds, emit: Emit): void {
  for (const hour of facts.hours) {
    const inBatch = delta.hours.get(hour.hour);
    if (inBatch === undefined) continue;
    const at = hourIso(hour.hour);
    if (provenCount(inBatch) > 0 && isSpike(hour, facts.createdAt, t)) {
      const baselineMedian = usualUses(hour.baseline!);
      emit('key.spike', within(hour.hour, delta.lastUsedAt), { hour: at, uses: hour.uses, baselineMedian, factor: t.spikeFactor, minUses: t.spikeMinUses }, at);
    }
    if (inBatch.bad_secret > 0 && hour.failed >= t.failedAttemptsPerHour) {
      emit(
        'key.failed_attempts',
        within(hour.hour, delta.lastFailedAt),
        { hour: at, attempts: hour.failed, threshold: t.failedAttemptsPerHour, lastIp: delta.lastFailedIp },
        at,
      );
    }
  }
}

const dedupeKey = (type: EventType, keyId: string, dedupe: string) => [type, keyId, dedupe].filter(Boolean).join(':');

/** The events one key's part of a flush raises; new networks over the hourly limit go to onDeferred. */
export function detectKeyEvents(delta: KeyUsageDelta, facts: KeyFacts, thresholds: DetectionThresholds, onDeferred: OnDeferred = () => {}): KeyEvent[] {
  const events: KeyEvent[] = [];
  const emit: Emit = (type, occurredAt, details, dedupe) =>
    events.push({ orgId: delta.orgId, keyId: delta.keyId, type, occurredAt, details, dedupeKey: dedupeKey(type, delta.keyId, dedupe) });
  useEvents(delta, facts, thresholds, emit, onDeferred);
  hourEvents(delta, facts, thresholds, emit);
  return events;
}
