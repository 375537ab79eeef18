// The StatsD wire format between the API (encodeUsageLine, packDatagrams) and
// the collector (parsePacket). No sockets, no timers; the one draw is a rated line's rounding
// (unbiasedRound).
import { isIP } from 'node:net';
import { canonicalIpv6 } from './ipv6Canonical';

export const OUTCOMES = ['ok', 'forbidden', 'expired', 'revoked', 'bad_secret', 'cross_org'] as const;
export type Outcome = (typeof OUTCOMES)[number];

// The outcomes for which the verifier found the presented secret right (it checks the secret
// before status, scope or org). Only these are uses of the key; bad_secret is a failed attempt
// by someone who may know no more than the key's id.
export const PROVEN_OUTCOMES = ['ok', 'forbidden', 'expired', 'revoked', 'cross_org'] as const satisfies readonly Outcome[];

/** A count of 0 for every outcome: the start of every per-outcome tally. */
export function zeroOutcomes(): Record<Outcome, number> {
  return { ok: 0, forbidden: 0, expired: 0, revoked: 0, bad_secret: 0, cross_org: 0 };
}

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
  /**
   * When the client said the uses happened (DogStatsD v1.3 `|T<unix seconds>`), in milliseconds.
   * Absent on lines without one; the aggregator bounds it to a window around its clock.
   */
  timestamp?: number;
  /**
   * The use proved the key's previous secret (a rotation's grace period), tagged `secret:previous`
   * on the wire. Absent for the current secret, whose lines stay as they always were.
   */
  previousSecret?: true;
}

/** The tag a use of a key's previous secret carries; a collector that predates it skips it as any unknown tag. */
export const PREVIOUS_SECRET_TAG = 'secret:previous';

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
  const line = `${USAGE_METRIC}:${count}|c|#key:${tagValue(keyId)},org:${tagValue(orgId)},ip:${tagValue(ip)},outcome:${tagValue(outcome)}`;
  // Last, so the line up to it is the packed layout the collector's byte parser reads.
  return sample.previousSecret === true ? `${line},${PREVIOUS_SECRET_TAG}` : line;
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
export const UUID_LENGTH = 36;
const MAX_QUOTED_CHARS = 60;
// Unix seconds up to the year 5138: any more digits is not a clock, and the product stays exact.
const MAX_TIMESTAMP_DIGITS = 11;

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
const LOWER_S = 115;
const PIPE = 124;
const DEL = 127;

/**
 * Parses every line of a datagram: usage lines go to `onSample`, other valid StatsD lines to
 * `onOther` (the relay) if given — sliced only then — and malformed lines are counted.
 * The collector parses the received bytes with parseDatagram (shared/usageDatagram.ts), which
 * gives the same result; this is the definition it is tested against.
 */
export function parsePacket(packet: string, onSample: (sample: UsageSample) => void, onOther?: (line: string) => void): PacketResult {
  const result: PacketResult = { lines: 0, usage: 0, other: 0, invalid: 0 };
  for (let start = 0; start < packet.length;) start = parseTextLine(packet, start, result, onSample, onOther);
  return result;
}

/** Parses the line of `packet` starting at `start` into `result`; returns where the next line starts. */
export function parseTextLine(
  packet: string,
  start: number,
  result: PacketResult,
  onSample: (sample: UsageSample) => void,
  onOther: ((line: string) => void) | undefined,
): number {
  let next = packet.indexOf('\n', start);
  if (next < 0) next = packet.length;
  const end = next > start && packet.charCodeAt(next - 1) === CR ? next - 1 : next;
  if (end > start) {
    result.lines++;
    const parsed = parseLine(packet, start, end);
    if (parsed === null) {
      result.other++;
      if (onOther !== undefined) onOther(packet.slice(start, end));
    } else if (typeof parsed === 'string') {
      result.invalid++;
      result.firstError ??= parsed;
    } else {
      result.usage++;
      onSample(parsed);
    }
  }
  return next + 1;
}

interface UsageTags {
  key: string | undefined;
  org: string | undefined;
  ip: string | undefined;
  outcome: string | undefined;
  /** `previous` for a use of a key's previous secret; any other value means nothing (a later sender's). */
  secret: string | undefined;
}

interface LineFields extends UsageTags {
  rate: number;
  /** From `|T`, in milliseconds. */
  timestamp: number | undefined;
}

