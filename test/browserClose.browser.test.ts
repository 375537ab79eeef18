import fs from 'node:fs';
import t from 'tap';
import { openChromium, processesUsing, signal } from '../harness/browser';
import { waitFor } from '../harness/wait';

// The browser tests' teardown must end even when Chromium stops answering: Playwright's close
// then waits without end, and tap's file timeout would kill the whole file unreported.

t.test('closing a Chromium that stopped answering kills its processes by the deadline and removes the profile', async (t) => {
  const { context, profile, close } = await openChromium(undefined, 500);
  await (await context.newPage()).setContent('<p>frozen</p>');
  const pids = processesUsing(profile);
  t.ok(pids.length >= 1, 'the browser runs under its own profile');
  for (const pid of pids) t.match(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'), `--user-data-dir=${profile}`, `pid ${pid} runs on the profile`);
  for (const pid of pids) signal(pid, 'SIGSTOP');
  await close();
  await waitFor('the stopped browser processes to be gone', () => (processesUsing(profile).length === 0 ? true : undefined), 5_000);
  t.notOk(fs.existsSync(profile), 'the profile is removed');
});

t.test('closing a Chromium that answers is a plain close', async (t) => {
  const { context, profile, close } = await openChromium(undefined, 10_000);
  t.equal(await (await context.newPage()).evaluate('1 + 1'), 2);
  await close();
  t.strictSame(processesUsing(profile), [], 'no process of it is left');
  t.notOk(fs.existsSync(profile));
});
