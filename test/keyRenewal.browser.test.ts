import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A key's page could only watch an expiry come: key.expiring warned ahead, and the API and the CLI
// could move it (PATCH …/api-keys/:keyId), the dashboard not. In a real Chromium against the real API.

const WHOLE_TEST_TIMEOUT_MS = 120_000;
const DAY_MS = 86_400_000;

t.test("a key's page renews it to a date, removes its expiry, and shows the API's refusal", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const expiring = (await api.services.apiKeys.create(org.id, { name: 'ci', scopes: ['keys:read'], expiresAt: new Date(Date.now() + 3 * DAY_MS) })).key;
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, adminKey, `#/key/${expiring.id}`, pageErrors);
  const date = tab.locator('#expiry-date');
  await date.waitFor();
  t.equal(await date.inputValue(), expiring.expiresAt!.slice(0, 10), 'the date box shows the current expiry');
  const expiresAt = async () => (await db(TABLE.apiKeys).where({ id: expiring.id }).first()).expires_at as Date | null;

  const later = new Date(Date.now() + 90 * DAY_MS).toISOString().slice(0, 10);
  await date.fill(later);
  await tab.click('#renew');
  await tab.locator('.subtitle:not(#previous-secret)', { hasText: `expires ${later}T00:00:00.000Z` }).waitFor();
  t.equal((await expiresAt())?.toISOString(), `${later}T00:00:00.000Z`, 'renewed to 00:00 UTC of the date');
  t.equal(await tab.evaluate('document.activeElement?.id'), 'renew', 'the focus stays on the button in the rebuilt controls');

  await tab.click('#never-expires');
  await tab.locator('.subtitle:not(#previous-secret)', { hasNotText: 'expires' }).waitFor();
  t.equal(await expiresAt(), null, 'never expires');
  t.equal(await tab.locator('#never-expires').count(), 0, 'nothing left to remove');
  t.equal(await tab.evaluate('document.activeElement?.id'), 'renew', 'the focus goes to Set expiry, not to a nameless block');

  await date.fill(new Date(Date.now() - DAY_MS).toISOString().slice(0, 10));
  await tab.click('#renew');
  await tab.locator('.error', { hasText: 'expiresAt' }).waitFor();
  t.equal(await expiresAt(), null, "a date past is refused with the API's words, and nothing changes");
  await date.fill('');
  await tab.click('#renew');
  await tab.locator('.error', { hasText: 'New expiry: choose a date.' }).waitFor();

  // Another writer changes the expiry: the rebuilt controls keep the grace chosen and the date typed.
  await tab.selectOption('#grace', '0');
  const typed = new Date(Date.now() + 200 * DAY_MS).toISOString().slice(0, 10);
  await date.fill(typed);
  const elsewhere = new Date(Date.now() + 30 * DAY_MS);
  await db(TABLE.apiKeys).where({ id: expiring.id }).update({ expires_at: elsewhere });
  await tab.locator('.subtitle:not(#previous-secret)', { hasText: `expires ${elsewhere.toISOString()}` }).waitFor();
  t.strictSame([await tab.locator('#grace').inputValue(), await date.inputValue()], ['0', typed], 'a rotation with none stays with none');

  await db(TABLE.apiKeys).where({ id: expiring.id }).update({ revoked_at: new Date() });
  await tab.locator('#key-actions', { hasText: 'nothing to rotate, revoke or renew' }).waitFor();
  t.equal(await tab.locator('#expiry-date').count(), 0, 'a revoked key has no renewal');
  t.strictSame(pageErrors, [], 'no page error');
});
