// The StatsD wire format between the API (encodeUsageLine, packDatagrams) and
// the collector (parsePacket). Pure: no sockets, no timers.
import { isIP } from 'node:net';

export const OUTCOMES = ['ok', 'forbidden', 'expired', 'revoked', 'bad_secret', 'cross_org'] as const;
export type Outcome = (typeof OUTCOMES)[number];

// The outcomes for which the verifier found the presented secret right (it checks the secret
// before status, scope or org). Only these are uses of the key; bad_secret is a failed attempt
// by someone who may know no more than the key's id.
export const PROVEN_OUTCOMES = ['ok', 'forbidden', 'expired', 'revoked', 'cross_org'] as const satisfies readonly Outcome[];

export function isProvenOutcome(outcome: Outcome): boolean {
  return outcome !== 'bad_secret';
}

/** The uses (proven outcomes) among per-outcome counts. */
export const provenCount = (counts: Record<Outcome, number>) => PROVEN_OUTCOMES.reduce((sum, outcome) => sum + counts[outcome], 0);

export const USAGE_METRIC = 'apikey.used';

// Datadog's recommended UDP payload: fits a 1500-byte MTU after IPv6 + UDP
// headers with room for tunnel overhead, so datagrams are never fragmented.
export const MAX_DATAGRAM_BYTES = 1432;

export interface UsageSample {
  keyId: string;
  orgId: string;
  ip: string;
  outcome: Outcome;
  count: number;
}

export interface PacketResult {
  lines: number;
  usage: number;
  other: number;
  invalid: number;
  firstError?: string;
}

