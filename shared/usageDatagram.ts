// The collector's parser for a datagram as received: its bytes. Nearly every usage line has the
// one layout encodeUsageLine writes (the API's recorder; hot-shots sends the same tags in the same
// order):
//
//   apikey.used:<count>|c|#key:<uuid>,org:<uuid>,ip:<address>,outcome:<outcome>
//
// Such a line is read here straight from the bytes: the fixed parts compared four bytes at a time,
// and the ids and the address looked up in tables of strings already validated, so a key, org or
// address seen before costs a few word comparisons, no validation and no new string (the
// aggregator then finds it by a string whose hash is already known). Every other line — other
// metrics, other tag orders, a rate, a timestamp, upper-case ids, anything malformed — goes to
// parsePacket's line parser on the latin1 text, decoded once per datagram and only when needed.
// The result is parsePacket's for every input (test/usageDatagram.test.ts compares the two on
// generated packets).
import {
  HEX_LOWER,
  MAX_LINE_COUNT,
  OUTCOMES,
  USAGE_METRIC,
  wireAddress,
  parseTextLine,
  uuidForm,
  type Outcome,
  type PacketResult,
  type UsageSample,
} from './usageWire';

const LF = 10;
const CR = 13;
const COMMA = 44;
const ZERO = 48;
const NINE = 57;
const COLON = 58;
const UUID_LENGTH = 36;
// The longest textual IPv6 address (with an embedded IPv4 part): the comma after an address is
// looked for no further, so a line is still read in linear time.
const MAX_IP_CHARS = 45;
const MAX_COUNT_DIGITS = String(MAX_LINE_COUNT).length;
// Copied once, for the per-line code: run from source under tsx (the benchmarks, the tests), an
// imported binding is two getter calls at every use, about 6 % of a line's time in the profiles of
// docs/benchmarks.md §3 (2026-12-02 03:00); compiled by tsc it is a property load.
const MAX_COUNT = MAX_LINE_COUNT;
const OUTCOME_LIST: readonly Outcome[] = OUTCOMES;

/** The four bytes of `text` from `at` as DataView.getInt32(…, true) reads them. */
function word(text: string, at: number): number {
  return text.charCodeAt(at) | (text.charCodeAt(at + 1) << 8) | (text.charCodeAt(at + 2) << 16) | (text.charCodeAt(at + 3) << 24);
}

const PREFIX = `${USAGE_METRIC}:`;
// Three words: test/usageDatagram.test.ts checks the name's length.
const NAME_0 = word(PREFIX, 0);
const NAME_1 = word(PREFIX, 4);
const NAME_2 = word(PREFIX, 8);
const TYPE_TAGS = word('|c|#', 0);
const KEY_TAG = word('key:', 0);
const ORG_TAG = word(',org', 0);
const IP_TAG = word(',ip:', 0);
const OUTCOME_TAG_0 = word(',out', 0);
const OUTCOME_TAG_1 = word('come', 0);
// From the count's end: '|c|#key:' + uuid + ',org:' + uuid + ',ip:'.
const TO_IP = 8 + UUID_LENGTH + 5 + UUID_LENGTH + 4;
// From the address's end: ',outcome:' and the shortest outcome.
const FROM_IP_END = 9 + Math.min(...OUTCOMES.map((outcome) => outcome.length));

export type DatagramParser = (packet: Buffer, onSample: (sample: UsageSample) => void, onOther?: (line: string) => void) => PacketResult;

/**
 * Returns a parser of received datagrams that gives what parsePacket gives for their latin1 text.
 * It keeps the ids and addresses it has validated (bounded tables), so the collector makes one
 * and keeps it. `keysAtOnce`: how many distinct keys it should keep (the collector's pending-key
 * cap); the key and address tables get at least twice as many slots, within their bounds.
 */
export function createDatagramParser(keysAtOnce = 0): DatagramParser {
  // Apart, so that keys (many) never push out the orgs (few, on every line).
  const tables = parserTables(keysAtOnce);
  return (packet, onSample, onOther) => {
    const result: PacketResult = { lines: 0, usage: 0, other: 0, invalid: 0 };
    const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
    const text: Text = { packet, decoded: undefined };
    for (let start = 0; start < packet.length;) {
      const next = scanUsageLine(packet, view, start, tables, text, onSample);
      if (next > start) {
        result.lines++;
        result.usage++;
        start = next;
      } else {
        start = parseTextLine(latin1(text), start, result, onSample, onOther);
      }
    }
    return result;
  };
}

interface Tables {
  keys: InternTable;
  orgs: InternTable;
  ips: InternTable;
}

