import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// The organization page charts GET /api/orgs/:id/usage: every key's uses by outcome over the
// chosen range, and how many keys were used in it. In a real Chromium against the real API.

const HOUR_MS = 3_600_000;
const WHOLE_TEST_TIMEOUT_MS = 120_000;

t.test("the organization page charts the org's uses, every key summed, over the chosen range", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db);
  const globex = await seedOrg(api, db, 'globex');
  const ci = (await api.services.apiKeys.create(acme.org.id, { name: 'ci', scopes: ['keys:read'], expiresAt: null })).key.id;
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
  // attempts. Three days ago: ci 10. globex's 1,000 are not acme's.
  await db(TABLE.usageHourly).insert([
    bucket(acme.org.id, ci, 2, 2),
    bucket(acme.org.id, acme.adminKeyId, 5, 1, 5),
    bucket(acme.org.id, ci, 72, 10),
    bucket(globex.org.id, globex.adminKeyId, 2, 1000),
  ]);
  await db(TABLE.usageCurrentHours).insert([bucket(acme.org.id, ci, 0, 2)]);

  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, acme.adminKey, '#/org', pageErrors);
  const figure = tab.locator('#org-chart figure');
  await figure.waitFor();
  t.equal(await figure.getAttribute('data-total'), '15', 'the last 7 days: every key of the org, both bucket tables');
  t.equal(await tab.textContent('#org-chart [data-outcome="bad_secret"] .legend-count'), '5', 'failed attempts in the legend');
  t.equal(await tab.textContent('#org-keys-used'), '2 keys used in this range');
  t.match(await tab.textContent('#org-usage h2'), /every key/);

  await tab.selectOption('#org-range', '24h');
  await tab.locator('#org-chart figure[data-total="5"]').waitFor();
  t.equal(await tab.textContent('#org-chart [data-outcome="ok"] .legend-count'), '5', 'the last 24 hours: ci 4, the admin key 1');
  t.equal(await tab.textContent('#org-keys-used'), '2 keys used in this range');
  t.ok((await tab.locator('#org-chart svg.chart[aria-label^="Requests per hour"]').count()) === 1, 'hourly bars, named for a screen reader');

  // With no bucket left in the range, the chart and the count say none.
  await db(TABLE.usageHourly).delete();
  await db(TABLE.usageCurrentHours).delete();
  await tab.selectOption('#org-range', '30d');
  await tab.locator('#org-chart figure[data-total="0"]').waitFor();
  t.equal(await tab.textContent('#org-keys-used'), '0 keys used in this range', 'a range without uses says none');
  t.strictSame(pageErrors, []);
});
