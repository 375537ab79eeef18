import type { Logger } from '../../shared/logger';
import { rateLimitedWarn, type RateLimitedWarn } from '../../shared/rateLimitedLog';
import type { PendingUses } from '../auth/authorize';
import { MAX_LINE_COUNT, encodeUsageLine, packDatagrams, type Outcome, type UsageSample } from '../../shared/usageWire';
import { steadyNow } from '../../shared/steadyClock';
import { within } from '../../shared/within';

export interface DatagramSink {
  /** Fire-and-forget; `done` reports a send error, if any. Must not throw. */
  send(datagram: string, done: (error?: Error | null) => void): void;
  close(): Promise<void>;
}

export interface UsageRecorderStats {
  recordedUses: number;
  sentUses: number;
  failedUses: number;
  datagrams: number;
  failedDatagrams: number;
  earlyDrains: number;
}

// The auth path calls record() once per request: a Map increment, nothing else. Uses are
// coalesced per (key, ip, outcome) and sent as one StatsD counter line each on a short interval,
// so the per-request cost is independent of the UDP syscall (≈100 µs) it would otherwise pay.
// At most one drain interval of uses is lost if the process dies without stop().
// Datagrams whose send has not completed are bounded: a send waits on nothing with an IP
// address, but a host name is looked up, and while the resolver hangs every drain added datagrams
// waiting on it, without limit, and stop() waited for all of them. A drain whose earlier drains
// left maxInFlight or more unsent counts its datagrams as failed at once; otherwise it sends them
// all. Checked per datagram, one drain of long lines (10,000 entries of IPv6 clients, signed: over
// 1,000 datagrams, their send callbacks all on later ticks) failed its own tail, with the
// collector reachable. So at most maxInFlight plus one drain's datagrams wait.
const DEFAULT_MAX_IN_FLIGHT = 1000;
// How long stop() waits, first for authorizations still reading their key (PendingUses): a request
// whose connection the server's close cut, or whose client left, still records its use when its
// read ends, and that use came after the last drain, with the socket closed; then for the sends in
// flight, which a hung resolver would hold until the supervisor's SIGKILL.
const STOP_WAIT_MS = 5000;
const LAST_SENDS_MS = 1000;

export class UsageRecorder implements PendingUses {
  private pending = new Map<string, UsageSample>();
  // Maps an early drain set aside, sent on the next turn (sendingReady) or by the next drain().
  private ready: UsageSample[][] = [];
  private sendingReady: NodeJS.Immediate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private awaitedUses = 0;
  private usesSettled: (() => void) | undefined;
  private stopped = false;
  private usesInFlight = 0;
  private abandoned = false;
  private readonly warn: RateLimitedWarn;
  readonly stats: UsageRecorderStats = { recordedUses: 0, sentUses: 0, failedUses: 0, datagrams: 0, failedDatagrams: 0, earlyDrains: 0 };

  constructor(
    private readonly options: {
      sink: DatagramSink;
      maxEntries: number;
      drainIntervalMs: number;
      logger: Logger;
      maxDatagramBytes?: number;
      maxInFlight?: number;
    },
  ) {
    this.warn = rateLimitedWarn(options.logger, 10_000);
  }

  /** `previousSecret`: the use proved the key's previous secret (a rotation's grace period); coalesced apart. */
  record(keyId: string, orgId: string, ip: string, outcome: Outcome, previousSecret = false): void {
    this.stats.recordedUses += 1;
    if (this.stopped) {
      this.lost(0, 1);
      this.warn(
        'usage_after_stop',
        { code: 'USAGE_AFTER_STOP', uses: 1, failedUses: this.stats.failedUses },
        'a use recorded after the recorder stopped (its key read outlasted the stop) is lost',
      );
      return;
    }
    // A previous secret's uses under an id of their own (the space cannot end an address), so
    // they leave as lines of their own, tagged; the current secret's entries are as they were.
    const id = previousSecret ? `${keyId} ${outcome} ${ip} previous` : `${keyId} ${outcome} ${ip}`;
    const entry = this.pending.get(id);
    if (entry) {
      entry.count += 1;
      if (entry.count === MAX_LINE_COUNT) this.drainEarly();
      return;
    }
    this.pending.set(id, previousSecret ? { keyId, orgId, ip, outcome, count: 1, previousSecret: true } : { keyId, orgId, ip, outcome, count: 1 });
    if (this.pending.size >= this.options.maxEntries) this.drainEarly();
  }

  // The full map is set aside at once, so no entry grows past its bound; it is encoded, signed and
  // sent on the next turn of the event loop, not in the request that filled it (10,000 lines and
  // a thousand sends took 40–50 ms of that request's turn).
  private drainEarly(): void {
    this.stats.earlyDrains += 1;
    this.ready.push([...this.pending.values()]);
    this.pending = new Map();
    this.sendingReady ??= setImmediate(() => {
      this.sendingReady = undefined;
      this.sendReady();
    });
  }

