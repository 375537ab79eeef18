import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { processMemory, type ProcessMemory } from '../../harness/processMemory';
import { killAllChildren, type Child } from '../../harness/processes';
import type { Db } from '../../shared/db';
import { FOLD_WORKER } from '../../collector/foldWorker';

// What only the benchmarks need of their child processes (harness/processes.ts spawns and stops
// them): IPC requests to the servers, senders and load generators, and CPU and kernel UDP
// counters and memory from /proc.

/** A benchmark entry point: exit 0 when `done` resolves; else say why, stop every child and exit 1. */
export function exitWhenDone(done: Promise<void>): void {
  done.then(
    () => process.exit(0),
    (error) => {
      console.error(error);
      killAllChildren();
      process.exit(1);
    },
  );
}

// IPC request/response: every request carries an id, the child answers with the same id.
let nextRequestId = 1;
export async function ipcRequest<T>(child: Child, message: Record<string, unknown>, timeoutMs = 120_000): Promise<T> {
  const id = nextRequestId++;
  const answered = waitForMessage<{ id?: number; error?: string; result?: T }>(
    child,
    (reply) => reply?.id === id,
    timeoutMs,
    `an answer to ${String(message.cmd)}`,
  );
  child.proc.send({ ...message, id });
  const reply = await answered;
  if (reply.error) throw new Error(`${child.name}: ${reply.error}`);
  return reply.result as T;
}

/** The child side of ipcRequest: `handle` answers each command. */
export function serveIpc(handle: (message: { cmd: string; [field: string]: unknown }) => unknown): void {
  process.on('message', (message: { id: number; cmd: string }) => {
    Promise.resolve()
      .then(() => handle(message))
      .then(
        (result) => process.send?.({ id: message.id, result }),
        (error: Error) => process.send?.({ id: message.id, error: error.stack ?? String(error) }),
      );
  });
  // The parent going away (even by SIGKILL) closes the channel: never outlive it.
  process.on('disconnect', () => process.exit(0));
}

/** A child's IPC message as the predicate sees it; `T` is what the caller knows the matching one to be. */
type IpcMessage = { ready?: boolean; id?: number } | undefined;

export function waitForMessage<T>(child: Child, predicate: (message: IpcMessage) => boolean, timeoutMs = 30_000, what = 'its ready message'): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${child.name}: no ${what} within ${timeoutMs} ms\n${child.output()}`));
    }, timeoutMs);
    const onMessage = (message: IpcMessage) => {
      if (!predicate(message)) return;
      cleanup();
      resolve(message as T);
    };
    const onExit = (code: number | null) => {
      cleanup();
      reject(new Error(`${child.name} exited (${code}) before ${what}\n${child.output()}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.proc.off('message', onMessage);
      child.proc.off('exit', onExit);
    };
    child.proc.on('message', onMessage);
    child.proc.once('exit', onExit);
  });
}

// ---------------------------------------------------------------------------------------------
// /proc readers (Linux only; the benchmarks are documented as such)

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

export interface CpuSplit {
  user: number;
  system: number;
}

/** User and system CPU seconds of a process (all its threads), from /proc/<pid>/stat; 10 ms resolution. */
export function processCpu(pid: number): CpuSplit {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces; everything after its closing parenthesis is fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / ticksPerSecond(), system: Number(fields[12]) / ticksPerSecond() };
}

/** User + system CPU seconds of a process (all its threads). */
export function processCpuSeconds(pid: number): number {
  const { user, system } = processCpu(pid);
  return user + system;
}

/** The kernel's UDP counters (system-wide) from /proc/net/snmp. */
export function udpCounters(): Record<string, number> {
  const lines = fs
    .readFileSync('/proc/net/snmp', 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('Udp:'));
  const [names, values] = lines.map((line) => line.split(/\s+/).slice(1));
  return Object.fromEntries(names.map((name, i) => [name, Number(values[i])]));
}

const childPids = (pid: number): number[] => {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
  } catch {
    return []; // a kernel without the children file
  }
};

/** `read` of `pid` plus that of each of its descendants alive now (a cluster's workers with their primary). */
function overProcessTree(pid: number, read: (pid: number) => number): number {
  const descendants = childPids(pid).map((child) => {
    try {
      return overProcessTree(child, read);
    } catch {
      return 0; // exited since it was listed
    }
  });
  return read(pid) + descendants.reduce((a, b) => a + b, 0);
}

/** processCpu of `pid` and of its descendants alive now. */
export const processTreeCpu = (pid: number): CpuSplit => ({
  user: overProcessTree(pid, (p) => processCpu(p).user),
  system: overProcessTree(pid, (p) => processCpu(p).system),
});

/** processCpuSeconds of `pid` and of its descendants alive now. */
export const processTreeCpuSeconds = (pid: number): number => overProcessTree(pid, processCpuSeconds);

/**
 * processMemory of `pid` and of its descendants alive now, summed: a cluster's workers hold the
 * receivers' memory, not the primary. The peak is the sum of each process's own peak, an upper
 * bound of their peak together.
 */
export const processTreeMemory = (pid: number): ProcessMemory => ({
  rss: overProcessTree(pid, (p) => processMemory(p).rss),
  peakRss: overProcessTree(pid, (p) => processMemory(p).peakRss),
});

/** The processes whose main thread receives: a cluster primary's workers, else the process itself. */
export function receivingPids(pid: number): number[] {
  const children = childPids(pid);
  return children.length > 0 ? children : [pid];
}

/**
 * Milliseconds the main threads of `pids` spent on a CPU and runnable but waiting for one (the
 * scheduler's run queue), summed, from /proc/<pid>/schedstat: a receive loop that waits for a CPU
 * is not reading its socket.
 */
export function mainThreadSchedMs(pids: number[]): { runMs: number; waitMs: number } {
  let runMs = 0;
  let waitMs = 0;
  for (const pid of pids) {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ').map(Number);
    runMs += run / 1e6;
    waitMs += wait / 1e6;
  }
  return { runMs, waitMs };
}

/** CPU seconds of the PostgreSQL backends serving the collector now, by pid (the database runs on this machine). */
export async function collectorBackendsCpu(db: Db): Promise<Map<number, number>> {
  // The collector's pool and its fold thread's (COLLECTOR_FOLD_THREAD).
  const rows = (await db.raw(`select pid from pg_stat_activity where application_name in ('keyusage-collector', ?)`, [FOLD_WORKER])).rows as Array<{
    pid: number;
  }>;
  return new Map(rows.flatMap(({ pid }) => (fs.existsSync(`/proc/${pid}/stat`) ? [[pid, processCpuSeconds(pid)]] : [])));
}

/** CPU seconds the backends of `before` and `after` used in between (one that opened meanwhile counts from 0). */
export const backendsCpuDelta = (before: Map<number, number>, after: Map<number, number>) =>
  [...after].reduce((sum, [pid, cpu]) => sum + cpu - (before.get(pid) ?? 0), 0);
