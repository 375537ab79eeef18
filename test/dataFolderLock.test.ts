import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { waitFor } from '../harness/wait';
import { acquireDataFolderLock, DataFolderBusyError, lockFileFor } from '../scripts/lib/dataFolderLock';
import { postmasterPid } from '../scripts/lib/localPostgres';
import { processAlive } from '../scripts/lib/processAlive';

// One launcher per data folder: the lock file's atomic create, a live holder named, a stale lock
// (its process gone) taken over, a lock being written respected.

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-lock-'));
t.teardown(() => fs.rmSync(scratch, { recursive: true, force: true }));
let folders = 0;
const folder = () => path.join(scratch, `pg${(folders += 1)}`);

// A pid that belonged to a process that has exited.
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

t.test('the first taker holds it; a second, live, is refused with the holder pid; release frees it', async (t) => {
  const dir = folder();
  const lock = acquireDataFolderLock(dir);
  t.equal(fs.readFileSync(lockFileFor(dir), 'utf8'), `${process.pid}\n`, 'the lock file holds the pid');
  t.equal(lock.file, `${dir}.lock`, 'beside the data folder, which initdb needs empty');
  const other = process.ppid;
  t.throws(() => acquireDataFolderLock(dir, other), new DataFolderBusyError(process.pid, lockFileFor(dir)));
  t.equal(fs.readFileSync(lockFileFor(dir), 'utf8'), `${process.pid}\n`, 'the holder is untouched');
  lock.release();
  t.notOk(fs.existsSync(lockFileFor(dir)), 'released');
  const second = acquireDataFolderLock(dir, other);
  lock.release();
  t.ok(fs.existsSync(lockFileFor(dir)), "release removes only the releaser's own lock");
  second.release();
});

t.test('a lock left by a process that is gone is taken over', async (t) => {
  const dir = folder();
  fs.writeFileSync(lockFileFor(dir), `${deadPid()}\n`);
  const lock = acquireDataFolderLock(dir);
  t.equal(fs.readFileSync(lockFileFor(dir), 'utf8'), `${process.pid}\n`);
  lock.release();
  fs.writeFileSync(lockFileFor(dir), 'garbage');
  t.equal(fs.readFileSync(acquireDataFolderLock(dir).file, 'utf8'), `${process.pid}\n`, 'an unreadable pid is stale too');
});

t.test('an empty lock is being written: refused while young, stale when old', async (t) => {
  const dir = folder();
  fs.writeFileSync(lockFileFor(dir), '');
  t.throws(() => acquireDataFolderLock(dir), { name: 'DataFolderBusyError', pid: 0 });
  const past = new Date(Date.now() - 60_000);
  fs.utimesSync(lockFileFor(dir), past, past);
  t.equal(fs.readFileSync(acquireDataFolderLock(dir).file, 'utf8'), `${process.pid}\n`);
});

t.test('on a fresh clone the folder holding the data folder does not exist yet: it is created, searchable (fails without the fix)', async (t) => {
  const parent = path.join(scratch, 'fresh-clone', '.data');
  const lock = acquireDataFolderLock(path.join(parent, 'postgres'));
  t.ok(fs.existsSync(lock.file), 'the lock is taken');
  t.equal(fs.statSync(parent).mode & 0o001, 0o001, 'others may pass through it, as the postgres OS user must');
  lock.release();
});

// A process that has died but is not reaped: `sleep 0`, whose parent became `sleep 5` by exec and
// never waits for it (as a container's PID 1 that reaps nothing leaves a daemonised postmaster).
async function zombiePid(t: Test): Promise<number> {
  const parent = spawn('/bin/sh', ['-c', 'sleep 0 & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => void parent.kill('SIGKILL'));
  const pid = Number(await new Promise<string>((resolve) => parent.stdout.once('data', (chunk) => resolve(String(chunk)))));
  await waitFor('the child to die unreaped', () => (/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')) ? true : undefined));
  return pid;
}

t.test('a holder that died unreaped (a zombie) is not alive: its lock is taken over, its postmaster.pid is stale', async (t) => {
  const pid = await zombiePid(t);
  t.doesNotThrow(() => process.kill(pid, 0), 'a signal 0 still reaches it');
  t.equal(processAlive(pid), false);
  t.equal(processAlive(process.pid), true);
  const dir = folder();
  fs.mkdirSync(dir);
  fs.writeFileSync(lockFileFor(dir), `${pid}\n`);
  const lock = acquireDataFolderLock(dir);
  t.equal(fs.readFileSync(lockFileFor(dir), 'utf8'), `${process.pid}\n`, 'the lock is taken over');
  lock.release();
  fs.writeFileSync(path.join(dir, 'postmaster.pid'), `${pid}\n${dir}\n`);
  t.equal(postmasterPid(dir), undefined, 'a postmaster that died unreaped is not running');
});