// Parses s[start, end), one line without its terminator. Returns the sample
// of a usage line, null for any other valid StatsD line, or why it is invalid.
// It scans offsets into the packet rather than splitting it, so a valid line
// costs one pass and a handful of small allocations, and never reads past
// `end` (fieldEnd aside, see there): a packet takes linear time whatever it
// holds.
function parseLine(s: string, start: number, end: number): UsageSample | string | null {
  if (isEventOrServiceCheck(s, start, end)) return null;
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
  // the last colon; otherwise the first, and the colons after it separate
  // DogStatsD v1.1 packed values (`name:1:2:3|c`).
  const influxTags = firstComma >= 0 && firstComma < firstColon;
  const valueStart = (influxTags ? lastColon : firstColon) + 1;
  const nameEnd = influxTags ? firstComma : firstColon;
  if (nameEnd === start) return `empty name in ${quote(s, start, end)}`;
  const isUsage = nameEnd - start === USAGE_METRIC.length && matchesAt(s, start, USAGE_METRIC);

  const typeEnd = fieldEnd(s, pipe + 1, end);
  const type = metricType(s, pipe + 1, typeEnd);
  if (type === undefined) return `unknown type ${quote(s, pipe + 1, typeEnd)}`;
  if (valueStart === pipe) return `empty value in ${quote(s, start, end)}`;
  // Set members are arbitrary strings (`users:alice|s`, `clients:::1|s`); every other type is numbers.
  const packed = lastColon >= valueStart;
  const value = type === 's' ? NaN : packed ? parseValues(s, valueStart, pipe, isUsage) : parseDecimal(s, valueStart, pipe);
  if (type !== 's' && Number.isNaN(value)) return `bad value ${quote(s, valueStart, pipe)}`;

  const fields: LineFields = { rate: 1, timestamp: undefined, key: undefined, org: undefined, ip: undefined, outcome: undefined, secret: undefined };
  const error = readFields(s, start, typeEnd, end, isUsage, fields);
  if (error) return error;
  if (!isUsage) return null;

  if (type !== 'c') return `${USAGE_METRIC} must be a counter, got type "${type}"`;
  if (!(value > 0)) return `bad value ${quote(s, valueStart, pipe)}`;
  const scaled = value / fields.rate;
  // Whether the line is valid is decided on the nearest count, as it always was, never on the
  // draw: a value below 1 (no client sends one for a use) still counts 1, and MAX_LINE_COUNT caps
  // what one line may say.
  const nearest = Math.round(scaled);
  if (!(nearest >= 1 && nearest <= MAX_LINE_COUNT)) return `count ${nearest} out of range`;
  const count = Math.min(MAX_LINE_COUNT, Math.max(1, unbiasedRound(scaled)));
  if (influxTags) {
    const error = readTags(s, firstComma + 1, valueStart - 1, EQUALS, fields);
    if (error) return error;
  }
  return usageSample(fields, count);
}

// DogStatsD events (`_e{5,4}:title|text|#tags`) and service checks (`_sc|name|0|…`) are not
// metrics: the comma in `{5,4}` would read as Telegraf tags, a service check has no ':', and both
// may hold spaces. They are other lines, relayed whole like any metric that is not usage.
function isEventOrServiceCheck(s: string, start: number, end: number): boolean {
  return end - start >= 3 && (matchesAt(s, start, '_e{') || (end - start >= 4 && matchesAt(s, start, '_sc|')));
}

// A client sampling at a rate sends each kept call as `:1|c|@rate`: rounding 1/rate to the nearest
// count biased every such line the same way (@0.7 counted 1, not 1.43: −30 %; @0.4 counted 3,
// not 2.5: +20 %). Rounding up with the probability of the fraction makes the count right on
// average, as Etsy statsd's and the Datadog agent's float sums are. A whole number draws nothing.
function unbiasedRound(x: number): number {
  const whole = Math.floor(x);
  return x > whole && Math.random() < x - whole ? whole + 1 : whole;
}

// The `|`-separated fields after the type, s[typeEnd, end) of the line starting at `start`: a
// sample rate, DogStatsD tags (read only on usage lines), a timestamp, and letter-keyed
// extensions, which are tolerated. Returns why the line is invalid, if it is.
function readFields(s: string, start: number, typeEnd: number, end: number, isUsage: boolean, fields: LineFields): string | undefined {
  let sawRate = false;
  for (let bar = typeEnd; bar < end;) {
    const from = bar + 1;
    const to = fieldEnd(s, from, end);
    if (to === from) return `empty field in ${quote(s, start, end)}`;
    const c = s.charCodeAt(from);
    if (c === AT) {
      fields.rate = parseDecimal(s, from + 1, to);
      if (sawRate || !(fields.rate > 0 && fields.rate <= 1)) return `bad rate ${quote(s, from, to)}`;
      sawRate = true;
    } else if (c === HASH) {
      const error = isUsage ? readTags(s, from + 1, to, COLON, fields) : undefined;
      if (error) return error;
    } else if (c === UPPER_T) {
      if (fields.timestamp !== undefined || to - from - 1 > MAX_TIMESTAMP_DIGITS || !isDigits(s, from + 1, to)) return `bad timestamp ${quote(s, from, to)}`;
      fields.timestamp = Number(s.slice(from + 1, to)) * 1000;
    } else if (!isLetter(c)) {
      // DogStatsD keeps adding letter-keyed fields (c:, e:, card:); anything else is garbage.
      return `unknown field ${quote(s, from, to)}`;
    }
    bar = to;
  }
  return undefined;
}

