import { randomUUID } from 'node:crypto';
import { TABLE } from '../shared/tables';
import type { Logger } from '../shared/logger';
import { steadyNow } from '../shared/steadyClock';
import { COLLECTOR_CLOSE_MS, STOP_BUDGET_MS } from '../shared/stopBudget';
import { within } from '../shared/within';
import { mergeBatches, type Aggregator } from './aggregator';
import { AppendGate, APPEND_WAIT_MAX_MS } from './appendGate';
import { CommitInDoubtError, PartlyWrittenError, type KeyRef, type PendingBatch, type FoldResult, type UsageStore, type WriteResult } from './usageStore';

export interface FlushStats {
  flushes: number;
  /** Of flushes, those that appended to the usage log rather than writing the usage tables. */
  appendedFlushes: number;
  failedFlushes: number;
  duplicateBatchesSkipped: number;
  usesPersisted: number;
  unknownKeys: number;
  unknownUses: number;
  /**
   * Keys (and uses) a fold of the usage log dropped because they no longer exist in the org they
   * name: deleted after their append, which counted the uses in usesPersisted. Apart from
   * unknownKeys, so a use is counted once there and a deletion does not look like forged ids.
   */
  unknownKeysAtFold: number;
  unknownUsesAtFold: number;
  quarantinedKeys: number;
  quarantinedUses: number;
  /** Of quarantinedUses, those a fold set aside: counted in usesPersisted at their append. */
  quarantinedUsesAtFold: number;
  /** Usage log rows folds could not decode, moved to their own table for a requeue. */
  unreadableLogRows: number;
  lastFlushDurationMs: number;
  lastFlushKeys: number;
  lastFlushStatements: number;
  consecutiveFailures: number;
  eventsRecorded: number;
  /** The usage log's folds (collector/usageLog.ts): uses they applied, and their outcomes. */
  usesFolded: number;
  folds: number;
  failedFolds: number;
  lastFoldDurationMs: number;
  lastFoldKeys: number;
  /** Rows the last fold that read the log found there and left for a later fold; a failed fold leaves it as it was. */
  logBacklogRows: number;
  /** Folds failed since the last that succeeded: with the usage log, flushes succeed while folds fail. */
  consecutiveFailedFolds: number;
  /** Intervals that appended nothing because the usage log was behind (see Flusher.tick). */
  appendsHeldBack: number;
}

export interface FlusherOptions {
  aggregator: Aggregator;
  store: UsageStore;
  intervalMs: number;
  /** Batches awaiting a retry stop taking new drains at this many keys; the aggregator's own cap holds the rest. */
  maxRetryKeys: number;
  logger: Logger;
  now?: () => number;
  backoff?: { initialMs: number; maxMs: number };
}

// Below this much time left before stop()'s deadline, a failed final flush is not tried again.
const STOP_RETRY_MIN_MS = 10;

// The share of the aggregator's cap at which a held-back append goes at once (Flusher's constructor).
const NEAR_FULL = 0.9;

/** How often a collector folds the usage log even when none of its own flushes appended to it. */
export const FOLD_SWEEP_MS = 60_000;
/**
 * How long a stop flushes, retrying, and folds before it gives up (its default): the collector's
 * stop budget less the time kept to close its pools (shared/stopBudget.ts).
 */
export const FLUSH_STOP_DEADLINE_MS = STOP_BUDGET_MS - COLLECTOR_CLOSE_MS;

