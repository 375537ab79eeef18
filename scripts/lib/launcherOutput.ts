import readline from 'node:readline';

// The launcher's terminal: its own lines and each process's lines, prefixed with who wrote them.

const LABEL_WIDTH = 9;
const label = (name: string) => `${name.padEnd(LABEL_WIDTH)} | `;

let outputErrorsIgnored = false;

// Output must never stop a shutdown: when the terminal or pipe goes away (EPIPE, EIO after a
// hangup) the launcher keeps stopping things, silently. Once per process, however many launchers.
export function ignoreOutputErrors() {
  if (outputErrorsIgnored) return;
  outputErrorsIgnored = true;
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
}

export function print(text: string) {
  try {
    if (process.stdout.writable) process.stdout.write(text);
  } catch {
    // nowhere left to write
  }
}

/** One line from the launcher itself. */
export const say = (message: string) => print(`${label('launcher')}${message}\n`);

/** Copies each line of `stream` to the terminal, prefixed with `name`. */
export function prefixLines(name: string, stream: NodeJS.ReadableStream) {
  const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
  lines.on('line', (line) => print(`${label(name)}${line}\n`));
}
