import type { BrowserContext } from 'playwright-core';
import { sleep } from '../../harness/wait';
import type { wiredSystem } from './wiredSystem';

// What the dashboard's browser tests with a clock of their own share: the page's refresh period,
// the system's keys and usage as the API answers them, and a tab whose timers the test moves.

type System = Awaited<ReturnType<typeof wiredSystem>>;

/** The page's refresh period (main.js). */
export const REFRESH_MS = 5000;
export const WHOLE_TEST_TIMEOUT_MS = 150_000;

/** The page handles an answer after the browser has it: a moment for that, then the check. */
export const handled = () => sleep(300);

export async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  return { id: response.body.id as string, key: response.body.key as string };
}

export async function usageOf({ api, org, adminKey }: System, id: string) {
  return (await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?keyId=${id}`, { key: adminKey })).body.data[0];
}

/**
 * A tab signed in with the admin key on the page `hash` names, its timers on a paused clock only
 * the test moves (page.clock), reading `offsetMs` off the server's.
 */
export async function clockedTab(context: BrowserContext, system: System, hash: string, offsetMs = 0) {
  const tab = await context.newPage();
  await tab.clock.install({ time: Date.now() + offsetMs });
  // Paused before the page loads: only the test's runFor moves the page's time. Running, it added
  // the test's own slowness, and a slow machine met a refresh the test did not make (an audit:
  // dashboard.refresh's dormant-days check saw three requests at 6.3 s of delay).
  await tab.clock.pauseAt(Date.now() + offsetMs + 1000);
  await tab.goto(`${system.api.baseUrl}/`);
  await tab.fill('#sign-in-key', system.adminKey);
  await tab.click('#sign-in button[type=submit]');
  await tab.locator('#sign-out').waitFor();
  await tab.goto(`${system.api.baseUrl}/${hash}`);
  return tab;
}
