import { readFile } from 'node:fs/promises';
import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { handled } from './helpers/dashboardClock';
import { insertKeys } from '../bench/lib/database';
import { TABLE } from '../shared/tables';

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

  // Cut short for real: the report's place is lost after its first page (the rest of the keys,
  // the last one read among them, deleted meanwhile), and the API closes the answer without its
  // end; Chromium has the 200 and part of the file, and the page saves nothing.
  const bulk = await insertKeys(db, org.id, 600, 'bulk-');
  const report = api.services.usage.report.bind(api.services.usage);
  api.services.usage.report = async function* (orgId, query) {
    const pages = report(orgId, query);
    const first = await pages.next();
    if (!first.done) yield first.value;
    await db(TABLE.apiKeys).whereIn('id', bulk.slice(400)).delete();
    yield* pages;
  };
  await tab.fill('#key-search', '');
  await tab.click('#download-csv');
  await tab.locator('.download-status', { hasText: 'Not downloaded: The report stopped before its end: nothing was saved; try again' }).waitFor();
  api.services.usage.report = report;

  // The connection reset before any answer: the API not reached.
  await tab.route(/\/usage\.csv/, (route) => route.abort('connectionreset'));
  await tab.click('#download-csv');
  await tab.locator('.download-status', { hasText: 'Not downloaded: The API could not be reached' }).waitFor();
  await tab.unroute(/\/usage\.csv/);
  t.equal(downloads, 0, 'no file saved for any of the three');
  t.equal(await tab.evaluate('document.activeElement?.id'), 'download-csv', 'the button kept the focus through its downloads');

  // Signed out while the report was on its way: the org's every key is not saved after it.
  let release = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  await tab.route(/\/usage\.csv/, async (route) => {
    await held;
    await route.continue();
  });
  const answered = tab.waitForResponse(/\/usage\.csv/);
  await tab.click('#download-csv');
  await tab.click('#sign-out');
  await tab.locator('#sign-in').waitFor();
  release();
  await answered;
  await handled();
  t.equal(downloads, 0, 'nothing saved after the sign-out');
  t.strictSame(pageErrors, [], 'no page error');
});