/** The parser's tables of validated ids and addresses (exported for the tests of their sizes). */
export function parserTables(keysAtOnce: number): Tables {
  const bits = tableSlotBits(keysAtOnce);
  return {
    keys: new InternTable(bits, UUID_LENGTH, canonicalUuid),
    orgs: new InternTable(ORG_SLOT_BITS, UUID_LENGTH, canonicalUuid),
    ips: new InternTable(bits, MAX_IP_CHARS, ipAddress),
  };
}

export interface Text {
  packet: Buffer;
  decoded: string | undefined;
}

function latin1(text: Text): string {
  text.decoded ??= text.packet.toString('latin1');
  return text.decoded;
}

// Reads the line at `start` if it has encodeUsageLine's layout and is valid: hands its sample to
// onSample and returns where the next line starts. Otherwise returns -1 and has handed nothing:
// the line parser then decides what the line is, error message included.
function scanUsageLine(b: Buffer, v: DataView, start: number, tables: Tables, text: Text, onSample: (sample: UsageSample) => void): number {
  const length = b.length;
  if (
    start + PREFIX.length > length ||
    v.getInt32(start, true) !== NAME_0 ||
    v.getInt32(start + 4, true) !== NAME_1 ||
    v.getInt32(start + 8, true) !== NAME_2
  ) {
    return -1;
  }
  let at = start + PREFIX.length;
  const digitsEnd = Math.min(at + MAX_COUNT_DIGITS, length);
  let count = 0;
  for (; at < digitsEnd && b[at] >= ZERO && b[at] <= NINE; at++) count = count * 10 + (b[at] - ZERO);
  if (count < 1 || count > MAX_COUNT || at + TO_IP + FROM_IP_END > length) return -1;
  if (v.getInt32(at, true) !== TYPE_TAGS || v.getInt32(at + 4, true) !== KEY_TAG) return -1;
  const keyId = tables.keys.intern(v, at + 8, at + 8 + UUID_LENGTH, text);
  at += 8 + UUID_LENGTH;
  if (keyId === undefined || v.getInt32(at, true) !== ORG_TAG || b[at + 4] !== COLON) return -1;
  const orgId = tables.orgs.intern(v, at + 5, at + 5 + UUID_LENGTH, text);
  at += 5 + UUID_LENGTH;
  if (orgId === undefined || v.getInt32(at, true) !== IP_TAG) return -1;
  at += 4;
  const ipEnd = commaAfter(b, at, Math.min(at + MAX_IP_CHARS + 1, length - FROM_IP_END + 1));
  if (ipEnd <= at) return -1;
  if (v.getInt32(ipEnd, true) !== OUTCOME_TAG_0 || v.getInt32(ipEnd + 4, true) !== OUTCOME_TAG_1 || b[ipEnd + 8] !== COLON) return -1;
  const ip = tables.ips.intern(v, at, ipEnd, text);
  if (ip === undefined) return -1;
  const outcome = outcomeAt(b, ipEnd + 9);
  if (outcome === undefined) return -1;
  const next = lineEnd(b, ipEnd + 9 + outcome.length);
  if (next < 0) return -1;
  onSample({ keyId, orgId, ip, outcome, count });
  return next;
}

// The first comma in b[from, to), or -1. A loop, not Buffer#indexOf: a call into C++ costs more
// than the dozen bytes of an address.
function commaAfter(b: Buffer, from: number, to: number): number {
  for (let i = from; i < to; i++) if (b[i] === COMMA) return i;
  return -1;
}

function outcomeAt(b: Buffer, at: number): Outcome | undefined {
  for (const outcome of OUTCOME_LIST) if (bytesAre(b, at, outcome)) return outcome;
  return undefined;
}

