import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { KILL_AFTER_MS } from '../../shared/stopBudget';
import type { ProcfileEntry } from './procfile';
import { prefixLines, say } from './launcherOutput';

// The Procfile's processes under one supervisor: started in order, each once the one before
// answers; stopped in reverse; every line they write prefixed with their name.

const READY_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 100;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export const describeExit = ({ code, signal }: ExitInfo) => (signal ? `was killed by ${signal}` : `exited with code ${code}`);
const cleanExit = ({ code, signal }: ExitInfo) => code === 0 || signal === 'SIGTERM' || signal === 'SIGINT';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// Settles with `promise`, or with `fallback` after `ms`; the timer never outlives the race.
async function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<F>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

class ManagedProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<ExitInfo>;
  private readonly outputClosed: Promise<void>;
  exit: ExitInfo | undefined;

  constructor(
    readonly name: string,
    command: string,
    env: NodeJS.ProcessEnv,
  ) {
    // `exec` makes the command itself the child (no shell in between to swallow signals), and
    // its own process group keeps a terminal's Ctrl-C from reaching it before the launcher
    // decides the order in which things stop. Its stdin is a pipe nobody writes to: the child
    // stops when it closes, which is how it learns that the launcher died (KEYUSAGE_SUPERVISED,
    // shared/process.ts stopWhenSupervisorGone).
    this.child = spawn('/bin/sh', ['-c', `exec ${command}`], {
      env: { ...env, KEYUSAGE_SUPERVISED: 'true' },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    prefixLines(name, this.child.stdout!);
    prefixLines(name, this.child.stderr!);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.child.once('error', (error) => {
        say(`${name} could not be started: ${error.message}`);
        this.exit = { code: 127, signal: null };
        resolve(this.exit);
      });
    });
    this.outputClosed = new Promise((resolve) => this.child.once('close', () => resolve()));
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  signal(signal: NodeJS.Signals) {
    if (!this.alive || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      this.child.kill(signal);
    }
  }

  // SIGTERM, a bounded wait (above every process's own stop budget by a margin:
  // shared/stopBudget.ts), then SIGKILL.
  async stop(): Promise<ExitInfo> {
    if (this.exit) return this.exit;
    say(`stopping ${this.name} (pid ${this.child.pid})`);
    this.signal('SIGTERM');
    const result = await within(this.exited, KILL_AFTER_MS, undefined);
    if (result) return result;
    say(`${this.name} did not stop within ${KILL_AFTER_MS / 1000} s; sending SIGKILL`);
    this.signal('SIGKILL');
    return this.exited;
  }

  // The last lines a process wrote may still be in its pipe when it exits.
  flushOutput(): Promise<void> {
    return within(this.outputClosed, 1000, undefined);
  }
}

/** How to tell that a process is ready, and what to say when it is. */
export interface Readiness {
  what: string;
  check: () => Promise<boolean>;
  readyMessage?: string;
}

/** True when `url` answers with a status `accept` takes; false on no answer within a second. */
export function httpAnswers(url: string, accept: (status: number) => boolean): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(url, { timeout: 1000 }, (response) => {
      response.resume();
      resolve(accept(response.statusCode ?? 0));
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

export interface SupervisorOptions {
  env: NodeJS.ProcessEnv;
  /** By Procfile name; a process without an entry is taken as ready once started. */
  readiness: Readonly<Record<string, Readiness>>;
  stopRequested: () => boolean;
  /** A process ended without being asked to. */
  onUnexpectedExit: (name: string, exit: ExitInfo) => void;
}

export class Supervisor {
  private readonly processes: ManagedProcess[] = [];

  constructor(private readonly options: SupervisorOptions) {}

  // Starts `entries` in the order given, each once the one before is ready; false when a
  // process died or a stop was asked for meanwhile.
  async startAll(entries: readonly ProcfileEntry[]): Promise<boolean> {
    const { stopRequested } = this.options;
    for (const entry of entries) {
      if (stopRequested()) return false;
      const managed = new ManagedProcess(entry.name, entry.command, this.options.env);
      this.processes.push(managed);
      say(`${entry.name} started (pid ${managed.child.pid}): ${entry.command}`);
      void managed.exited.then((exit) => {
        if (!stopRequested()) this.options.onUnexpectedExit(entry.name, exit);
      });
      await this.waitUntilReady(managed);
      if (!managed.alive) return false;
    }
    return !stopRequested();
  }

  // Polls the process's check until it answers true, the deadline passes, or the process dies.
  private async waitUntilReady(managed: ManagedProcess) {
    const readiness = this.options.readiness[managed.name];
    if (!readiness) return;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (!managed.alive || this.options.stopRequested()) return;
      if (await readiness.check()) {
        if (readiness.readyMessage) say(readiness.readyMessage);
        return;
      }
      await sleep(READY_POLL_MS);
    }
    throw new Error(`${managed.name} did not answer ${readiness.what} within ${READY_TIMEOUT_MS / 1000} s`);
  }

  // In the reverse of start order; true when every process that was running stopped cleanly.
  async stopAll(): Promise<boolean> {
    let clean = true;
    for (const managed of [...this.processes].reverse()) {
      const wasAlive = managed.alive;
      const exit = await managed.stop();
      if (wasAlive && !cleanExit(exit)) {
        say(`${managed.name} ${describeExit(exit)} while stopping`);
        clean = false;
      } else if (wasAlive) {
        say(`${managed.name} stopped`);
      }
    }
    await Promise.all(this.processes.map((managed) => managed.flushOutput()));
    return clean;
  }

  /** The last, synchronous sweep when the launcher exits. */
  killAll() {
    for (const managed of this.processes) managed.signal('SIGKILL');
  }
}