// Drains the aggregator on an interval and writes what it drained in one transaction.
// A failed write keeps its batches and retries them with exponential backoff. A batch whose
// COMMIT may have landed keeps its id (and so its row in usage_flushes) and is never merged
// with newer data; any other failed batch absorbs the next drain, so retries stay one batch.
export class Flusher {
  private pending: Array<PendingBatch & { inDoubt: boolean }> = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<boolean> | undefined;
  private stopping = false;
  // One trim at a time: on Citus a trim of 100 k keys took 22-36 s, longer than a flush, and
  // trims started after every flush piled up on the pool until flushes timed out waiting for a
  // connection. Keys flushed meanwhile wait here (each once) for the next trim.
  private pruning: Promise<void> | undefined;
  private pruneBacklog = new Map<string, KeyRef>();
  private retryAt = 0;
  // Uses the committed parts of partly written flushes did not persist (unknown keys, quarantined
  // ones), counted at the failure. The retry finds those parts' (batch, org) pairs claimed and
  // reports all their uses as duplicates, which count as persisted less these.
  private usesCountedAside = 0;
  private readonly now: () => number;
  private readonly backoff: { initialMs: number; maxMs: number };
  readonly stats: FlushStats = {
    flushes: 0,
    appendedFlushes: 0,
    failedFlushes: 0,
    duplicateBatchesSkipped: 0,
    usesPersisted: 0,
    unknownKeys: 0,
    unknownUses: 0,
    unknownKeysAtFold: 0,
    unknownUsesAtFold: 0,
    quarantinedKeys: 0,
    quarantinedUses: 0,
    quarantinedUsesAtFold: 0,
    unreadableLogRows: 0,
    lastFlushDurationMs: 0,
    lastFlushKeys: 0,
    lastFlushStatements: 0,
    consecutiveFailures: 0,
    eventsRecorded: 0,
    usesFolded: 0,
    folds: 0,
    failedFolds: 0,
    lastFoldDurationMs: 0,
    lastFoldKeys: 0,
    logBacklogRows: 0,
    consecutiveFailedFolds: 0,
    appendsHeldBack: 0,
  };
  // The usage log, when the store keeps one: one fold at a time, started by the interval after a
  // flush appended to it or may have (a commit in doubt, or a retry that found its batch
  // committed), again while a fold finds rows or leaves some (the log is behind), after a failed
  // one (after the flush's backoff: a database that is down gets one attempt, and one log line,
  // per backoff step, not per interval), and at least every FOLD_SWEEP_MS (at start too) for
  // rows another collector left. What a fold does not apply stays in the log.
  private folding: Promise<void> | undefined;
  private lastFoldFound = 0;
  private foldDue = true;
  // With the usage log: whether appends wait for the folds (collector/appendGate.ts).
  private readonly gate: AppendGate | undefined;
  // Whether rows this collector appended may still be in the log: until a fold that began after
  // the last append leaves the log empty, every flush appends, however few its keys. A small flush
  // written directly beside them would reach the usage tables before their fold, and detection
  // would see its uses first: a key's first use reported with a later use, then a new address
  // dated before it. Appends are numbered so a fold knows whether one came after it began. True
  // at start: the log may hold what this collector appended before it restarted (a crash, a
  // deploy), older than anything it receives now; start() begins the fold that can end it.
  private logMayHoldAppends: boolean;
  private appends = 0;
  private lastFoldAt = -Infinity;
  private foldRetryAt = 0;

  constructor(private readonly options: FlusherOptions) {
    this.now = options.now ?? steadyNow;
    this.backoff = options.backoff ?? { initialMs: options.intervalMs, maxMs: 30_000 };
    this.logMayHoldAppends = options.store.logMinKeys !== undefined;
    if (options.store.logMinKeys !== undefined) {
      this.gate = new AppendGate(this.now);
      // Held back (the gate holds, or a small flush waits for the fold in progress: appendHeld), the
      // keys may fill the aggregator between two intervals: the flush goes as soon as they reach
      // NEAR_FULL of its cap (after the datagram being read), before any is refused. Whatever the
      // flush's way: one that would not have been held goes now too, harmlessly.
      options.aggregator.onNearFull(NEAR_FULL, () => {
        if (this.pending.length === 0 && (this.gate?.holds() || this.folding !== undefined)) queueMicrotask(() => void this.flush());
      });
    }
  }

  get pendingKeys(): number {
    return this.pending.reduce((sum, p) => sum + p.batch.keys.length, 0);
  }

  get pendingUses(): number {
    return this.pending.reduce((sum, p) => sum + p.batch.uses, 0);
  }

  /** How long the fold in progress has run; 0 when none runs. */
  get foldRunningMs(): number {
    return this.folding === undefined ? 0 : this.now() - this.lastFoldAt;
  }

