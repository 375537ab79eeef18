import fs from 'node:fs';
import path from 'node:path';
import { processAlive } from './processAlive';

// One launcher per embedded data folder. The lock is a file holding the launcher's pid, created
// atomically (O_CREAT|O_EXCL: of two launchers exactly one creates it). A lock whose pid is no
// longer alive was left by a crash and is taken over. The file sits beside the data folder
// (`<EMBEDDED_PG_DIR>.lock`, like its .password and .log), not inside it, because initdb needs
// the folder empty on a first run, and the first run is when two launchers race.

/** A just-created lock is empty until its pid is written; only a long-empty one is stale. */
const EMPTY_LOCK_GRACE_MS = 5000;

export class DataFolderBusyError extends Error {
  constructor(
    readonly pid: number,
    readonly lockFile: string,
  ) {
    super(`lock ${lockFile} is held by pid ${pid}`);
    this.name = 'DataFolderBusyError';
  }
}

export interface DataFolderLock {
  readonly file: string;
  /** Removes the lock if it is still ours; synchronous so that it can run in an 'exit' handler. */
  release(): void;
}

export const lockFileFor = (dataDir: string) => `${dataDir}.lock`;

function readLock(file: string): { text: string; ageMs: number } | undefined {
  try {
    return { text: fs.readFileSync(file, 'utf8'), ageMs: Date.now() - fs.statSync(file).mtimeMs };
  } catch {
    return undefined;
  }
}

function tryCreate(file: string, pid: number): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx', 0o644);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
  try {
    fs.writeSync(fd, `${pid}\n`);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

export function acquireDataFolderLock(dataDir: string, pid: number = process.pid): DataFolderLock {
  const file = lockFileFor(dataDir);
  // On a fresh clone `.data/` does not exist yet. Folders made here are searchable by others
  // (o+x), as the launcher makes them, so the postgres OS user can still reach the data folder.
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o711 });
  const lock: DataFolderLock = {
    file,
    release: () => {
      if (readLock(file)?.text.trim() === String(pid)) fs.rmSync(file, { force: true });
    },
  };
  for (let attempt = 0; attempt < 3; attempt += 1) {
    if (tryCreate(file, pid)) return lock;
    const seen = readLock(file);
    if (!seen) continue; // released meanwhile
    const holder = Number(seen.text.trim());
    if (seen.text.trim() === '' && seen.ageMs < EMPTY_LOCK_GRACE_MS) throw new DataFolderBusyError(0, file);
    if (Number.isInteger(holder) && holder > 0 && holder !== pid && processAlive(holder)) throw new DataFolderBusyError(holder, file);
    // Stale (its launcher is gone): remove it unless someone replaced it since we read it.
    if (readLock(file)?.text === seen.text) fs.rmSync(file, { force: true });
  }
  throw new Error(`could not take the lock ${file}: it keeps changing`);
}
