import fs from 'node:fs';

/**
 * Whether `pid` names a running process. A signal 0 alone also reaches a zombie: a process that
 * died but was not reaped, as a daemonised postmaster is not when its parent, PID 1 of a
 * container, is a program that reaps none (`docker run` without --init). Linux's /proc tells.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !zombie(pid);
}

function zombie(pid: number): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false; // no /proc here (not Linux): the signal's word stands
  }
  // "pid (command) state …": the command may hold spaces and parentheses, so read past the last ')'.
  return stat[stat.lastIndexOf(')') + 2] === 'Z';
}
