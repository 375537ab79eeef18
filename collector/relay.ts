// Forwards the StatsD lines that are not usage lines to an upstream (COLLECTOR_RELAY_TO), as
// statsd_exporter's relay and Etsy statsd's repeater do, so the collector can take the place of a
// team's StatsD agent without losing their other metrics. Fire and forget, like StatsD itself:
// ingest never waits on the upstream, and what cannot be sent is dropped and counted.
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { MAX_DATAGRAM_BYTES } from '../shared/usageWire';

export interface Datagram {
  text: string;
  lines: number;
}

// Packs lines into datagrams of at most maxBytes, in order. Pure: the relay decides when to
// take a partial one. Lines come from latin1-decoded packets, so a character is a byte.
export class LineBatcher {
  readonly #maxBytes: number;
  #lines: string[] = [];
  #bytes = 0;

  constructor(maxBytes = MAX_DATAGRAM_BYTES) {
    if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new RangeError(`maxBytes must be a positive integer, got ${maxBytes}`);
    this.#maxBytes = maxBytes;
  }

  /** Adds a line; returns the datagram it closed, if the line did not fit beside the others. */
  add(line: string): Datagram | undefined {
    const closed = this.#lines.length > 0 && this.#bytes + 1 + line.length > this.#maxBytes ? this.take() : undefined;
    this.#bytes += this.#lines.length > 0 ? 1 + line.length : line.length;
    this.#lines.push(line);
    return closed;
  }

  /** The lines held so far as one datagram (undefined if none), leaving the batcher empty. */
  take(): Datagram | undefined {
    if (this.#lines.length === 0) return undefined;
    const datagram = { text: this.#lines.join('\n'), lines: this.#lines.length };
    this.#lines = [];
    this.#bytes = 0;
    return datagram;
  }
}

/** The socket edge: tests inject a fake, the collector a connected UDP socket. */
export interface DatagramSink {
  send(datagram: Buffer, done: (error: Error | null) => void): void;
  close(): Promise<void>;
}

export interface RelayStats {
  sentLines: number;
  sentDatagrams: number;
  /** Lines whose datagram failed to send, or found too many datagrams still in flight. */
  droppedLines: number;
}

export interface RelayOptions {
  sink: DatagramSink;
  flushIntervalMs?: number;
  maxInFlight?: number;
  maxBytes?: number;
  onError?: (error: Error, stats: RelayStats) => void;
}

// A partial datagram waits at most this long: StatsD servers aggregate over seconds.
const DEFAULT_FLUSH_INTERVAL_MS = 100;
// Datagrams handed to the socket and not yet sent: bounds memory (≈ 1.4 MB) when the upstream
// or the kernel cannot keep up.
const DEFAULT_MAX_IN_FLIGHT = 1000;

export class Relay {
  readonly stats: RelayStats = { sentLines: 0, sentDatagrams: 0, droppedLines: 0 };
  readonly #sink: DatagramSink;
  readonly #batcher: LineBatcher;
  readonly #flushIntervalMs: number;
  readonly #maxInFlight: number;
  readonly #onError: (error: Error, stats: RelayStats) => void;
  #inFlight = 0;
  #timer: NodeJS.Timeout | undefined;
  #drained: (() => void) | undefined;

  constructor(options: RelayOptions) {
    this.#sink = options.sink;
    this.#batcher = new LineBatcher(options.maxBytes);
    this.#flushIntervalMs = options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS;
    this.#maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    this.#onError = options.onError ?? (() => {});
  }

  relay(line: string): void {
    const full = this.#batcher.add(line);
    if (full) this.#send(full);
  }

  flush(): void {
    const partial = this.#batcher.take();
    if (partial) this.#send(partial);
  }

  start(): void {
    this.#timer = setInterval(() => this.flush(), this.#flushIntervalMs).unref();
  }

  /** Mirror of start: sends what is held, waits for the sends (at most timeoutMs), closes the sink. */
  async stop(timeoutMs = 1000): Promise<void> {
    clearInterval(this.#timer);
    this.flush();
    if (this.#inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs).unref();
        this.#drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    await this.#sink.close();
  }

  #send(datagram: Datagram): void {
    if (this.#inFlight >= this.#maxInFlight) {
      this.stats.droppedLines += datagram.lines;
      return;
    }
    this.#inFlight++;
    const done = (error: Error | null) => {
      this.#inFlight--;
      if (error) {
        this.stats.droppedLines += datagram.lines;
        this.#onError(error, this.stats);
      } else {
        this.stats.sentLines += datagram.lines;
        this.stats.sentDatagrams++;
      }
      if (this.#inFlight === 0) this.#drained?.();
    };
    try {
      this.#sink.send(Buffer.from(datagram.text, 'latin1'), done);
    } catch (error) {
      done(error as Error);
    }
  }
}

/**
 * A UDP socket connected to host:port: the name is resolved once, at start, not per datagram,
 * and a closed port on the upstream shows up as send errors (counted as dropped lines).
 */
export async function udpSink(host: string, port: number): Promise<DatagramSink> {
  const { address, family } = await lookup(host);
  const socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  socket.unref();
  // Errors also reach each send's callback; this listener only keeps them from being thrown.
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.connect(port, address, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  return {
    send: (datagram, done) => socket.send(datagram, (error) => done(error ?? null)),
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