  /** Starts the interval, and the first fold at once: its end lets small flushes go direct. */
  start(): void {
    this.timer ??= setInterval(() => void this.tick(), this.options.intervalMs).unref();
    this.startFold();
  }

  /**
   * What each interval does: a flush, unless a failed one waits for its retry or, with the usage
   * log, the append waits for the folds (collector/appendGate.ts), then a fold if one is due.
   */
  async tick(): Promise<void> {
    if (this.appendHeld()) this.stats.appendsHeldBack += 1;
    else if (this.now() >= this.retryAt) await this.flush();
    // A flush that outlived stop()'s deadline ends here after it: the pool may be gone.
    if (!this.stopping) this.startFold();
  }

  // A batch whose write failed is retried at its time, held or not: it was drained already. Fewer
  // keys than the threshold are held only while a fold runs and the log may hold this collector's
  // appends: such a flush would append only for that reason, and an append during the fold keeps
  // the fold from ending the phase, so with folds longer than the interval (4 collectors on 50 ms
  // timers under load) small flushes appended for ever. Held, they go direct once a fold ends it,
  // or append APPEND_WAIT_MAX_MS after the fold began: a fold that hangs (on a lock, on a
  // connection gone silent) held them in memory only, for as long as it hung.
  private appendHeld(): boolean {
    const { aggregator, store } = this.options;
    if (this.gate === undefined || this.pending.length > 0) return false;
    if (aggregator.pendingKeys >= (store.logMinKeys ?? 0)) return this.gate.holds();
    return this.logMayHoldAppends && this.folding !== undefined && this.now() - this.lastFoldAt < APPEND_WAIT_MAX_MS;
  }

  // The store's way for a write of `keys` keys: the log from its threshold on, or while it may
  // hold this collector's appends.
  private toLog(keys: number): boolean {
    const { logMinKeys } = this.options.store;
    return logMinKeys !== undefined && (this.logMayHoldAppends || keys >= logMinKeys);
  }

  /** One flush; concurrent callers share the flush in progress. Resolves true when nothing is left pending. */
  flush(): Promise<boolean> {
    this.running ??= this.flushOnce().finally(() => (this.running = undefined));
    return this.running;
  }

  /**
   * Whether everything drained so far is written: waits for the write in progress, if any, and
   * answers false while a batch waits for its retry. A write in progress is no failure: the
   * collector's listening span (collector/listeningSpan.ts) skipped every beat that fell in one,
   * and 900 ms writes every second made a steady collector look silent (a review).
   */
  async writtenSoFar(): Promise<boolean> {
    await this.running;
    return this.pending.length === 0;
  }

