// Whether a collector's next append to the usage log waits for the folds. Appends that outrun the
// folds grow the log without bound: with 100 k keys used every second, appends every second grew
// one collector's log by 28 k rows a second, to 1.8 M rows after a minute (bench/sustainedLoad.ts,
// docs/benchmarks.md §4). Held back, the uses coalesce in memory, as they do while a direct write
// runs, and the next append carries each key once. Pure: the clock is injected, the flusher asks.

/** How long appends wait at most since the last one: the uses held are in memory only. */
export const APPEND_WAIT_MAX_MS = 30_000;

export class AppendGate {
  // Rows the last fold found in the log and left for a later one.
  #backlogRows = 0;
  #folding = false;
  #appendedDuringFold = false;
  #lastAppendAt: number;

  constructor(private readonly now: () => number) {
    this.#lastAppendAt = now();
  }

  foldStarted(): void {
    this.#folding = true;
    this.#appendedDuringFold = false;
  }

  foldEnded(rowsLeft: number): void {
    this.#folding = false;
    this.#backlogRows = rowsLeft;
  }

  // Appends go on while folds fail: what they log is durable, and failed_folds_total tells.
  foldFailed(): void {
    this.#folding = false;
    this.#backlogRows = 0;
  }

  appended(): void {
    this.#lastAppendAt = this.now();
    if (this.#folding) this.#appendedDuringFold = true;
  }

  /**
   * True while the log is behind (the last fold left rows), or while a fold runs once one append
   * went in beside it, so the log holds about two appends beside what a fold takes; never for
   * longer than APPEND_WAIT_MAX_MS since the last append, so a fold that hangs (on a lock, on a
   * connection that stopped answering) or a backlog that lasts does not keep uses from the log.
   */
  holds(): boolean {
    const behind = this.#backlogRows > 0 || (this.#folding && this.#appendedDuringFold);
    return behind && this.now() - this.#lastAppendAt < APPEND_WAIT_MAX_MS;
  }
}
