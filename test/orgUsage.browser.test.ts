import t, { type Test } from 'tap';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { twoOrgWorld } from './helpers/api';
import { handled, REFRESH_MS } from './helpers/dashboardClock';

// The organization page charts GET /api/orgs/:id/usage: every key's uses by outcome over the
// chosen range, and how many keys were used in it. In a real Chromium against the real API.

const HOUR_MS = 3_600_000;
const WHOLE_TEST_TIMEOUT_MS = 120_000;

async function world(t: Test) {
  const { db, api, acme, globex } = await twoOrgWorld(t, Date.now());
  const create = async (name: string) => (await api.services.apiKeys.create(acme.org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
  const [ci, staging] = [await create('ci'), await create('staging')];
  const thisHour = Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
  const bucket = (orgId: string, keyId: string, hoursAgo: number, ok: number, badSecret = 0) => ({
    org_id: orgId,
    key_id: keyId,
    hour: new Date(thisHour - hoursAgo * HOUR_MS),
    request_count: ok,
    ok_count: ok,
    bad_secret_count: badSecret,
  });
  // In the last 24 hours: ci 4 (2 of them in the hour under way), the admin key 1 and 5 failed
  // attempts. Three days ago: ci 10 and staging 3. globex's 1,000 are not acme's.
  await db(TABLE.usageHourly).insert([
    bucket(acme.org.id, ci, 2, 2),
    bucket(acme.org.id, acme.adminKeyId, 5, 1, 5),
    bucket(acme.org.id, ci, 72, 10),
    bucket(acme.org.id, staging, 72, 3),
    bucket(globex.org.id, globex.adminKeyId, 2, 1000),
  ]);
  await db(TABLE.usageCurrentHours).insert([bucket(acme.org.id, ci, 0, 2)]);
  return { db, api, acme };
}

t.test("the organization page charts the org's uses, every key summed, over the chosen range", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db, api, acme } = await world(t);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, acme.adminKey, '#/org', pageErrors);
  const figure = tab.locator('#org-chart figure');
  await figure.waitFor();
  t.equal(await figure.getAttribute('data-total'), '18', 'the last 7 days: every key of the org, both bucket tables');
  t.equal(await tab.textContent('#org-chart [data-outcome="bad_secret"] .legend-count'), '5', 'failed attempts in the legend');
  t.equal(await tab.textContent('#org-keys-used'), '3 keys used in this range');

  await tab.selectOption('#org-range', '24h');
  await tab.locator('#org-chart figure[data-total="5"]').waitFor();
  t.equal(await tab.textContent('#org-chart [data-outcome="ok"] .legend-count'), '5', 'the last 24 hours: ci 4, the admin key 1');
  t.equal(await tab.textContent('#org-keys-used'), '2 keys used in this range', 'staging was used 3 days ago only');
  t.equal(await tab.locator('#org-chart svg.chart[aria-label^="Requests per hour"]').count(), 1, 'hourly bars, named for a screen reader');

  // A range whose read fails: the chart says so, and the count beside it is not the last range's.
  await tab.route(/\/api\/orgs\/[^/]+\/usage\?.*granularity=day/, (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'service_unavailable', message: 'The database took too long', requestId: 'x' } }),
    }),
  );
  await tab.selectOption('#org-range', '30d');
  await tab.locator('#org-chart .chart-failed').waitFor();
  t.match(await tab.textContent('#org-chart .chart-failed'), /Last 30 UTC days, daily: not read \(The database took too long\)/);
  t.equal(await tab.textContent('#org-keys-used'), 'Keys used in this range: not read');
  await tab.unroute(/\/api\/orgs\/[^/]+\/usage\?.*granularity=day/);

  // With no bucket left in the range, the chart and the count say none.
  await db(TABLE.usageHourly).delete();
  await db(TABLE.usageCurrentHours).delete();
  await tab.selectOption('#org-range', '90d');
  await tab.locator('#org-chart figure[data-total="0"]').waitFor();
  t.equal(await tab.textContent('#org-keys-used'), '0 keys used in this range', 'a range without uses says none');
  t.strictSame(pageErrors, []);
});

// Every hour of every key of the range is summed: read by each open tab on every 5 s refresh, a
// 90-day range of a large org was seconds of the database's time every 5 s. The page's other
// sections still refresh every 5 s.
t.test("the org's chart is read again once a minute, not on every refresh", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { api, acme } = await world(t);
  const context = await launchBrowser(t);
  const tab = await context.newPage();
  // Paused before the page loads: only the test moves the page's time, and the page's 5 s
  // interval starts on it, so every refresh falls a whole number of periods after the first read.
  // A clock left running added the test's own slowness to the page's time, and a slow machine
  // saw a minute pass within 11 refreshes (CI, 2026-12-07).
  await tab.clock.install();
  await tab.clock.pauseAt(Date.now() + 1000);
  const reads = { series: 0, events: 0 };
  tab.on('request', (request) => {
    if (/\/api\/orgs\/[^/]+\/usage\?/.test(request.url())) reads.series += 1;
    if (/\/api-keys\/events\?/.test(request.url())) reads.events += 1;
  });
  await tab.goto(`${api.baseUrl}/`);
  await tab.fill('#sign-in-key', acme.adminKey);
  await tab.click('#sign-in button[type=submit]');
  await tab.locator('#sign-out').waitFor();
  await tab.goto(`${api.baseUrl}/#/org`);
  await tab.locator('#org-chart figure').waitFor();
  t.equal(reads.series, 1, 'read when the page opens');
  /** The refreshes (1 to n) on which the chart was read. */
  const refreshesReadingTheChart = async (n: number) => {
    const reading: number[] = [];
    for (let refresh = 1; refresh <= n; refresh++) {
      const before = reads.series;
      const events = tab.waitForResponse(/\/api-keys\/events\?/);
      await tab.clock.runFor(REFRESH_MS);
      await events;
      await handled();
      if (reads.series > before) reading.push(refresh);
    }
    return reading;
  };
  const eventsBefore = reads.events;
  t.strictSame(await refreshesReadingTheChart(12), [12], 'read again by the refresh a minute after, and by none before');
  t.equal(reads.events - eventsBefore, 12, 'the events were read on each refresh');

  // A read that fails (a range timing out, the costliest) is tried again a minute later, not on
  // the next refresh (a review).
  await tab.route(/\/api\/orgs\/[^/]+\/usage\?/, (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'service_unavailable', message: 'The database took too long', requestId: 'x' } }),
    }),
  );
  t.strictSame(await refreshesReadingTheChart(12), [12], 'read a minute later, and it failed');
  t.equal(await tab.textContent('#org-keys-used'), 'Keys used in this range: not read');
  t.strictSame(await refreshesReadingTheChart(12), [12], 'after the failure, read again a minute later, not on the next refresh');
});