  private sendReady(): void {
    const batches = this.ready;
    this.ready = [];
    for (const samples of batches) this.send(samples);
  }

  /** (key, ip, outcome) entries waiting for the next drain. */
  get pendingEntries(): number {
    return this.ready.reduce((sum, samples) => sum + samples.length, this.pending.size);
  }

  start(): void {
    this.timer ??= setInterval(() => this.drain(), this.options.drainIntervalMs).unref();
  }

  /** Sends every use recorded so far: the maps an early drain set aside, then the current one. */
  drain(): void {
    clearImmediate(this.sendingReady);
    this.sendingReady = undefined;
    this.sendReady();
    if (this.pending.size === 0) return;
    const samples = [...this.pending.values()];
    this.pending = new Map();
    this.send(samples);
  }

  private send(samples: UsageSample[]): void {
    const lines = samples.map(encodeUsageLine);
    const backlogged = this.inFlight >= (this.options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT);
    let offset = 0;
    for (const datagram of packDatagrams(lines, this.options.maxDatagramBytes)) {
      const lineCount = countLines(datagram);
      const uses = samples.slice(offset, offset + lineCount).reduce((sum, sample) => sum + sample.count, 0);
      offset += lineCount;
      this.sendDatagram(datagram, uses, backlogged);
    }
  }

  /** An authorization began reading its key: its use is recorded when the read ends. */
  begin(): void {
    this.awaitedUses += 1;
  }

  end(): void {
    this.awaitedUses -= 1;
    if (this.awaitedUses === 0) this.usesSettled?.();
  }

  /**
   * Both waits share one deadline (the sends of the last drain get at least a second of it): after
   * the server's own 5 s grace, two full waits met the launcher's SIGKILL (15 s). within()'s timer
   * is not unref'd: a stop with nothing else pending runs to its end (drain, close) at the deadline
   * instead of the process exiting in the middle of it.
   */
  async stop(waitMs = STOP_WAIT_MS): Promise<void> {
    const deadline = steadyNow() + waitMs;
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.awaitedUses > 0) await within(new Promise<void>((resolve) => (this.usesSettled = resolve)), deadline - steadyNow());
    this.stopped = true;
    this.drain();
    if (this.inFlight > 0) await within(new Promise<void>((resolve) => (this.idle = resolve)), Math.max(deadline - steadyNow(), LAST_SENDS_MS));
    if (this.inFlight > 0) {
      // Counted as lost now, and said at once (not rate-limited): their sends, if they ever end,
      // come after the stats were last read.
      this.abandoned = true;
      this.lost(this.inFlight, this.usesInFlight);
      this.options.logger.warn({ datagrams: this.inFlight, uses: this.usesInFlight }, 'usage datagrams still waiting to be sent at stop: their uses are lost');
    }
    await this.options.sink.close();
  }

  /** Datagrams handed to the sink whose send has not completed. */
  get datagramsInFlight(): number {
    return this.inFlight;
  }

  private sendDatagram(datagram: string, uses: number, backlogged: boolean): void {
    this.stats.datagrams += 1;
    if (backlogged) {
      this.failed(uses, { message: `${this.inFlight} datagrams still waiting to be sent (is COLLECTOR_HOST resolving?)`, code: 'USAGE_SEND_BACKLOG' });
      return;
    }
    this.inFlight += 1;
    this.usesInFlight += uses;
    const done = (error?: Error | null) => {
      this.inFlight -= 1;
      this.usesInFlight -= uses;
      if (this.abandoned) return;
      if (error) this.failed(uses, { message: error.message, code: (error as NodeJS.ErrnoException).code });
      else this.stats.sentUses += uses;
      if (this.inFlight === 0) this.idle?.();
    };
    try {
      this.options.sink.send(datagram, done);
    } catch (error) {
      done(error as Error);
    }
  }

  private failed(uses: number, err: { message: string; code: string | undefined }): void {
    this.lost(1, uses);
    this.warn('usage_send_failed', { err, uses, failedUses: this.stats.failedUses }, 'could not send usage datagram');
  }

  // The one place uses are counted as lost, with the datagrams that carried them (none for a use
  // recorded after stop), so that failedUses and failedDatagrams agree whatever the cause; each
  // cause logs in its own words.
  private lost(datagrams: number, uses: number): void {
    this.stats.failedDatagrams += datagrams;
    this.stats.failedUses += uses;
  }
}

function countLines(datagram: string): number {
  let lines = 1;
  for (let i = datagram.indexOf('\n'); i !== -1; i = datagram.indexOf('\n', i + 1)) lines += 1;
  return lines;
}
