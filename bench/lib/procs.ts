import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

// Child processes for benchmarks: every server, collector, sender and load generator runs in its
// own process so that its CPU is its own, read from /proc. Everything spawned here is tracked and
// stopped by pid when the run ends, whatever way it ends.

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

const children = new Set<ChildProcess>();

export interface Child {
  proc: ChildProcess;
  name: string;
  /** The last lines the process wrote, for error messages. */
  output: () => string;
}

export function spawnProcess(
  name: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; ipc?: boolean; command?: string } = {},
): Child {
  const proc = spawn(options.command ?? process.execPath, args, {
    cwd: REPO_ROOT,
    env: options.env ?? process.env,
    stdio: options.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  const tail: string[] = [];
  const keep = (chunk: Buffer) => {
    tail.push(...chunk.toString().split('\n').filter(Boolean));
    if (tail.length > 40) tail.splice(0, tail.length - 40);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return { proc, name, output: () => tail.join('\n') };
}

/** `node --import tsx <entry>`: a process of the Procfile from its source (the Procfile runs the compiled dist/ copy). */
export function spawnTsx(name: string, entry: string, options: { env?: NodeJS.ProcessEnv; ipc?: boolean; nodeArgs?: string[] } = {}): Child {
  return spawnProcess(name, [...(options.nodeArgs ?? []), '--import', 'tsx', entry], options);
}

export function killAllChildren(): void {
  for (const proc of children) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }
}

export function exited(child: Child): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const { proc } = child;
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode });
  return new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
}

/** SIGTERM, then SIGKILL after `timeoutMs`. Resolves with the exit code (null when killed). */
export async function stopChild(child: Child, timeoutMs = 15_000): Promise<number | null> {
  const done = exited(child);
  if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGTERM');
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), timeoutMs);
  const { code } = await done;
  clearTimeout(timer);
  return code;
}

// IPC request/response: every request carries an id, the child answers with the same id.
let nextRequestId = 1;
export async function ipcRequest<T>(child: Child, message: Record<string, unknown>, timeoutMs = 120_000): Promise<T> {
  const id = nextRequestId++;
  const answered = waitForMessage<{ id?: number; error?: string; result?: T }>(child, (reply) => reply?.id === id, timeoutMs, `an answer to ${String(message.cmd)}`);
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

export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, stepMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let value: T | undefined;
    try {
      value = await probe();
    } catch {
      value = undefined;
    }
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export { freeTcpPort, freeUdpPort } from '../../scripts/lib/freePort';

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

/** User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat; 10 ms resolution. */
export function processCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces; everything after its closing parenthesis is fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / ticksPerSecond();
}

/** VmHWM (peak resident set) and VmRSS in bytes. */
export function processMemory(pid: number): { peakRss: number; rss: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { peakRss: kib('VmHWM'), rss: kib('VmRSS') };
}

/** The kernel's UDP counters (system-wide) from /proc/net/snmp. */
export function udpCounters(): Record<string, number> {
  const lines = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((line) => line.startsWith('Udp:'));
  const [names, values] = lines.map((line) => line.split(/\s+/).slice(1));
  return Object.fromEntries(names.map((name, i) => [name, Number(values[i])]));
}
