import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

// Child processes for tests and benchmarks: the project's own processes (from their sources, as
// the Procfile starts their compiled copies), load generators and third-party daemons. Every
// process spawned here is tracked, so a run that ends any way can stop them all by pid.

export const REPO_ROOT = path.resolve(__dirname, '..');

const children = new Set<ChildProcess>();

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Child {
  proc: ChildProcess;
  name: string;
  /** Every line written to stdout and stderr, when spawned with `keepOutput`; else the last 40. */
  readonly lines: string[];
  /** The last lines the process wrote, for error messages. */
  output(): string;
  /** Resolves when the process has exited, however (also when it had before the call). */
  readonly exited: Promise<ExitStatus>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  ipc?: boolean;
  command?: string;
  /** Keep every output line (tests scan them); by default only the last 40 are kept. */
  keepOutput?: boolean;
}

const TAIL_LINES = 40;

export function spawnProcess(name: string, args: string[], options: SpawnOptions = {}): Child {
  const proc = spawn(options.command ?? process.execPath, args, {
    cwd: REPO_ROOT,
    env: options.env ?? process.env,
    stdio: options.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  const exited = new Promise<ExitStatus>((resolve) =>
    proc.once('exit', (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    }),
  );
  const lines: string[] = [];
  const keep = (line: string) => {
    lines.push(line);
    if (!options.keepOutput && lines.length > TAIL_LINES) lines.splice(0, lines.length - TAIL_LINES);
  };
  collectLines(proc.stdout!, keep);
  collectLines(proc.stderr!, keep);
  return { proc, name, lines, output: () => lines.slice(-TAIL_LINES).join('\n'), exited };
}

// Whole lines only: a chunk may end in the middle of one (a JSON log line split in two would not parse).
function collectLines(stream: NodeJS.ReadableStream, keep: (line: string) => void): void {
  let partial = '';
  stream.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) if (line) keep(line);
  });
  stream.on('end', () => partial && keep(partial));
}

export interface TsxOptions extends SpawnOptions {
  /** Node options, such as --max-old-space-size. */
  nodeArgs?: string[];
  /** TypeScript modules loaded before the entry (after tsx, which compiles them). */
  preload?: string[];
}

/** `node --import tsx <entry>`: a process of the Procfile from its source (the Procfile runs the compiled dist/ copy). */
export function spawnTsx(name: string, entry: string, options: TsxOptions = {}): Child {
  const preload = (options.preload ?? []).flatMap((module) => ['--import', module]);
  return spawnProcess(name, [...(options.nodeArgs ?? []), '--import', 'tsx', ...preload, entry], options);
}

export function isRunning(child: Child): boolean {
  return child.proc.exitCode === null && child.proc.signalCode === null;
}

export function killAllChildren(): void {
  for (const proc of children) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }
}

/** SIGTERM, then SIGKILL after `timeoutMs`. Resolves with the exit code (null when killed). */
export async function stopChild(child: Child, timeoutMs = 15_000): Promise<number | null> {
  if (isRunning(child)) child.proc.kill('SIGTERM');
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), timeoutMs);
  const { code } = await child.exited;
  clearTimeout(timer);
  return code;
}
