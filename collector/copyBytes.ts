// COPY's text format (tab-separated fields, \N for null, backslash escapes) written as bytes, for
// every COPY of a flush, an append and a fold (collector/flushStaging.ts). With 100,000 distinct
// keys a second, building each key's line as strings (an array per line, JSON.stringify, a join
// per line and per 4,096 lines) took 0.3-0.45 s of the receive loop's CPU per append and most of
// the garbage the collector made (bench/appendEncode.ts, docs/benchmarks.md §4). Here each field's
// characters go straight into the chunk the COPY stream sends: no string per line, no garbage per
// key. Ids and validated addresses take an ASCII fast path; any other string is escaped as a
// string first. The usage log's deltas are JSON, written here as JSON.stringify writes them, so
// folds of any version read the rows.

/** Field and line separators. */
export const TAB = 0x09;
export const NEWLINE = 0x0a;
const CHUNK_BYTES = 64 * 1024;
const NULL = '\\N';
const ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };
const escaped = (value: string) => value.replace(/[\\\t\n\r]/g, (c) => ESCAPES[c]);
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const ZERO = 0x30;
const MINUS = 0x2d;
const LOW_DIGITS = 8;
const LOW_PART = 10 ** LOW_DIGITS;

export class CopyBytes {
  #buffer: Buffer;
  #at = 0;

  constructor(readonly chunkBytes: number = CHUNK_BYTES) {
    this.#buffer = Buffer.allocUnsafe(chunkBytes + 1024);
  }

  /** Bytes written since the last take(). */
  get length(): number {
    return this.#at;
  }

  /** One ASCII character: a separator (tab, newline, comma, bracket). */
  byte(code: number): void {
    this.#room(1);
    this.#buffer[this.#at++] = code;
  }

  /** A text field; null is \N. */
  text(value: string | null): void {
    if (value === null) this.#ascii(NULL);
    else if (!this.#plain(value, false)) this.#utf8(escaped(value));
  }

  /** A number field, as String() writes it; -Infinity, the aggregator's "no such use in this batch", is \N, which never wins greatest(). */
  number(value: number): void {
    if (Number.isSafeInteger(value)) this.#integer(value);
    else this.#ascii(value === -Infinity ? NULL : String(value));
  }

  /** One line of `fields`: a string (or null) as text, a number as number. */
  line(fields: ReadonlyArray<string | number | null>): void {
    fields.forEach((field, i) => {
      if (i > 0) this.byte(TAB);
      if (typeof field === 'number') this.number(field);
      else this.text(field);
    });
    this.byte(NEWLINE);
  }

  /** A JSON string (quotes included), as JSON.stringify writes it, inside a text field. */
  jsonString(value: string): void {
    this.byte(QUOTE);
    if (!this.#plain(value, true)) this.#utf8(escaped(JSON.stringify(value).slice(1, -1)));
    this.byte(QUOTE);
  }

  /** A JSON number, as JSON.stringify writes it (null for a non-finite one), inside a text field. */
  jsonNumber(value: number): void {
    if (Number.isFinite(value)) this.number(value);
    else this.#ascii('null');
  }

  /** The bytes written so far; the writer starts a new buffer, since the stream may still hold this one. */
  take(): Buffer {
    const written = this.#buffer.subarray(0, this.#at);
    this.#buffer = Buffer.allocUnsafe(this.chunkBytes + 1024);
    this.#at = 0;
    return written;
  }

  #room(bytes: number): void {
    if (this.#at + bytes <= this.#buffer.length) return;
    const larger = Buffer.allocUnsafe(Math.max(2 * this.#buffer.length, this.#at + bytes));
    this.#buffer.copy(larger, 0, 0, this.#at);
    this.#buffer = larger;
  }

  // Printable ASCII without a backslash (nor a quote, in a JSON string) needs no escape in either
  // format: written as is, true. Otherwise nothing is written, false.
  #plain(value: string, json: boolean): boolean {
    this.#room(value.length);
    const buffer = this.#buffer;
    let at = this.#at;
    for (let i = 0; i < value.length; i++) {
      const code = value.charCodeAt(i);
      if (code < 0x20 || code > 0x7e || code === BACKSLASH || (json && code === QUOTE)) return false;
      buffer[at++] = code;
    }
    this.#at = at;
    return true;
  }

  // Characters known to be ASCII and to need no escape: \N, and numbers as String() writes them.
  #ascii(value: string): void {
    this.#room(value.length);
    for (let i = 0; i < value.length; i++) this.#buffer[this.#at++] = value.charCodeAt(i);
  }

  #utf8(value: string): void {
    this.#room(Buffer.byteLength(value));
    this.#at += this.#buffer.write(value, this.#at);
  }

  // A safe integer's decimal digits, as String() writes them. Epoch milliseconds exceed 32 bits,
  // and `%` on such a double is a call to fmod (most of this writer's time, profiled): the number
  // is split in two parts below 10^8, whose digits int32 arithmetic finds.
  #integer(value: number): void {
    this.#room(17);
    if (value < 0) this.#buffer[this.#at++] = MINUS;
    const magnitude = Math.abs(value);
    if (magnitude < LOW_PART) return this.#digits(magnitude, 0);
    const high = Math.floor(magnitude / LOW_PART);
    this.#digits(high, 0);
    this.#digits(magnitude - high * LOW_PART, LOW_DIGITS);
  }

  // `value` (0 <= value < 2^31) in decimal, left-padded with zeros to `width` digits.
  #digits(value: number, width: number): void {
    let rest = value | 0;
    let digits = 1;
    for (let power = 10; power <= rest; power *= 10) digits++;
    const end = this.#at + Math.max(digits, width);
    for (let at = end - 1; at >= this.#at; at--) {
      const next = (rest / 10) | 0;
      this.#buffer[at] = ZERO + rest - next * 10;
      rest = next;
    }
    this.#at = end;
  }
}

/** `write`'s bytes for each item, in chunks of at least `chunkBytes` (the last may be shorter), built as the consumer asks. */
export function* chunksWritten<T>(items: Iterable<T>, write: (out: CopyBytes, item: T) => void, chunkBytes = CHUNK_BYTES): Generator<Buffer> {
  const out = new CopyBytes(chunkBytes);
  for (const item of items) {
    write(out, item);
    if (out.length >= chunkBytes) yield out.take();
  }
  if (out.length > 0) yield out.take();
}
