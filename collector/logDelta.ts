// How a key's delta is kept as text, in the usage log (collector/usageLog.ts) and among the rows
// set aside (api_key_usage_set_aside): written as the bytes of a COPY, read back by a fold.
import { OUTCOMES } from '../shared/usageWire';
import { emptyDelta, type HourCounts, type IpStat, type KeyUsageDelta } from './aggregator';
import { CopyBytes, NEWLINE, TAB } from './copyBytes';
import { forEachHour, forEachIp, hourCount, ipCount } from './pendingKey';

// A delta as one flat JSON array, in this order: total; the count of each outcome (OUTCOMES'
// order); last used (time, address), last failed (time, address), last revoked use, last expired
// use; then the hours (their number, then each hour and its counts), the proven addresses and the
// failed ones (each: their number, then address, count, first seen, last seen); then, only when the
// delta holds a use of the key's previous secret, its time and address (a row without them is
// what a collector before them wrote and reads: a rolling deploy sets aside only the rows of
// previous secrets, never the rest; shared/usageLogDelta.ts erases that address); then, only when
// it holds revoked or expired uses' addresses, those two lists as the others (after a previous
// secret's time and address, null and "" when none; again only such rows are another version's).
// Times are epoch ms; -Infinity ("no such use") is null, as JSON.stringify writes it. Flat, not
// nested: a nested array per hour and address cost the 100 k-key append about 40 % more CPU to
// build. Written as the bytes of the append's COPY (collector/copyBytes.ts).
function writeIps(out: CopyBytes, k: KeyUsageDelta, proven: boolean): void {
  out.byte(COMMA);
  out.jsonNumber(ipCount(k, proven));
  forEachIp(k, proven, (ip, count, firstSeen, lastSeen) => writeIp(out, ip, count, firstSeen, lastSeen));
}

function writeIp(out: CopyBytes, ip: string, count: number, firstSeen: number, lastSeen: number): void {
  out.byte(COMMA);
  out.jsonString(ip);
  writeNumbers(out, count, firstSeen, lastSeen);
}

// A refused use's list: made by few keys (a revoked or expired one still used), so from its Map.
function writeIpMap(out: CopyBytes, ips: Map<string, IpStat> | undefined): void {
  out.byte(COMMA);
  out.jsonNumber(ips?.size ?? 0);
  ips?.forEach((stat, ip) => writeIp(out, ip, stat.count, stat.firstSeen, stat.lastSeen));
}

// Each number after a comma.
function writeNumbers(out: CopyBytes, ...values: number[]): void {
  for (const value of values) {
    out.byte(COMMA);
    out.jsonNumber(value);
  }
}

function writeCounts(out: CopyBytes, counts: HourCounts): void {
  for (const outcome of OUTCOMES) {
    out.byte(COMMA);
    out.jsonNumber(counts[outcome]);
  }
}

function writeDelta(out: CopyBytes, k: KeyUsageDelta): void {
  out.byte(OPEN);
  out.jsonNumber(k.total);
  writeCounts(out, k.byOutcome);
  writeNumbers(out, k.lastUsedAt);
  out.byte(COMMA);
  out.jsonString(k.lastIp);
  writeNumbers(out, k.lastFailedAt);
  out.byte(COMMA);
  out.jsonString(k.lastFailedIp);
  writeNumbers(out, k.lastRevokedUseAt, k.lastExpiredUseAt, hourCount(k));
  forEachHour(k, (hour, counts) => {
    writeNumbers(out, hour);
    writeCounts(out, counts);
  });
  writeIps(out, k, true);
  writeIps(out, k, false);
  const [revokedIps, expiredIps] = [k.revokedIps, k.expiredIps];
  const refused = (revokedIps?.size ?? 0) + (expiredIps?.size ?? 0) > 0;
  if (k.lastPreviousSecretAt !== -Infinity || refused) {
    writeNumbers(out, k.lastPreviousSecretAt);
    out.byte(COMMA);
    out.jsonString(k.lastPreviousSecretIp);
  }
  if (refused) {
    writeIpMap(out, revokedIps);
    writeIpMap(out, expiredIps);
  }
  out.byte(CLOSE);
}

