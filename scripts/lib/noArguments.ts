import { parseArgs } from 'node:util';

// The arguments of a command that takes none but -h/--help (npm run migrate, citus:distribute).
// Without this, `--help` or a mistyped `--dry-run` ran the command against DATABASE_URL.

export type Invocation<Run extends string> = { kind: Run } | { kind: 'help' } | { kind: 'refused'; message: string };

export function readNoArguments<Run extends string>(argv: readonly string[], run: Run): Invocation<Run> {
  try {
    const { values } = parseArgs({ args: [...argv], options: { help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    return values.help ? { kind: 'help' } : { kind: run };
  } catch (error) {
    // parseArgs names the argument it refused (an unknown option, an unexpected positional).
    return { kind: 'refused', message: (error as Error).message };
  }
}

/**
 * The exit code when the arguments settle it, printed: 0 with the usage on `out` for --help, 2
 * with the refused argument and the usage on `err`; undefined when the command is to run.
 */
export function answerWithoutRunning<Run extends string>(
  invocation: Invocation<Run>,
  usage: string,
  io: { out: (line: string) => void; err: (line: string) => void },
): number | undefined {
  if (invocation.kind === 'help') {
    io.out(usage);
    return 0;
  }
  if ('message' in invocation) {
    io.err(`error: ${invocation.message}\n\n${usage}`);
    return 2;
  }
  return undefined;
}
