import fs from 'node:fs';

export interface ProcessMemory {
  /** VmRSS: the resident set now, in bytes. */
  rss: number;
  /** VmHWM: the peak resident set since the process started, in bytes. */
  peakRss: number;
}

/**
 * A process's memory from /proc/<pid>/status (Linux only, as the benchmarks and fault tests are
 * documented). Throws when the process is gone; a process that is exiting has no Vm* lines any
 * more, and its figures are NaN.
 */
export function processMemory(pid: number): ProcessMemory {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const bytes = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: bytes('VmRSS'), peakRss: bytes('VmHWM') };
}

const MiB = 1024 * 1024;

/** Bytes as MiB with one decimal, for figures. */
export const mib = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;