// A value carrying one of these would end its tag, field or line early and
// let the rest forge another tag (or a whole line) on the collector side.
const STATSD_DELIMITERS = /[\x00-\x20\x7f|,#]/g;

export function encodeUsageLine(sample: UsageSample): string {
  const { keyId, orgId, ip, outcome, count } = sample;
  return `${USAGE_METRIC}:${count}|c|#key:${tagValue(keyId)},org:${tagValue(orgId)},ip:${tagValue(ip)},outcome:${tagValue(outcome)}`;
}

function tagValue(value: string): string {
  return value.replace(STATSD_DELIMITERS, '_');
}

export function packDatagrams(lines: readonly string[], maxBytes = MAX_DATAGRAM_BYTES): string[] {
  if (!Number.isInteger(maxBytes) || maxBytes < 1) {
    throw new RangeError(`maxBytes must be a positive integer, got ${maxBytes}`);
  }
  const datagrams: string[] = [];
  let current: string[] = [];
  let currentBytes = 0;
  for (const line of lines) {
    const bytes = Buffer.byteLength(line, 'utf8');
    // +1 for the '\n' that will join it to the lines already in `current`.
    if (current.length > 0 && currentBytes + 1 + bytes > maxBytes) {
      datagrams.push(current.join('\n'));
      current = [];
      currentBytes = 0;
    }
    currentBytes += current.length > 0 ? 1 + bytes : bytes;
    current.push(line);
  }
  if (current.length > 0) datagrams.push(current.join('\n'));
  return datagrams;
}

const OUTCOME_BY_NAME: ReadonlyMap<string, Outcome> = new Map(OUTCOMES.map((outcome) => [outcome, outcome]));
// The most uses one line may carry: what one API instance could coalesce for one (key, IP,
// outcome) in a drain (4 M requests/s at the default 250 ms); the recorder drains early before
// an entry reaches it. A forged line therefore moves a counter by at most this much.
export const MAX_LINE_COUNT = 1_000_000;
const UUID_LENGTH = 36;
const MAX_QUOTED_CHARS = 60;

const CR = 13;
const SPACE = 32;
const HASH = 35;
const PLUS = 43;
const COMMA = 44;
const MINUS = 45;
const DOT = 46;
const ZERO = 48;
const NINE = 57;
const COLON = 58;
const EQUALS = 61;
const AT = 64;
const UPPER_E = 69;
const UPPER_T = 84;
const LOWER_E = 101;
const LOWER_I = 105;
const LOWER_K = 107;
const LOWER_O = 111;
const PIPE = 124;
const DEL = 127;

export function parsePacket(packet: string, onSample: (sample: UsageSample) => void): PacketResult {
  const result: PacketResult = { lines: 0, usage: 0, other: 0, invalid: 0 };
  const length = packet.length;
  let start = 0;
  while (start < length) {
    let next = packet.indexOf('\n', start);
    if (next < 0) next = length;
    const end = next > start && packet.charCodeAt(next - 1) === CR ? next - 1 : next;
    if (end > start) {
      result.lines++;
      const parsed = parseLine(packet, start, end);
      if (parsed === null) {
        result.other++;
      } else if (typeof parsed === 'string') {
        result.invalid++;
        result.firstError ??= parsed;
      } else {
        result.usage++;
        onSample(parsed);
      }
    }
    start = next + 1;
  }
  return result;
}

interface UsageTags {
  key: string | undefined;
  org: string | undefined;
  ip: string | undefined;
  outcome: string | undefined;
}

// Parses s[start, end), one line without its terminator. Returns the sample
// of a usage line, null for any other valid StatsD line, or why it is invalid.
// It scans offsets into the packet rather than splitting it, so a valid line
// costs one pass and a handful of small allocations, and never reads past
// `end` (fieldEnd aside, see there): a packet takes linear time whatever it
// holds.
function parseLine(s: string, start: number, end: number): UsageSample | string | null {
  let firstColon = -1;
  let lastColon = -1;
  let firstComma = -1;
  let pipe = -1;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === PIPE) {
      pipe = i;
      break;
    }
    if (c === COLON) {
      if (firstColon < 0) firstColon = i;
      lastColon = i;
    } else if (c === COMMA) {
      if (firstComma < 0) firstComma = i;
    } else if (c <= SPACE || c === DEL) {
      return `control character or space in ${quote(s, start, end)}`;
    }
  }
  if (pipe < 0) return `missing '|' in ${quote(s, start, end)}`;
  if (firstColon < 0) return `missing ':' in ${quote(s, start, end)}`;

  // Influx tags in the name may hold IPv6 colons, so then the value follows
  // the last colon; otherwise the first, so set members like `::1` survive.
  const influxTags = firstComma >= 0 && firstComma < firstColon;
  const valueStart = (influxTags ? lastColon : firstColon) + 1;
  const nameEnd = influxTags ? firstComma : firstColon;
  if (nameEnd === start) return `empty name in ${quote(s, start, end)}`;
  const isUsage = nameEnd - start === USAGE_METRIC.length && s.startsWith(USAGE_METRIC, start);

  const typeEnd = fieldEnd(s, pipe + 1, end);
  const type = metricType(s, pipe + 1, typeEnd);
  if (type === undefined) return `unknown type ${quote(s, pipe + 1, typeEnd)}`;
  if (valueStart === pipe) return `empty value in ${quote(s, start, end)}`;
  // Set members are arbitrary strings (`users:alice|s`); every other type is a number.
  const value = type === 's' ? NaN : parseDecimal(s, valueStart, pipe);
  if (type !== 's' && Number.isNaN(value)) return `bad value ${quote(s, valueStart, pipe)}`;

  const tags: UsageTags | undefined = isUsage
    ? { key: undefined, org: undefined, ip: undefined, outcome: undefined }
    : undefined;
  let rate = 1;
  let sawRate = false;
  for (let bar = typeEnd; bar < end; ) {
    const from = bar + 1;
    const to = fieldEnd(s, from, end);
    if (to === from) return `empty field in ${quote(s, start, end)}`;
    const c = s.charCodeAt(from);
    if (c === AT) {
      rate = parseDecimal(s, from + 1, to);
      if (sawRate || !(rate > 0 && rate <= 1)) return `bad rate ${quote(s, from, to)}`;
      sawRate = true;
    } else if (c === HASH) {
      const error = tags && readTags(s, from + 1, to, COLON, tags);
      if (error) return error;
    } else if (c === UPPER_T) {
      if (!isDigits(s, from + 1, to)) return `bad timestamp ${quote(s, from, to)}`;
    } else if (!isLetter(c)) {
      // DogStatsD keeps adding letter-keyed fields (c:, e:, card:); anything else is garbage.
      return `unknown field ${quote(s, from, to)}`;
    }
    bar = to;
  }
  if (tags === undefined) return null;

  if (type !== 'c') return `${USAGE_METRIC} must be a counter, got type "${type}"`;
  if (!(value > 0)) return `bad value ${quote(s, valueStart, pipe)}`;
  const count = Math.round(value / rate);
  if (!(count >= 1 && count <= MAX_LINE_COUNT)) return `count ${count} out of range`;
  if (influxTags) {
    const error = readTags(s, firstComma + 1, valueStart - 1, EQUALS, tags);
    if (error) return error;
  }
  return usageSample(tags, count);
}

