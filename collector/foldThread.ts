// COLLECTOR_FOLD_THREAD (on by default): the usage log's folds run in a worker thread with a pool
// of their own (collector/foldWorker.ts), not on the thread that reads the socket. A fold's
// JavaScript (decoding the log's rows, building its COPYs, reading detection's facts) is seconds
// of CPU per 100 k keys; on the receive loop it held the loop while datagrams piled up in the
// kernel, and with 100,000 distinct keys the collector lost 34 % of 100,000 lines/s
// (docs/benchmarks.md §3, many keys). A fold goes from the database to the database: nothing it
// reads lives in the receiving thread, and only its result (counts and key ids) comes back.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { within } from '../shared/within';
import { FOLD_WORKER, fromFailure, type FoldReply, type FoldRequest, type FoldWorkerData } from './foldWorker';
import type { FoldResult } from './usageStore';

export interface FoldThread {
  /** One fold, in the thread (started again first if it had ended, e.g. crashed). */
  fold(): Promise<FoldResult>;
  /**
   * Ends the thread: its pool is closed once a fold in progress has ended, within `waitMs`, else
   * the thread is terminated (see docs/operations.md on such a fold). True if it closed in time.
   */
  stop(waitMs: number): Promise<boolean>;
}

// Compiled (dist/), the entry is foldWorker.js. Run from source under tsx (tests, benchmarks), a
// worker thread does not inherit tsx's hooks: it registers them, then loads the TypeScript entry.
function spawn(workerData: FoldWorkerData): Worker {
  const entry = path.join(__dirname, `foldWorker${path.extname(__filename)}`);
  if (!entry.endsWith('.ts')) return new Worker(entry, { workerData });
  const source = `require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(entry)});`;
  return new Worker(source, { eval: true, workerData });
}

/**
 * Resolves once the thread has loaded (run from source, its modules compile first: a second or
 * more) and rejects if it fails to. A fold asked of a thread still loading would keep the
 * collector's small flushes appending until it ended (collector/flusher.ts, logMayHoldAppends).
 */
export async function startFoldThread(data: Omit<FoldWorkerData, 'role'>): Promise<FoldThread> {
  let worker: Worker | undefined;
  let stopped = false;
  let lastId = 0;
  type Answer = Exclude<FoldReply, { ready: true }>;
  const waiting = new Map<number, { resolve: (reply: Answer) => void; reject: (error: Error) => void }>();
  const failAll = (error: Error) => {
    for (const answer of waiting.values()) answer.reject(error);
    waiting.clear();
  };
  const started = () => {
    if (worker !== undefined) return worker;
    const thread = spawn({ ...data, role: FOLD_WORKER });
    // Like a timer, an idle thread does not keep the process alive; a fold asked of it does.
    thread.unref();
    thread.on('message', (reply: FoldReply) => {
      if ('ready' in reply) return;
      waiting.get(reply.id)?.resolve(reply);
      waiting.delete(reply.id);
      if (waiting.size === 0) thread.unref();
    });
    thread.on('error', (error) => failAll(error));
    // A thread that ended (a crash, or a stop) fails what it still owed; the next fold starts another.
    thread.on('exit', (code) => {
      if (worker === thread) worker = undefined;
      failAll(new Error(`the fold thread exited (code ${code}) before it answered`));
    });
    worker = thread;
    return thread;
  };
  const ask = (cmd: FoldRequest['cmd']): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const id = ++lastId;
      waiting.set(id, { resolve, reject });
      const thread = started();
      thread.ref();
      thread.postMessage({ id, cmd } satisfies FoldRequest);
    });
  const first = started();
  // Held while it loads: the collector's start waits for it, with nothing else to keep the process up.
  first.ref();
  await new Promise<void>((resolve, reject) => {
    const ready = (reply: FoldReply) => {
      if (!('ready' in reply)) return;
      first.off('message', ready);
      resolve();
    };
    first.on('message', ready);
    first.once('error', reject);
    first.once('exit', (code) => reject(new Error(`the fold thread exited (code ${code}) as it started`)));
  });
  first.unref();
  return {
    fold: async () => {
      if (stopped) throw new Error('the fold thread is stopped');
      const reply = await ask('fold');
      if ('failure' in reply) throw fromFailure(reply.failure);
      return reply.result;
    },
    stop: async (waitMs) => {
      stopped = true;
      const thread = worker;
      if (thread === undefined) return true;
      const exited = new Promise<true>((resolve) => thread.once('exit', () => resolve(true)));
      ask('stop').catch(() => undefined);
      if ((await within(exited, waitMs)) !== undefined) return true;
      await thread.terminate();
      return false;
    },
  };
}