  /**
   * Stops the interval and flushes until everything is written or `deadlineMs` passes, then folds
   * while there is time. A write or fold that waits (on a lock, up to COLLECTOR_LOCK_TIMEOUT_MS)
   * is waited for only until the deadline: it goes on, and what it has not written is kept (in
   * memory, lost at exit, as with any write past the deadline) or left in the log.
   */
  async stop(deadlineMs = FLUSH_STOP_DEADLINE_MS): Promise<boolean> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.stopping = true;
    const giveUpAt = this.now() + deadlineMs;
    const untilDeadline = <T>(work: Promise<T>) => within(work, giveUpAt - this.now());
    if ((await untilDeadline(this.running ?? Promise.resolve(true))) === undefined) return false;
    for (let attempt = 0; ; attempt += 1) {
      const flushed = await untilDeadline(this.flush());
      if (flushed) break;
      // Retries wait at most half the time left, so each starts with time to finish.
      const left = giveUpAt - this.now();
      if (flushed === undefined || left < STOP_RETRY_MIN_MS) return false;
      await new Promise((resolve) => setTimeout(resolve, Math.min(200 * 2 ** attempt, 2000, left / 2)));
    }
    await this.foldUntilEmpty(giveUpAt, untilDeadline);
    // Trimming is best effort: what is not trimmed now is trimmed after the key's next flush that
    // brings it a new address.
    this.pruneBacklog.clear();
    await untilDeadline(this.pruning ?? Promise.resolve());
    return true;
  }

  /** Starts a fold of the usage log if one is due and none is running; resolves when it ends. */
  fold(): Promise<void> {
    this.startFold();
    return this.folding ?? Promise.resolve();
  }

  private startFold(): void {
    const { store } = this.options;
    if (store.fold === undefined || this.folding !== undefined) return;
    const started = this.now();
    if (started < this.foldRetryAt || (!this.foldDue && started - this.lastFoldAt < FOLD_SWEEP_MS)) return;
    this.foldDue = false;
    this.lastFoldAt = started;
    this.gate?.foldStarted();
    const appendsBefore = this.appends;
    this.folding = store
      .fold()
      .then(
        (result) => this.recordFold(result, this.now() - started, appendsBefore),
        (error) => this.recordFoldFailure(error),
      )
      .finally(() => (this.folding = undefined));
  }

  // At stop, the log is folded while folds find rows, until the deadline or a failed fold: what is
  // left is applied by the next collector that starts (nothing is lost, it is only late). A fold
  // that found nothing ends it even with rows left: those are other folds' (their orgs' locks).
  // None begins that the last fold's length says would not end before the deadline: cut there,
  // it rolls back, its work wasted and its orgs locked until PostgreSQL notices.
  private async foldUntilEmpty(giveUpAt: number, untilDeadline: <T>(work: Promise<T>) => Promise<T | undefined>): Promise<void> {
    if ((await untilDeadline((this.folding ?? Promise.resolve()).then(() => true))) === undefined) return;
    while (this.foldDue && this.now() + this.stats.lastFoldDurationMs < giveUpAt && this.now() >= this.foldRetryAt) {
      if ((await untilDeadline(this.fold().then(() => true))) === undefined) return;
      if (this.lastFoldFound === 0) break;
    }
  }

  private recordFold(result: FoldResult, durationMs: number, appendsBefore: number) {
    const s = this.stats;
    // Not while an append's COMMIT is in doubt: it may land after this fold looked.
    const inDoubt = this.pending.some((p) => p.inDoubt);
    if (result.logRowsLeft === 0 && result.orgsSkipped === 0 && appendsBefore === this.appends && !inDoubt) this.logMayHoldAppends = false;
    s.consecutiveFailedFolds = 0;
    this.foldRetryAt = 0;
    this.gate?.foldEnded(result.logRowsLeft);
    s.logBacklogRows = result.logRowsLeft;
    const found = result.keysWritten + result.unknownKeys + result.quarantined.length;
    this.lastFoldFound = found;
    // While rows are left, the next interval folds again: appends wait for the log to catch up.
    this.foldDue ||= found > 0 || result.logRowsLeft > 0;
    if (found === 0) return;
    s.folds += 1;
    s.usesFolded += result.usesWritten;
    s.lastFoldDurationMs = durationMs;
    s.lastFoldKeys = result.keysWritten;
    this.recordWritten(result, 'fold');
  }

  private recordFoldFailure(error: unknown) {
    // The backlog is left as the last fold found it: zeroed here, the gauge said "not behind"
    // exactly while folds were failing and the log grew.
    this.stats.failedFolds += 1;
    this.gate?.foldFailed();
    this.foldDue = true;
    const failures = (this.stats.consecutiveFailedFolds += 1);
    const delay = Math.min(this.backoff.initialMs * 2 ** (failures - 1), this.backoff.maxMs);
    this.foldRetryAt = this.now() + delay;
    if (error instanceof PartlyWrittenError) {
      // The committed part's rows left the log with it: its uses are folded now or never.
      this.stats.usesFolded += error.written.usesWritten;
      this.recordWritten(error.written, 'fold');
    }
    this.options.logger.error(
      { err: { message: (error as Error).message, code: (error as NodeJS.ErrnoException).code }, retryInMs: delay },
      'folding the usage log failed; its rows stay in the log and are folded again',
    );
  }

  // Only keys that gained an address are given (WriteResult.keysToTrim); keys beyond maxRetryKeys
  // wait for their next new address to be trimmed: the backlog is bounded.
  private queuePrune(keys: readonly KeyRef[]): void {
    for (const { orgId, keyId } of keys) {
      if (this.pruneBacklog.size >= this.options.maxRetryKeys) break;
      this.pruneBacklog.set(`${orgId}/${keyId}`, { orgId, keyId });
    }
    if (this.pruning === undefined && this.pruneBacklog.size > 0) this.pruning = this.pruneBacklogged();
  }

  // Called with a backlog, so the loop awaits before `finally` clears `pruning`; the loop ends and
  // `pruning` clears in one step, so no key is queued in between and left waiting.
  private async pruneBacklogged(): Promise<void> {
    try {
      while (this.pruneBacklog.size > 0) {
        const keys = [...this.pruneBacklog.values()];
        this.pruneBacklog = new Map();
        await this.options.store.prune(keys).catch((error) => {
          this.options.logger.warn(
            { err: { message: (error as Error).message } },
            'trimming recent IPs failed; the keys are trimmed after their next new address',
          );
        });
      }
    } finally {
      this.pruning = undefined;
    }
  }

  // A drain is taken only while the retry batches stay within maxRetryKeys after it (or when none
  // wait: then the drain is at most the aggregator's cap), so what is held in memory is at most the
  // aggregator's cap plus the larger of the two caps: twice the cap when they are equal.
  private takeDrain(): void {
    const { aggregator, maxRetryKeys } = this.options;
    if (aggregator.pendingKeys === 0) return;
    if (this.pendingKeys > 0 && this.pendingKeys + aggregator.pendingKeys > maxRetryKeys) return;
    const drained = this.options.aggregator.drain();
    const last = this.pending[this.pending.length - 1];
    if (last && !last.inDoubt) last.batch = mergeBatches([last.batch, drained]);
    else this.pending.push({ id: randomUUID(), batch: drained, inDoubt: false });
  }

  private async flushOnce(): Promise<boolean> {
    this.takeDrain();
    if (this.pending.length === 0) return true;
    const started = this.now();
    // Batches whose last write may have landed go again alone, as they went: the same batches are
    // split into the same parts, so the ledger pair standing for a part's orgs that do not exist
    // is the one that write claimed. Beside newer batches the parts were drawn again, and forged
    // orgs' uses were counted as duplicates, or as unknown twice. The newer go right after.
    const doubted = this.pending.filter((p) => p.inDoubt);
    const batches = doubted.length > 0 ? doubted : [...this.pending];
    const toLog = this.toLog(batches.reduce((keys, p) => keys + p.batch.keys.length, 0));
    try {
      const result = await this.options.store.write(batches, toLog);
      this.pending = this.pending.filter((p) => !batches.includes(p));
      this.recordSuccess(result, this.now() - started);
      // Last: nothing of this write reads its keys after this (recordSuccess copies what it keeps).
      for (const { batch } of batches) this.options.aggregator.recycle(batch.keys);
      if (doubted.length > 0 && this.pending.length > 0) return this.flushOnce();
      return this.pending.length === 0 && this.options.aggregator.pendingKeys === 0;
    } catch (error) {
      this.recordFailure(error, batches, toLog);
      return false;
    }
  }

  private recordSuccess(result: WriteResult, durationMs: number) {
    const s = this.stats;
    s.flushes += 1;
    s.consecutiveFailures = 0;
    this.retryAt = 0;
    s.duplicateBatchesSkipped += result.duplicateBatches;
    // An in-doubt batch found committed was persisted by the earlier attempt (less the uses of any
    // unknown keys it carried, which can no longer be told apart, unless a partly written flush
    // reported them). Every pending batch was in this write: nothing is left aside.
    s.usesPersisted += result.usesWritten + result.duplicateUses - Math.min(this.usesCountedAside, result.duplicateUses);
    this.usesCountedAside = 0;
    s.lastFlushDurationMs = durationMs;
    s.lastFlushKeys = result.keysWritten;
    s.lastFlushStatements = result.statements;
    // A batch found committed by an earlier, in-doubt attempt left its rows in the log too. The
    // failure made a fold due, but that fold may have run before the lost COMMIT was visible and
    // found nothing; without this the rows waited for the next sweep (FOLD_SWEEP_MS).
    this.foldDue ||= result.keysLogged > 0 || result.duplicateBatches > 0;
    if (result.keysLogged > 0) {
      s.appendedFlushes += 1;
      this.gate?.appended();
    }
    if (result.keysLogged > 0 || result.duplicateBatches > 0) this.mayHoldAppends();
    this.recordWritten(result, 'flush');
    if (result.duplicateBatches > 0) {
      this.options.logger.info({ duplicateBatches: result.duplicateBatches }, 'skipped batches already committed by an earlier attempt');
    }
  }

  // What a committed write, or the committed parts of a split one, did beside the uses: the
  // retry of a partly written flush finds those orgs claimed and reports none of it again.
  private recordWritten(result: WriteResult, by: 'flush' | 'fold') {
    const s = this.stats;
    s.eventsRecorded += result.eventsRecorded;
    if (result.unknownKeys > 0) this.recordUnknown(result, by);
    for (const { keyId, orgId, uses, unreadable, deleted } of result.quarantined) {
      s.quarantinedKeys += 1;
      s.quarantinedUses += uses;
      if (by === 'fold') s.quarantinedUsesAtFold += uses;
      if (unreadable) s.unreadableLogRows += 1;
      this.options.logger.error({ keyId, orgId, uses }, quarantineMessage(unreadable, deleted));
    }
    this.queuePrune(result.keysToTrim);
  }

  private recordUnknown({ unknownKeys, unknownUses }: WriteResult, by: 'flush' | 'fold') {
    const s = this.stats;
    if (by === 'fold') {
      s.unknownKeysAtFold += unknownKeys;
      s.unknownUsesAtFold += unknownUses;
      this.options.logger.info({ unknownKeys, unknownUses }, 'dropped logged uses of keys deleted since their append');
      return;
    }
    s.unknownKeys += unknownKeys;
    s.unknownUses += unknownUses;
    this.options.logger.warn({ unknownKeys, unknownUses }, 'dropped uses of keys that do not exist in the org they named');
  }

  private mayHoldAppends(): void {
    this.appends += 1;
    this.logMayHoldAppends = true;
  }

  private recordFailure(error: unknown, batches: Array<PendingBatch & { inDoubt: boolean }>, toLog: boolean) {
    const s = this.stats;
    s.failedFlushes += 1;
    s.consecutiveFailures += 1;
    const inDoubt = error instanceof CommitInDoubtError;
    if (inDoubt) for (const batch of batches) batch.inDoubt = true;
    // An append whose commit landed unseen left rows in the usage log; its retry logs nothing.
    this.foldDue ||= inDoubt;
    if (inDoubt && toLog) this.mayHoldAppends();
    if (error instanceof PartlyWrittenError) {
      this.recordWritten(error.written, 'flush');
      this.usesCountedAside += error.written.unknownUses + error.written.quarantined.reduce((sum, q) => sum + q.uses, 0);
    }
    const delay = Math.min(this.backoff.initialMs * 2 ** (s.consecutiveFailures - 1), this.backoff.maxMs);
    this.retryAt = this.now() + delay;
    this.options.logger.error(
      {
        err: { message: (error as Error).message, code: (error as NodeJS.ErrnoException).code },
        inDoubt,
        retryInMs: delay,
        consecutiveFailures: s.consecutiveFailures,
        pendingKeys: this.pendingKeys + this.options.aggregator.pendingKeys,
        pendingUses: this.pendingUses,
      },
      'flush failed; usage kept in memory and retried',
    );
  }
}

function quarantineMessage(unreadable: true | undefined, deleted: true | undefined): string {
  if (unreadable) {
    return `a usage log row of this key could not be decoded (another collector version's?); moved to ${TABLE.usageSetAside}: npm run cli -- usage-log requeue puts it back`;
  }
  if (deleted) return "PostgreSQL refused this key's usage rows (data error) and the key no longer exists: its uses were dropped";
  return `PostgreSQL refused this key's usage rows (data error); its counts were set aside in ${TABLE.usageSetAside} (without addresses) so every other key is written: npm run cli -- usage-log requeue once the cause is fixed`;
}
