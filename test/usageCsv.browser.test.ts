import { readFile } from 'node:fs/promises';
import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// The keys table's "Download CSV": every key the filters select (not the page shown) as the CSV
// report, saved as a file; a refusal or a report cut short is said, and nothing is saved. In a real
// Chromium against the real API.

const WHOLE_TEST_TIMEOUT_MS = 120_000;

t.test('Download CSV saves the report of the filtered keys; a refusal or a cut-short report saves nothing', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const create = async (name: string, owner: string | null) =>
    (await api.services.apiKeys.create(org.id, { name, owner, scopes: ['keys:read'], expiresAt: null })).key.id;
  const deploys = await create('deploys', 'platform team');
  const nightly = await create('nightly', 'platform team');
  await create('reports', 'data team');
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, adminKey, '#/keys', pageErrors);
  await tab.locator(`tr[data-key-id="${nightly}"]`).waitFor();
  await tab.fill('#key-search', 'platform');
  const requested: string[] = [];
  tab.on('request', (request) => {
    if (request.url().includes('/usage.csv')) requested.push(new URL(request.url()).search);
  });

  const [download] = await Promise.all([tab.waitForEvent('download'), tab.click('#download-csv')]);
  t.match(download.suggestedFilename(), /^api-keys-\d{4}-\d{2}-\d{2}\.csv$/);
  const text = await readFile(await download.path(), 'utf8');
  const lines = text.split('\r\n');
  t.match(lines[0], /^id,name,owner,/, 'the header line');
  t.strictSame(
    lines.slice(1, -1).map((line) => line.split(',').slice(0, 3)),
    [
      [deploys, 'deploys', 'platform team'],
      [nightly, 'nightly', 'platform team'],
    ],
    "the keys the search selects, oldest first, whatever the table's sort",
  );
  t.strictSame(requested, ['?q=platform'], 'the filters, not the sort');
  await tab.locator('#download-csv:enabled').waitFor();
  t.equal(await tab.textContent('.download-status'), '', 'nothing left to say');

  // A refusal: the API's words, no file.
  let downloads = 0;
  tab.on('download', () => (downloads += 1));
  await tab.route(/\/usage\.csv/, (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'service_unavailable', message: 'The database took too long', requestId: 'x' } }),
    }),
  );
  await tab.click('#download-csv');
  await tab.locator('.download-status', { hasText: 'Not downloaded: The database took too long' }).waitFor();
  await tab.unroute(/\/usage\.csv/);

  // The connection reset: what the page meets when the API closes a report whose read failed
  // midway, here before any byte (after some, the body's read fails instead, the same way).
  // Nothing is saved: a short file would pass for the whole report.
  await tab.route(/\/usage\.csv/, (route) => route.abort('connectionreset'));
  await tab.click('#download-csv');
  await tab.locator('.download-status', { hasText: /^Not downloaded: / }).waitFor();
  await tab.unroute(/\/usage\.csv/);
  t.equal(downloads, 0, 'no file saved for either');
  t.strictSame(pageErrors, [], 'no page error');
});