// A string of its own. A slice of the packet's text shares the packet's characters (V8, from 13
// characters on), and whatever keeps a sample's id or address (a pending key, a held batch: hours
// in an outage) would keep the whole packet alive: 60 KB a key for a sender padding each line.
// V8 copies a joined string's characters when it is sliced. (The byte parser, shared/usageDatagram.ts,
// makes its strings from the bytes, at less than half the cost.)
export const ownCopy = (text: string): string => (' ' + text).slice(1);

function usageSample(fields: LineFields, count: number): UsageSample | string {
  const { key, org, ip: written, outcome, timestamp, secret } = fields;
  if (key === undefined) return 'missing tag "key"';
  if (org === undefined) return 'missing tag "org"';
  if (written === undefined) return 'missing tag "ip"';
  if (outcome === undefined) return 'missing tag "outcome"';
  // The constant, not the slice of the packet: the aggregator indexes by it, and an interned
  // string makes that property lookup fast.
  const knownOutcome = OUTCOME_BY_NAME.get(outcome);
  if (knownOutcome === undefined) return `unknown outcome ${quote(outcome)}`;
  const address = wireAddress(written);
  if (address === undefined) return `bad ip ${quote(written)}`;
  // Strings of their own: slices of the packet would keep it alive as long as the sample is kept.
  const keyId = ownCopy(key);
  const ip = ownCopy(address);
  // Literals rather than an optional property added later: one object shape per kind of line.
  if (secret === 'previous') {
    return timestamp === undefined
      ? { keyId, orgId: org, ip, outcome: knownOutcome, count, previousSecret: true }
      : { keyId, orgId: org, ip, outcome: knownOutcome, count, timestamp, previousSecret: true };
  }
  return timestamp === undefined ? { keyId, orgId: org, ip, outcome: knownOutcome, count } : { keyId, orgId: org, ip, outcome: knownOutcome, count, timestamp };
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
    let value: string;
    if (name === 'org' && isLastOrg(s, valueStart, end)) {
      valueEnd = valueStart + UUID_LENGTH;
      value = lastOrg;
    } else if (name === 'key' || name === 'org') {
      valueEnd = valueStart + UUID_LENGTH;
      const form = valueEnd <= end && (valueEnd === end || s.charCodeAt(valueEnd) === COMMA) ? uuidForm(s, valueStart) : 0;
      if (form === 0) return `bad ${name} ${quote(s, valueStart, tagEnd(s, valueStart, end))}`;
      value = s.slice(valueStart, valueEnd);
      // UUIDs are case-insensitive; the lower-case form is the one PostgreSQL prints and the
      // aggregator keys by, so KEY and key are the same key.
      if (form & HEX_UPPER) value = value.toLowerCase();
      if (name === 'org') value = rememberOrg(value);
    } else {
      valueEnd = tagEnd(s, valueStart, end);
      // The known outcomes are matched in place: no slice to allocate and hash.
      value = (name === 'outcome' && outcomeAt(s, valueStart, valueEnd)) || s.slice(valueStart, valueEnd);
    }
    const seen = tags[name];
    // Last-one-wins would let a value that smuggled in `,key:<other>`
    // re-attribute the use, so two different values void the line.
    if (seen !== undefined && seen !== value) return `conflicting "${name}" tags`;
    tags[name] = value;
    at = valueEnd + 1;
  }
  return undefined;
}

// Nearly every line of a datagram, and of the next, names the same org. The last org id read is
// kept, and a line naming it again (in the same case) reuses that string: no validation, no
// slice, and the aggregator's org check on the key's entry becomes an identity comparison.
// Its characters are also kept in a typed array: comparing against those was cheaper than
// against the string.
// Until an org was read there is none to match: the codes' zeros would match 36 NULs, which a
// forged line may hold, and such a line was taken with '' for its org (every flush after failed on
// it, ''::uuid).
let lastOrg = '';
const lastOrgCodes = new Uint8Array(UUID_LENGTH);

