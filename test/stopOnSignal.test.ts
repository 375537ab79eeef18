import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { processAlive } from '../scripts/lib/processAlive';
import { runEvery, stopOnSignal } from '../scripts/lib/stopOnSignal';

// The scripts that start servers pg_ctl daemonises (scripts/citus/test.ts and bench.ts): a signal
// stops those servers and removes their folder. Without it the script died at the signal,
// skipping its `finally`, and the servers (trust-auth superusers, for the Citus cluster) ran on.

const ROOT = path.resolve(__dirname, '..');
const SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

for (const signal of SIGNALS) {
  t.test(
    `${signal}: the script stops its PostgreSQL, removes its folder, still forwards the signal, and exits ${128 + os.constants.signals[signal]}`,
    async (t) => {
      // Coverage off in the child, as for every spawned process (test/helpers/faults.ts): recorded,
      // it corrupted the merged report.
      const child = spawn(process.execPath, [...process.execArgv, 'test/helpers/signalledScript.ts'], {
        cwd: ROOT,
        env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const started = JSON.parse(line.toString()) as { postmaster: number; scratch: string; tap: number };
      t.teardown(() => {
        // Only when the script left them behind.
        if (child.exitCode === null) child.kill('SIGKILL');
        if (processAlive(started.postmaster)) process.kill(started.postmaster, 'SIGQUIT');
        if (processAlive(started.tap)) process.kill(started.tap, 'SIGKILL');
        fs.rmSync(started.scratch, { recursive: true, force: true });
      });
      t.ok(processAlive(started.postmaster), 'the postmaster runs');

      child.kill(signal);
      const exit = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
      const timeout = new Promise<['still running']>((resolve) => setTimeout(() => resolve(['still running']), 30_000).unref());
      const [code] = await Promise.race([exit, timeout]);
      t.equal(code, 128 + os.constants.signals[signal], `exit code as a shell reports ${signal}; its stderr: ${stderr}`);
      t.notOk(processAlive(started.postmaster), 'the postmaster is gone');
      t.notOk(fs.existsSync(started.scratch), 'its folder is gone');
      t.notOk(processAlive(started.tap), 'the child the script forwards signals to got it too');
    },
  );
}

t.test('once stopped normally, the handlers are gone and a signal is left to its default', async (t) => {
  const before = SIGNALS.map((signal) => process.listenerCount(signal));
  let stops = 0;
  const stop = stopOnSignal(() => (stops += 1));
  t.same(
    SIGNALS.map((signal) => process.listenerCount(signal)),
    before.map((n) => n + 1),
    'one handler a signal while running',
  );
  stop();
  t.equal(stops, 1, 'stop ran');
  t.same(
    SIGNALS.map((signal) => process.listenerCount(signal)),
    before,
    'none after',
  );
});

t.test('runEvery runs every step even after one fails, then throws every failure', async (t) => {
  const ran: string[] = [];
  const step = (name: string, fails: boolean) => () => {
    ran.push(name);
    if (fails) throw new Error(`${name} failed`);
  };
  t.throws(() => runEvery('stopping', [step('coordinator', true), step('worker1', false), step('worker2', true), step('folder', false)]), {
    name: 'AggregateError',
    message: 'stopping: coordinator failed; worker2 failed',
  });
  t.same(ran, ['coordinator', 'worker1', 'worker2', 'folder']);
  t.doesNotThrow(() => runEvery('stopping', [step('alone', false)]));
});