function usageSample(tags: UsageTags, count: number): UsageSample | string {
  const { key, org, ip, outcome } = tags;
  if (key === undefined) return 'missing tag "key"';
  if (org === undefined) return 'missing tag "org"';
  if (ip === undefined) return 'missing tag "ip"';
  if (outcome === undefined) return 'missing tag "outcome"';
  // The constant, not the slice of the packet: the aggregator indexes by it, and an interned
  // string makes that property lookup fast.
  const knownOutcome = OUTCOME_BY_NAME.get(outcome);
  if (knownOutcome === undefined) return `unknown outcome ${quote(outcome)}`;
  if (!isIpAddress(ip)) return `bad ip ${quote(ip)}`;
  return { keyId: key, orgId: org, ip, outcome: knownOutcome, count };
}

// Reads comma-separated `k<sep>v` tags in s[start, end) into `tags`. Each is
// split on its first separator so IPv6 values stay whole; valueless and
// unknown tags (global tags such as env:prod) are skipped. Ids are validated
// here, in the packet, while finding where they end: one pass, not two.
function readTags(s: string, start: number, end: number, separator: number, tags: UsageTags): string | undefined {
  let at = start;
  while (at < end) {
    const name = tagName(s, at, end, separator);
    if (name === undefined) {
      at = tagEnd(s, at, end) + 1;
      continue;
    }
    const valueStart = at + name.length + 1;
    let valueEnd: number;
    if (name === 'key' || name === 'org') {
      valueEnd = valueStart + UUID_LENGTH;
      if (valueEnd > end || !isUuidAt(s, valueStart) || (valueEnd < end && s.charCodeAt(valueEnd) !== COMMA)) {
        return `bad ${name} ${quote(s, valueStart, tagEnd(s, valueStart, end))}`;
      }
    } else {
      valueEnd = tagEnd(s, valueStart, end);
    }
    const value = s.slice(valueStart, valueEnd);
    const seen = tags[name];
    // Last-one-wins would let a value that smuggled in `,key:<other>`
    // re-attribute the use, so two different values void the line.
    if (seen !== undefined && seen !== value) return `conflicting "${name}" tags`;
    tags[name] = value;
    at = valueEnd + 1;
  }
  return undefined;
}

function tagName(s: string, at: number, end: number, separator: number): keyof UsageTags | undefined {
  switch (s.charCodeAt(at)) {
    case LOWER_K:
      return isTag(s, at, end, 'key', separator) ? 'key' : undefined;
    case LOWER_O:
      if (isTag(s, at, end, 'org', separator)) return 'org';
      return isTag(s, at, end, 'outcome', separator) ? 'outcome' : undefined;
    case LOWER_I:
      return isTag(s, at, end, 'ip', separator) ? 'ip' : undefined;
    default:
      return undefined;
  }
}

function isTag(s: string, at: number, end: number, name: string, separator: number): boolean {
  return at + name.length < end && s.charCodeAt(at + name.length) === separator && s.startsWith(name, at);
}

function tagEnd(s: string, from: number, end: number): number {
  let i = from;
  while (i < end && s.charCodeAt(i) !== COMMA) i++;
  return i;
}

// A bounded indexOf: when the '|' found lies past `end`, only this line's
// last field was read beyond it, and the lines in between hold no '|' so
// they never get here; a packet is still read in linear time.
function fieldEnd(s: string, from: number, end: number): number {
  const pipe = s.indexOf('|', from);
  return pipe < 0 || pipe > end ? end : pipe;
}