/** The org id as a string of its own, kept as the last one read. */
function rememberOrg(org: string): string {
  lastOrg = ownCopy(org);
  for (let i = 0; i < UUID_LENGTH; i++) lastOrgCodes[i] = org.charCodeAt(i);
  return lastOrg;
}

function isLastOrg(s: string, at: number, end: number): boolean {
  const idEnd = at + UUID_LENGTH;
  if (lastOrg === '' || idEnd > end || (idEnd !== end && s.charCodeAt(idEnd) !== COMMA)) return false;
  for (let i = 0; i < UUID_LENGTH; i++) if (s.charCodeAt(at + i) !== lastOrgCodes[i]) return false;
  return true;
}

function outcomeAt(s: string, start: number, end: number): Outcome | undefined {
  for (const outcome of OUTCOMES) {
    if (outcome.length === end - start && matchesAt(s, start, outcome)) return outcome;
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
    case LOWER_S:
      return isTag(s, at, end, 'secret', separator) ? 'secret' : undefined;
    default:
      return undefined;
  }
}

function isTag(s: string, at: number, end: number, name: string, separator: number): boolean {
  return at + name.length < end && s.charCodeAt(at + name.length) === separator && matchesAt(s, at, name);
}

// s.startsWith(text, at) without its cost: the builtin with a position took an eighth of the
// parse time in a profile, this loop a fraction of that. The caller guarantees s is long enough
// or accepts a mismatch past its end (charCodeAt gives NaN there).
function matchesAt(s: string, at: number, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (s.charCodeAt(at + i) !== text.charCodeAt(i)) return false;
  return true;
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
  if (end - start === 2) return matchesAt(s, start, 'ms') ? 'ms' : undefined;
  if (end - start !== 1) return undefined;
  const type = s[start];
  return type === 'c' || type === 'g' || type === 'h' || type === 's' || type === 'd' ? type : undefined;
}

// DogStatsD v1.1 packs several values into one line (`name:1:2:3|c`). Returns their sum, or NaN
// if one is not a finite decimal. With `positive` (usage lines) it returns 0 as soon as one value
// is not above zero, so the caller refuses the line: a use cannot be taken back.
function parseValues(s: string, start: number, end: number, positive: boolean): number {
  let sum = 0;
  for (let from = start; ;) {
    let to = s.indexOf(':', from);
    if (to < 0 || to > end) to = end;
    const value = parseDecimal(s, from, to);
    if (Number.isNaN(value)) return NaN;
    if (positive && !(value > 0)) return 0;
    sum += value;
    if (to === end) return sum;
    from = to + 1;
  }
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

// 8-4-4-4-12 hex digits. Returns 0 if s holds no UUID at `at`, else HEX_LOWER, with HEX_UPPER
// set if a digit is upper case. The caller guarantees 36 characters from `at`. One loop with one
// table load per character: two of these run for every usage line.
export function uuidForm(s: string, at: number): number {
  let form = 0;
  let dashes = 0;
  for (let i = 0; i < UUID_LENGTH; i++) {
    const c = s.charCodeAt(at + i);
    const hex = c < 128 ? HEX_CLASS[c] : 0;
    if (hex !== 0) {
      form |= hex;
    } else if (c === MINUS && (i === 8 || i === 13 || i === 18 || i === 23)) {
      dashes++;
    } else {
      return 0;
    }
  }
  // Dashes only where they belong, and all four there: no hex digit stood in for one.
  return dashes === 4 ? form : 0;
}

export const HEX_LOWER = 1;
const HEX_UPPER = 2;
// 0-9 and a-f → HEX_LOWER, A-F → HEX_UPPER, anything else 0.
const HEX_CLASS = new Uint8Array(128);
for (let c = ZERO; c <= NINE; c++) HEX_CLASS[c] = HEX_LOWER;
for (let c = 97; c <= 102; c++) HEX_CLASS[c] = HEX_LOWER;
for (let c = 65; c <= 70; c++) HEX_CLASS[c] = HEX_UPPER;

// Zone ids (fe80::1%eth0) are meaningless off-host and Postgres inet rejects
// them. IPv4 is checked by hand because node's isIP regex cost a fifth of the
// parse time.
function isIpAddress(v: string): boolean {
  return v.includes(':') ? isIP(v) === 6 && !v.includes('%') : isIPv4(v);
}

/**
 * A line's address as the collector keeps it, or undefined when it is none. IPv6 in its canonical
 * form, an IPv4-mapped one as IPv4 (shared/ipv6Canonical.ts): the API sends them so, other StatsD
 * clients may not.
 */
export function wireAddress(v: string): string | undefined {
  if (!isIpAddress(v)) return undefined;
  return v.includes(':') ? canonicalIpv6(v) : v;
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
