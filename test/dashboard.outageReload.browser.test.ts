import t from 'tap';
import type { Page, Route } from 'playwright-core';
import { UNAUTHORIZED_MESSAGE } from '../api/errors';
import { launchBrowser } from '../harness/browser';
import { waitFor } from '../harness/wait';
import { signedInTab } from './helpers/dashboardTab';
import { wiredSystem } from './helpers/wiredSystem';

// A reload of the dashboard while the API cannot answer for its key (the database down, the API
// restarting behind a proxy, the connection lost), in a real Chromium against the real API: the
// tab keeps the key, whose secret was shown once, says why it is not signed in, and signs in again
// by itself once the API answers. Only the API's refusal of the key (401) lets it go.

type System = Awaited<ReturnType<typeof wiredSystem>>;

const WHOLE_TEST_TIMEOUT_MS = 120_000;
// Two ticks of the page's 5 s refresh (main.js), and a margin.
const RETRIED_WITHIN_MS = 15_000;
const heldKey = (tab: Page) => tab.evaluate('sessionStorage.getItem("keyusage.apiKey")');
const signInError = (tab: Page) => tab.locator('#sign-in-error').filter({ hasText: /./ });

async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  return { id: response.body.id as string, key: response.body.key as string };
}

// The API's own 503 (api/errors.ts fromDatabase), a gateway's page in front of it, no answer at all.
const outages: Array<[string, (route: Route) => Promise<void>, RegExp]> = [
  [
    'the database is down (503)',
    (route) =>
      route.fulfill({
        status: 503,
        contentType: 'application/json',
        body: JSON.stringify({ error: { code: 'service_unavailable', message: 'The database is unavailable; retry shortly', requestId: 'outage' } }),
      }),
    /^The database is unavailable; retry shortly: /,
  ],
  [
    'a gateway answers 502',
    (route) => route.fulfill({ status: 502, contentType: 'text/html', body: '<!doctype html><title>Bad gateway</title>' }),
    /^HTTP 502 from a proxy or gateway in front of the API, not from the API itself: /,
  ],
  ['the connection drops', (route) => route.abort('connectionreset'), /^The API could not be reached: /],
];

t.test('a reload during an outage keeps the key and signs in again once the API answers', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const system = await wiredSystem(t);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];

  async function signedIn(key: string) {
    const tab = await signedInTab(context, system.api.baseUrl, key, '#/keys', pageErrors);
    await tab.locator('#sign-out').waitFor();
    return tab;
  }

  for (const [how, fail, said] of outages) {
    await t.test(`${how}: the key kept, the sign-in tried again`, async (t) => {
      const own = await createKey(system, `outage-${how}`);
      const tab = await signedIn(own.key);
      let failed = 0;
      await tab.route('**/api/whoami', async (route) => {
        failed += 1;
        await fail(route);
      });
      await tab.reload();
      await signInError(tab).waitFor();
      t.match(await tab.textContent('#sign-in-error'), said, 'what went wrong');
      t.match(await tab.textContent('#sign-in-error'), /this tab keeps its key and signs in again every 5 s$/, 'and that the tab waits');
      t.equal(await heldKey(tab), own.key, 'the key kept');
      t.ok(await tab.locator('#sign-in').isVisible(), 'not signed in meanwhile');

      // A later tick sends the key again, held after the first failure, and fails too.
      await waitFor('a second try', () => (failed >= 2 ? true : undefined), RETRIED_WITHIN_MS);
      t.pass('tried again');

      await tab.unroute('**/api/whoami');
      await tab.locator('#sign-out').waitFor({ timeout: RETRIED_WITHIN_MS });
      t.match(await tab.textContent('#who'), `Signed in as “\u2068outage-${how}\u2069”`, 'signed in with the kept key, none typed');
      t.equal(await heldKey(tab), own.key, 'still held');
      await tab.locator('#keys-table').waitFor();
      t.pass('the keys shown');
      await tab.close();
    });
  }

  await t.test('a key revoked meanwhile is let go at the reload (401)', async (t) => {
    const own = await createKey(system, 'outage-revoked');
    const tab = await signedIn(own.key);
    const revoked = await system.api.request('POST', `/api/orgs/${system.org.id}/api-keys/${own.id}/revoke`, { key: system.adminKey });
    t.equal(revoked.status, 200, 'revoked');
    await tab.reload();
    await signInError(tab).waitFor();
    t.equal(await tab.textContent('#sign-in-error'), UNAUTHORIZED_MESSAGE, "the API's refusal shown");
    t.equal(await heldKey(tab), null, 'the key forgotten');
    await tab.close();
  });

  t.same(pageErrors, [], 'no page error');
});
