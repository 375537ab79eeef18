import type { BrowserContext, Page } from 'playwright-core';

/**
 * A new tab of the dashboard at `baseUrl`, signed in with `key`, on the page `hash` names; its page
 * errors go to `pageErrors`. `prepare` runs before the first page loads (a fake clock, routes).
 */
export async function signedInTab(
  context: BrowserContext,
  baseUrl: string,
  key: string,
  hash: string,
  pageErrors: string[],
  prepare: (tab: Page) => Promise<void> = async () => {},
): Promise<Page> {
  const tab = await context.newPage();
  tab.on('pageerror', (error) => pageErrors.push(error.message));
  await prepare(tab);
  await tab.goto(`${baseUrl}/`);
  await tab.fill('#sign-in-key', key);
  await tab.click('#sign-in button[type=submit]');
  await tab.goto(`${baseUrl}/${hash}`);
  return tab;
}
