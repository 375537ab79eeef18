import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import type { Test } from 'tap';
import { within } from '../shared/within';

// Debian's chromium, driven by playwright-core (Playwright's own browser downloads do not work
// here). `.ci/run` installs it when missing; CHROMIUM_PATH points elsewhere.
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Playwright's own default is 30 s per action, and some calls (evaluate, count, isVisible) wait
// without any: a page that stops answering must fail its test, not hold the file until tap's
// timeout ends it with no word of where it stood.
const ACTION_TIMEOUT_MS = 20_000;
// Closing a browser whose page hung can itself hang (Playwright's context.close() waits for
// Chromium to agree); past this, its processes are killed.
const CLOSE_DEADLINE_MS = 10_000;

// A fresh profile each time, removed by close(): for bench/dashboard.ts and, through launchBrowser, the tests.
export async function openChromium(
  viewport = { width: 1280, height: 800 },
  closeDeadlineMs = CLOSE_DEADLINE_MS,
): Promise<{ context: BrowserContext; profile: string; close: () => Promise<void> }> {
  if (!fs.existsSync(CHROMIUM_PATH))
    throw new Error(`No Chromium at ${CHROMIUM_PATH}: apt-get install -y --no-install-recommends chromium (or set CHROMIUM_PATH)`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM_PATH, headless: true, args: ARGS, viewport });
  context.setDefaultTimeout(ACTION_TIMEOUT_MS);
  const close = async () => {
    const closed = await within(
      context.close().then(() => true),
      closeDeadlineMs,
    );
    if (!closed) for (const pid of processesUsing(profile)) signal(pid, 'SIGKILL');
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, profile, close };
}

/** The pids of the processes whose command line names `profile` (the browser started with it as --user-data-dir). */
export function processesUsing(profile: string): number[] {
  return fs
    .readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .filter((pid) => {
      try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(profile);
      } catch {
        return false; // exited meanwhile
      }
    })
    .map(Number);
}

/** Sends `name` to `pid`, which may have exited meanwhile. */
export function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // exited meanwhile
  }
}

export async function launchBrowser(t: Test): Promise<BrowserContext> {
  const { context, close } = await openChromium();
  t.teardown(close);
  return context;
}
