import fs from 'node:fs';

export interface ProcfileEntry {
  name: string;
  command: string;
}

// The Procfile format every runner agrees on: `name: command`, one per line; blank lines and
// `#` comments are ignored.
export function parseProcfile(text: string): ProcfileEntry[] {
  const entries: ProcfileEntry[] = [];
  text.split(/\r?\n/).forEach((line, index) => {
    if (/^\s*(#|$)/.test(line)) return;
    const match = /^([A-Za-z0-9_-]+):\s*(.*?)\s*$/.exec(line);
    if (!match || match[2] === '') throw new Error(`Procfile line ${index + 1} is not "name: command": ${line}`);
    if (entries.some((entry) => entry.name === match[1])) throw new Error(`Procfile names "${match[1]}" twice`);
    entries.push({ name: match[1], command: match[2] });
  });
  return entries;
}

/** The Procfile's two processes, in start order: the API sends the collector datagrams from its first request. */
export const COLLECTOR = 'collector';
export const WEB = 'web';

// collector first, web last, any other line in between.
export function startOrder(entries: ProcfileEntry[]): ProcfileEntry[] {
  for (const required of [COLLECTOR, WEB]) {
    if (!entries.some((entry) => entry.name === required)) throw new Error(`The Procfile has no "${required}:" line`);
  }
  const rank = (name: string) => (name === COLLECTOR ? 0 : name === WEB ? 2 : 1);
  return [...entries].sort((a, b) => rank(a.name) - rank(b.name));
}

/**
 * The Procfile at `file`, parsed and checked for the lines the launcher needs. A file it cannot
 * read ('Procfile ' with a stray space, a folder) failed with a bare ENOENT or EISDIR naming no
 * variable: the error names the file and PROCFILE, which names it (the path is no secret).
 */
export function readProcfile(file: string): ProcfileEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    // "ENOENT: no such file or directory, open 'Procfile '": the path is already quoted once.
    const reason = error instanceof Error ? error.message.replace(/, \w+ '.*'$/s, '') : String(error);
    throw new Error(`cannot read the Procfile ${JSON.stringify(file)} (PROCFILE): ${reason}`, { cause: error });
  }
  const entries = parseProcfile(text);
  startOrder(entries);
  return entries;
}