/** A usage log row's COPY line: org, key, the delta. */
export function writeLogLine(out: CopyBytes, k: KeyUsageDelta): void {
  writeKeyAndDelta(out, k);
  out.byte(NEWLINE);
}

/** A set-aside row's COPY line for a key PostgreSQL refused: org, key, the delta, `refused`. */
export function writeRefusedLine(out: CopyBytes, k: KeyUsageDelta): void {
  writeKeyAndDelta(out, k);
  out.byte(TAB);
  out.text('refused');
  out.byte(NEWLINE);
}

function writeKeyAndDelta(out: CopyBytes, k: KeyUsageDelta): void {
  out.text(k.orgId);
  out.byte(TAB);
  out.text(k.keyId);
  out.byte(TAB);
  writeDelta(out, k);
}

const [COMMA, OPEN, CLOSE] = [',', '[', ']'].map((c) => c.charCodeAt(0));

// Reads writeDelta's fields in order; throws on a row this version did not write.
class DeltaReader {
  private at = 0;
  constructor(private readonly fields: unknown[]) {}
  number(): number {
    const value = this.fields[this.at++];
    if (typeof value !== 'number') throw new Error('not a usage log delta');
    return value;
  }
  time(): number {
    return this.fields[this.at] === null ? (this.at++, -Infinity) : this.number();
  }
  text(): string {
    const value = this.fields[this.at++];
    if (typeof value !== 'string') throw new Error('not a usage log delta');
    return value;
  }
  counts(): HourCounts {
    const counts = {} as HourCounts;
    for (const outcome of OUTCOMES) counts[outcome] = this.number();
    return counts;
  }
  ips(): Map<string, IpStat> {
    const ips = new Map<string, IpStat>();
    for (let n = this.number(); n > 0; n -= 1) ips.set(this.text(), { count: this.number(), firstSeen: this.number(), lastSeen: this.number() });
    return ips;
  }
  atEnd(): boolean {
    return this.at === this.fields.length;
  }
  end(): void {
    if (this.at !== this.fields.length) throw new Error('not a usage log delta');
  }
}

/** The delta of one log row; throws on a row this version did not write. */
export function decodeDelta(keyId: string, orgId: string, text: string): KeyUsageDelta {
  const fields: unknown = JSON.parse(text);
  if (!Array.isArray(fields)) throw new Error('not a usage log delta');
  const r = new DeltaReader(fields);
  const total = r.number();
  const byOutcome = r.counts();
  const [lastUsedAt, lastIp, lastFailedAt, lastFailedIp, lastRevokedUseAt, lastExpiredUseAt] = [r.time(), r.text(), r.time(), r.text(), r.time(), r.time()];
  const hours = new Map<number, HourCounts>();
  for (let n = r.number(); n > 0; n -= 1) hours.set(r.number(), r.counts());
  const ips = r.ips();
  const failedIps = r.ips();
  // Written only when there was such a use, or refused uses' addresses follow (writeDelta).
  const [lastPreviousSecretAt, lastPreviousSecretIp] = r.atEnd() ? [-Infinity, ''] : [r.time(), r.text()];
  const refused = r.atEnd() ? {} : refusedIps(r.ips(), r.ips());
  r.end();
  return {
    ...emptyDelta(keyId, orgId, ips, failedIps, hours),
    ...refused,
    total,
    byOutcome,
    lastUsedAt,
    lastIp,
    lastFailedAt,
    lastFailedIp,
    lastRevokedUseAt,
    lastExpiredUseAt,
    lastPreviousSecretAt,
    lastPreviousSecretIp,
  };
}

// Absent, not empty, as a drained key's when it holds none.
function refusedIps(revokedIps: Map<string, IpStat>, expiredIps: Map<string, IpStat>): Pick<KeyUsageDelta, 'revokedIps' | 'expiredIps'> {
  return { ...(revokedIps.size > 0 ? { revokedIps } : {}), ...(expiredIps.size > 0 ? { expiredIps } : {}) };
}