function metricType(s: string, start: number, end: number): string | undefined {
  if (end - start === 2) return s.startsWith('ms', start) ? 'ms' : undefined;
  if (end - start !== 1) return undefined;
  const type = s[start];
  return type === 'c' || type === 'g' || type === 'h' || type === 's' || type === 'd' ? type : undefined;
}

// Plain decimal only: Number() alone would also take '', ' 1', '0x10' and
// 'Infinity'. Returns NaN when s[start, end) is not a finite decimal.
function parseDecimal(s: string, start: number, end: number): number {
  let i = start;
  const sign = s.charCodeAt(i);
  if (sign === PLUS || sign === MINUS) i++;
  let digits = 0;
  let integer = 0;
  for (; i < end && isDigit(s.charCodeAt(i)); i++) {
    integer = integer * 10 + (s.charCodeAt(i) - ZERO);
    digits++;
  }
  // Fast path for the common `:1|c`; 15 digits stay exact in a double.
  if (i === end && digits > 0 && digits <= 15) return sign === MINUS ? -integer : integer;
  if (i < end && s.charCodeAt(i) === DOT) {
    for (i++; i < end && isDigit(s.charCodeAt(i)); i++) digits++;
  }
  if (digits === 0) return NaN;
  if (i < end && (s.charCodeAt(i) === LOWER_E || s.charCodeAt(i) === UPPER_E)) {
    i++;
    if (i < end && (s.charCodeAt(i) === PLUS || s.charCodeAt(i) === MINUS)) i++;
    if (!isDigits(s, i, end)) return NaN;
    i = end;
  }
  if (i !== end) return NaN;
  const value = Number(s.slice(start, end));
  return Number.isFinite(value) ? value : NaN;
}

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE;
}

function isDigits(s: string, start: number, end: number): boolean {
  if (start >= end) return false;
  for (let i = start; i < end; i++) if (!isDigit(s.charCodeAt(i))) return false;
  return true;
}

function isLetter(c: number): boolean {
  const lower = c | 0x20; // ASCII case fold
  return lower >= 97 && lower <= 122; // a-z
}

// Canonical lowercase 8-4-4-4-12: the form Postgres prints, so equal ids are
// equal strings. The caller guarantees 36 characters from `at`.
function isUuidAt(s: string, at: number): boolean {
  return (
    isHexRun(s, at, at + 8) &&
    s.charCodeAt(at + 8) === MINUS &&
    isHexRun(s, at + 9, at + 13) &&
    s.charCodeAt(at + 13) === MINUS &&
    isHexRun(s, at + 14, at + 18) &&
    s.charCodeAt(at + 18) === MINUS &&
    isHexRun(s, at + 19, at + 23) &&
    s.charCodeAt(at + 23) === MINUS &&
    isHexRun(s, at + 24, at + UUID_LENGTH)
  );
}

function isHexRun(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (!isDigit(c) && !(c >= 97 && c <= 102)) return false; // 0-9, a-f
  }
  return true;
}

// Zone ids (fe80::1%eth0) are meaningless off-host and Postgres inet rejects
// them. IPv4 is checked by hand because node's isIP regex cost a fifth of the
// parse time.
function isIpAddress(v: string): boolean {
  return v.includes(':') ? isIP(v) === 6 && !v.includes('%') : isIPv4(v);
}

// The language of node's isIPv4: four dotted decimal octets, no leading zeros.
function isIPv4(v: string): boolean {
  let octets = 0;
  let i = 0;
  for (;;) {
    const start = i;
    let octet = 0;
    for (; i < v.length; i++) {
      const c = v.charCodeAt(i);
      if (!isDigit(c)) break;
      octet = octet * 10 + (c - ZERO);
    }
    const digits = i - start;
    if (digits === 0 || octet > 255 || (digits > 1 && v.charCodeAt(start) === ZERO)) return false;
    octets++;
    if (i === v.length) return octets === 4;
    if (octets === 4 || v.charCodeAt(i) !== DOT) return false;
    i++;
  }
}

// Reasons get logged: cap the echoed input and escape control characters.
function quote(s: string, start = 0, end = s.length): string {
  const cut = end - start > MAX_QUOTED_CHARS;
  return JSON.stringify(s.slice(start, cut ? start + MAX_QUOTED_CHARS : end)) + (cut ? '…' : '');
}
