import t from 'tap';
import type { Page } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// The org page's "Apply clean-up…", in a real Chromium against the real API, where the API's uses
// are written nowhere (startTestApi keeps them in memory): as an API whose collector does not
// write, every key looks unused. The API refuses an apply that selects again there (409); the
// dialog applies the ids its dry run listed, which go through, and revoked every key of such an
// org without a word (a review). So where collectors record a gap (shared/collectorUptime.ts).

const WHOLE_TEST_TIMEOUT_MS = 120_000;
const DAY_MS = 86_400_000;

t.test('the clean-up dialog warns where no use is recorded, and names same-named keys apart', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const create = async (name: string) => (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key;
  const old = async (names: string[]) => {
    const keys = [];
    for (const name of names) keys.push(await create(name));
    await db(TABLE.apiKeys)
      .whereIn(
        'id',
        keys.map((key) => key.id),
      )
      .update({ created_at: new Date(Date.now() - 40 * DAY_MS) });
    return keys;
  };
  const twins = await old(['ci', 'ci', 'deploy']);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, adminKey, '#/org', pageErrors);
  await tab.locator('#dormant li').first().waitFor();
  await tab.locator('#dormant li').nth(2).waitFor();
  const listed = (await tab.locator('#dormant li').allTextContents()).join('\n');
  for (const key of twins) t.ok(listed.includes(`(${key.displayPrefix})`), `the list names ${key.name} by its prefix ${key.displayPrefix} too`);

  const dialog = tab.locator('dialog[open]');
  const revoke = dialog.locator('button', { hasText: 'Revoke them' });
  const openDialog = async (page: Page) => {
    await page.click('text=Apply clean-up…');
    await dialog.waitFor();
  };
  await openDialog(tab);
  const message = (await dialog.locator('#confirm-message').textContent()) ?? '';
  for (const key of twins) t.ok(message.includes(`${key.name}\u2069 (${key.displayPrefix})`), `${key.name} is named with its prefix ${key.displayPrefix}`);
  t.match(
    await dialog.locator('#confirm-warning').textContent(),
    /^No key of this organization has a recorded use in the last 30 days, so all 3 keys older than that look unused: check that the API records uses \(USAGE_TRACKING\) and the collector writes them\.$/,
    'the warning the API answers an apply without ids with',
  );
  t.ok(await revoke.isDisabled(), 'Revoke stays disabled');
  t.equal(await tab.evaluate('document.activeElement?.textContent'), 'Cancel', 'the focus opens on Cancel, not on the box');
  const acknowledge = dialog.getByLabel('I have checked that uses are recorded');
  // Ticked from the keyboard, then Enter: the form's first button, Cancel, closed it silently.
  await acknowledge.focus();
  await tab.keyboard.press('Space');
  await tab.keyboard.press('Enter');
  t.ok(await dialog.isVisible(), 'Enter on the box closes nothing');
  await acknowledge.uncheck();
  await acknowledge.check();
  t.ok(await revoke.isEnabled(), 'until the person says uses are recorded');
  await acknowledge.uncheck();
  t.ok(await revoke.isDisabled(), 'and again once unticked');
  await acknowledge.check();
  const applied = tab.waitForResponse((response) => response.url().endsWith('/revoke-dormant') && response.request().postDataJSON()?.dryRun === false);
  await revoke.click();
  t.equal((await (await applied).json()).usesRecorded, false);
  await tab.locator('#dormant .cleanup-result', { hasText: 'Revoked 3 keys' }).waitFor();
  t.strictSame((await db(TABLE.apiKeys).whereNotNull('revoked_at').pluck('id')).sort(), twins.map((key) => key.id).sort(), 'confirmed, the three are revoked');

  // With a use recorded within the 30 days, the dialog is as before: no warning, nothing to tick.
  await old(['nightly']);
  await db(TABLE.usage).insert({ org_id: org.id, key_id: adminKeyId, request_count: 1, ok_count: 1, last_used_at: new Date(), last_used_ip: '127.0.0.1' });
  await openDialog(tab);
  t.equal(await dialog.locator('#confirm-warning').count(), 0, 'no warning');
  t.equal(await dialog.locator('input[type=checkbox]').count(), 0, 'nothing to tick');
  t.ok(await revoke.isEnabled());
  await dialog.locator('button', { hasText: 'Cancel' }).click();
  await dialog.waitFor({ state: 'detached' });

  // Uses recorded, but no collector listened for a day 10 days ago: a key used only then looks dormant.
  const gapFrom = Date.now() - 11 * DAY_MS;
  await db(TABLE.collectorSpans).insert([
    { collector: 'a', started_at: new Date(Date.now() - 60 * DAY_MS), heard_at: new Date(gapFrom) },
    { collector: 'a', started_at: new Date(gapFrom + DAY_MS), heard_at: new Date() },
  ]);
  await openDialog(tab);
  t.match(
    await dialog.locator('#confirm-warning').textContent(),
    new RegExp(
      `^Uses may have been lost 1 time in the last 30 days, and a key used only then looks unused: ${new Date(gapFrom).toISOString()} UTC.* to ${new Date(gapFrom + DAY_MS).toISOString()} UTC.* \\(no collector listened\\)\\. Check the collectors\\.$`,
    ),
    'the gap, with its times',
  );
  t.ok(await revoke.isDisabled(), 'Revoke stays disabled');
  await dialog.getByLabel('I have checked that these keys were not in use then').check();
  t.ok(await revoke.isEnabled(), 'until the person says so');
  await dialog.locator('button', { hasText: 'Cancel' }).click();
  await dialog.waitFor({ state: 'detached' });
  t.strictSame(pageErrors, [], 'no page error');
});
