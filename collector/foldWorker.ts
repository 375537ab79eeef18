// The worker thread's side of collector/foldThread.ts: its own pool and usage store, one fold per
// request, each answered with its result or its error as plain data. Runs only as that thread's
// entry (the guard at the bottom); importing it does nothing.
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { createDb } from '../shared/db';
import { createUsageStore, type UsageLogOptions } from './usageLog';
import { CommitInDoubtError, PartlyWrittenError, type FoldResult, type WriteResult } from './usageStore';

export const FOLD_WORKER = 'keyusage-fold';

export interface FoldWorkerData {
  role: typeof FOLD_WORKER;
  databaseUrl: string;
  connectTimeoutMs: number;
  replyTimeoutMs?: number;
  idleInTransactionTimeoutMs?: number;
  store: UsageLogOptions;
}

export type FoldRequest = { id: number; cmd: 'fold' } | { id: number; cmd: 'stop' };

/** An error as it crosses the thread: what the flusher reads of it (class, message, code, what was written). */
export interface FoldFailure {
  kind: 'partly' | 'doubt' | 'error';
  message: string;
  code: string | undefined;
  written: WriteResult | undefined;
}

/** `ready`: the thread's modules are loaded and it takes requests. */
export type FoldReply = { id: number; result: FoldResult } | { id: number; failure: FoldFailure } | { ready: true };

// A code such as PostgreSQL's SQLSTATE, which the flusher logs.
const codeOf = (error: unknown) => {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
};

/** A fold's error as plain data: a class does not cross a thread; fromFailure makes it again. */
export function toFailure(error: unknown): FoldFailure {
  if (error instanceof CommitInDoubtError) {
    const cause = error.cause as Error | undefined;
    return {
      kind: error instanceof PartlyWrittenError ? 'partly' : 'doubt',
      message: cause?.message ?? String(cause),
      code: codeOf(cause),
      written: error instanceof PartlyWrittenError ? error.written : undefined,
    };
  }
  return { kind: 'error', message: error instanceof Error ? error.message : String(error), code: codeOf(error), written: undefined };
}

export function fromFailure(failure: FoldFailure): Error {
  const error = Object.assign(new Error(failure.message), failure.code === undefined ? {} : { code: failure.code });
  if (failure.kind === 'partly' && failure.written !== undefined) return new PartlyWrittenError(error, failure.written);
  if (failure.kind === 'doubt') return new CommitInDoubtError(error);
  return error;
}

// Folds as the flusher asks for them (one at a time: it starts the next when one has ended); a
// stop closes the pool (after a fold in progress) and the port, which ends the thread.
export async function serveFolds(port: MessagePort, data: FoldWorkerData): Promise<void> {
  const db = createDb(data.databaseUrl, {
    poolMax: data.store.parallelism ?? 1,
    connectTimeoutMs: data.connectTimeoutMs,
    replyTimeoutMs: data.replyTimeoutMs,
    idleInTransactionTimeoutMs: data.idleInTransactionTimeoutMs,
    applicationName: FOLD_WORKER,
  });
  const store = createUsageStore(db, data.store);
  port.on('message', (request: FoldRequest) => {
    if (request.cmd === 'stop') {
      // Nothing else keeps the thread alive: with the pool and the port closed, it exits.
      void db
        .destroy()
        .catch(() => undefined)
        .then(() => port.close());
      return;
    }
    store.fold().then(
      (result) => port.postMessage({ id: request.id, result } satisfies FoldReply),
      (error) => port.postMessage({ id: request.id, failure: toFailure(error) } satisfies FoldReply),
    );
  });
  // Ready with a connection open, as the collector's own pool is after its start's check: the
  // start fold, which a new collector's small flushes wait for (they append until it ends), then
  // needs no connect and authentication first. A database that is down is the fold's to report.
  await db.raw('select 1').catch(() => undefined);
  port.postMessage({ ready: true } satisfies FoldReply);
}

if (!isMainThread && parentPort !== null && (workerData as FoldWorkerData | undefined)?.role === FOLD_WORKER)
  void serveFolds(parentPort, workerData as FoldWorkerData);