function bytesAre(b: Buffer, at: number, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (b[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

// Where the next line starts if the line ends at `at` (a '\n', a '\r\n', or the datagram's end,
// a lone '\r' before it included, as parsePacket splits lines), else -1.
function lineEnd(b: Buffer, at: number): number {
  if (at === b.length || b[at] === LF) return at + 1;
  if (b[at] === CR && (at + 1 === b.length || b[at + 1] === LF)) return at + 2;
  return -1;
}

// Strings already validated (ids, addresses), by a hash of their bytes, in tables of bounded size
// whatever a sender invents: full at the default cap's 256 k slots, ≈ 25 MiB for ids and 22-34 MiB
// for addresses (IPv4-IPv6), their strings included (measured, docs/benchmarks.md §3d, the tables
// probed). A string pushed out is only validated again when it comes back. Only canonical
// (lower-case) ids are kept; an upper-case one is left to the line parser, which lower-cases it. A
// string accepted is made of its own at once: a slice of the datagram's text, kept by the table or
// by whatever keeps the sample, would keep the datagram alive. A line whose strings are all found
// needs no decoded text at all.
// A string found costs nothing, one validated again costs a new string (garbage) that the
// aggregator hashes and compares by content: direct-mapped, with two id slots a key at the
// default cap and 64 k address slots, the ids of 31-37 % of the lines of 100,000 keys and the
// addresses of 55-85 % were validated again, pass after pass (docs/benchmarks.md §3d, the tables
// probed). So a string looks for its place in a window of slots from its own (linear probing),
// and only when all of them are taken does it push one out, one slot of the window after another.
// Until the table has seen about as many strings as it has slots, nearly every key the collector
// can hold at once keeps its slot (0-5 of 100,000 do not). Slots are never emptied, so after that
// (addresses coming and going over days, or a flood of forged ids) a lookup reads up to the whole
// window and a new string pushes out one of it: bounded, and never a wrong string.
const MIN_SLOT_BITS = 16;
const MAX_SLOT_BITS = 20;
/** Slots of the key and address tables: a power of two at least twice the keys held at once, within 64 k–1 M. */
export const tableSlotBits = (keysAtOnce: number) => Math.min(MAX_SLOT_BITS, Math.max(MIN_SLOT_BITS, Math.ceil(Math.log2(Math.max(1, 2 * keysAtOnce)))));
const ORG_SLOT_BITS = 8;
// A table starts with 4 k slots (or fewer, at most) and doubles, up to its size, when half full,
// or when a string's window is full once a quarter is.
const START_SLOT_BITS = 12;
// Slots a string may take from its own: a lookup reads at most this many. In a table filled to
// half, linear probing needs 1.5 on average to find a string, 2.5 to learn it is not there.
const WINDOW = 16;
// The bits of a word's first 1, 2 or 3 bytes (little-endian): the last word of a string whose
// length is not a multiple of four is compared without the bytes after it.
const TAIL_MASKS = [0, 0xff, 0xffff, 0xffffff];

/** The string the datagram's bytes [at, end) stand for, made of its own (never a slice of the text), or undefined. */
export type Accept = (text: Text, at: number, end: number) => string | undefined;

// From the bytes, not a slice of the decoded text: a string of its own for 70-72 ns a 36-byte id,
// where the line parser's copy (shared/usageWire.ts, ownCopy) takes 151-173 ns (bench/stringCopy.ts,
// docs/benchmarks.md §3b).
const bytesAt = (text: Text, at: number, end: number) => text.packet.toString('latin1', at, end);

// The id made first and checked on its own: checked in the datagram's text, a new id cost the
// whole datagram decoded, for each datagram holding one.
export const canonicalUuid: Accept = (text, at, end) => {
  const id = bytesAt(text, at, end);
  return uuidForm(id, 0) === HEX_LOWER ? id : undefined;
};

const ipAddress: Accept = (text, at, end) => wireAddress(bytesAt(text, at, end));

export class InternTable {
  readonly #maxBits: number;
  readonly #maxLength: number;
  readonly #accept: Accept;
  #bits = 0;
  #shift = 0;
  #mask = 0;
  #slotWords = 0;
  #words = new Int32Array(0);
  #lengths = new Uint8Array(0); // 0: an empty slot
  #strings: Array<string | undefined> = [];
  // Slots taken, and which slot of a full window the next string pushes out, in turn.
  #held = 0;
  #victim = 0;

  /**
   * At most 2^slotBits slots. `accept` may give another string than the bytes (the address
   * table's canonical form): that one is kept.
   */
  constructor(slotBits: number, maxLength: number, accept: Accept) {
    this.#maxBits = slotBits;
    this.#maxLength = maxLength;
    this.#accept = accept;
    this.#allocate(Math.min(slotBits, START_SLOT_BITS));
  }

  get slots(): number {
    return this.#mask + 1;
  }

  /** The strings held. */
  get size(): number {
    return this.#held;
  }

  get maxSlots(): number {
    return 2 ** this.#maxBits;
  }

  /**
   * The string of the packet's bytes [at, end) (read through `v`) if `accept` takes it, else
   * undefined. The caller checked that end - at ≤ maxLength, that the packet holds 3 bytes after
   * `end` (the last word is read whole) and 8 before it (the hash reads the last two words, for a
   * short string some of the fixed text before).
   */
  intern(v: DataView, at: number, end: number, text: Text): string | undefined {
    const length = end - at;
    const lengths = this.#lengths;
    // Slots are never emptied, so a string stored past its own slot is found before an empty one.
    let slot = this.#home(v, at, end, length);
    let probe = 0;
    for (; probe < WINDOW && lengths[slot] !== 0; probe++) {
      if (lengths[slot] === length && this.#holds(v, at, length, slot * this.#slotWords)) return this.#strings[slot];
      slot = (slot + 1) & this.#mask;
    }
    const accepted = this.#accept(text, at, end);
    // An empty string would read as an empty slot: never stored.
    if (accepted === undefined || length === 0) return accepted;
    // Grown, not a string pushed out, while it may: at half full, or its window full once a
    // quarter is (not before: strings sharing a window, which a sender can choose, would double
    // the table to its size with a few dozen of them).
    const grow = this.#bits < this.#maxBits && (2 * this.#held >= this.slots || (probe === WINDOW && 4 * this.#held >= this.slots));
    if (grow) this.#grow();
    // The empty slot the lookup stopped at, unless the table changed or the window was full.
    this.#store(v, at, length, accepted, grow || probe === WINDOW ? -1 : slot);
    return accepted;
  }

  // Into `free` if given (an empty slot of the string's window), else the first empty slot of its
  // window, or, the window full, one of it in turn.
  #store(v: DataView, at: number, length: number, value: string, free: number): void {
    const slot = free >= 0 ? free : this.#slotFor(v, at, length);
    this.#held++;
    const base = slot * this.#slotWords;
    const whole = length >> 2;
    for (let i = 0; i < whole; i++) this.#words[base + i] = v.getInt32(at + 4 * i, true);
    if ((length & 3) !== 0) this.#words[base + whole] = v.getInt32(at + 4 * whole, true) & TAIL_MASKS[length & 3];
    this.#lengths[slot] = length;
    this.#strings[slot] = value;
  }

  // The string's slot to store into; a string it pushes out is counted off `#held`.
  #slotFor(v: DataView, at: number, length: number): number {
    const home = this.#home(v, at, at + length, length);
    let slot = home;
    for (let probe = 0; this.#lengths[slot] !== 0; probe++) {
      if (probe === WINDOW) {
        slot = (home + this.#victim) & this.#mask;
        this.#victim = (this.#victim + 1) & (WINDOW - 1);
        this.#held--;
        break;
      }
      slot = (slot + 1) & this.#mask;
    }
    return slot;
  }

  // Twice the slots, the strings held moved over: a table grows with what it is sent, so a few
  // keys and addresses (the API's stream) sit close together in memory, not spread over a table
  // sized for the cap. A string under 8 bytes is dropped: its slot came from bytes before it, not
  // kept; it is validated again when it comes back.
  #grow(): void {
    const words = this.#words;
    const lengths = this.#lengths;
    const strings = this.#strings;
    const oldSlotWords = this.#slotWords;
    this.#allocate(this.#bits + 1);
    // Read back in the byte order #store reads a packet in (an Int32Array is in the machine's).
    const view = new DataView(new ArrayBuffer(4 * words.length));
    for (let i = 0; i < words.length; i++) view.setInt32(4 * i, words[i], true);
    for (let slot = 0; slot < lengths.length; slot++) {
      if (lengths[slot] >= 8) this.#store(view, 4 * slot * oldSlotWords, lengths[slot], strings[slot] as string, -1);
    }
  }

  #allocate(bits: number): void {
    this.#bits = bits;
    this.#shift = 32 - bits;
    this.#mask = (1 << bits) - 1;
    this.#slotWords = Math.ceil(this.#maxLength / 4);
    this.#words = new Int32Array((1 << bits) * this.#slotWords);
    this.#lengths = new Uint8Array(1 << bits);
    this.#strings = new Array<string | undefined>(1 << bits).fill(undefined);
    this.#held = 0;
  }

  // From the last two words, the first (a string of 8 bytes or more: 192.168.1.100 and
  // 193.168.1.100 differ there only) and the length; the slot is the product's top bits, the best
  // mixed. Bytes 4 to length - 9 are not read, so a sender can still choose strings that share a
  // window: they cost lookups of 16 slots and push out the window's strings, as a direct-mapped
  // table's one shared slot did.
  #home(v: DataView, at: number, end: number, length: number): number {
    const first = length >= 8 ? Math.imul(v.getInt32(at, true), 0x27d4eb2f) : 0;
    return Math.imul(Math.imul(v.getInt32(end - 4, true), 0x9e3779b1) ^ v.getInt32(end - 8, true) ^ first ^ length, 0x85ebca6b) >>> this.#shift;
  }

  #holds(v: DataView, at: number, length: number, base: number): boolean {
    const words = this.#words;
    const whole = length >> 2;
    for (let i = 0; i < whole; i++) if (v.getInt32(at + 4 * i, true) !== words[base + i]) return false;
    return (length & 3) === 0 || (v.getInt32(at + 4 * whole, true) & TAIL_MASKS[length & 3]) === words[base + whole];
  }
}
