import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { backdatedKey } from './helpers/backdatedKey';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A key the dormant clean-up revoked can be restored for 30 days (POST …/api-keys/:keyId/restore),
// which the API and the CLI could do and the dashboard not: an operator told by a broken client
// had to deploy a new key. In a real Chromium against the real API.

const WHOLE_TEST_TIMEOUT_MS = 120_000;
const DAY_MS = 86_400_000;
// A key's own part (api/ui/public/js/api.js KEY_MATERIAL).
const KEY_MATERIAL = /ku_[0-9a-f]{32}_/;

t.test(
  'a key the clean-up revoked says until when it can be restored, and Restore gives it back; one revoked for good offers nothing',
  { timeout: WHOLE_TEST_TIMEOUT_MS },
  async (t) => {
    const { db } = await freshDatabase(t);
    const api = await startTestApi(t, db);
    const { org, adminKey } = await seedOrg(api, db);
    const keys = `/api/orgs/${org.id}/api-keys`;
    const admin = { key: adminKey };
    const idle = await backdatedKey(api, db, org.id, 'idle', new Date(Date.now() + 5 * DAY_MS));
    const forever = await backdatedKey(api, db, org.id, 'forever');
    const leaked = await backdatedKey(api, db, org.id, 'leaked');
    const stale = await backdatedKey(api, db, org.id, 'stale', new Date(Date.now() + 5 * DAY_MS));
    const lapsed = await backdatedKey(api, db, org.id, 'lapsed', new Date(Date.now() + 5 * DAY_MS));
    const cleanUp = await api.request('POST', `${keys}/revoke-dormant`, {
      ...admin,
      body: { dormantDays: 30, dryRun: false, keyIds: [idle.id, forever.id, leaked.id, stale.id, lapsed.id] },
    });
    t.equal(cleanUp.status, 200, 'the clean-up revoked the five');
    // Expired while revoked: a restore would not undo that.
    await db(TABLE.apiKeys)
      .where({ id: lapsed.id })
      .update({ expires_at: new Date(Date.now() - DAY_MS) });
    const until: string = cleanUp.body.restorableUntil;
    t.equal((await api.request('POST', `${keys}/${leaked.id}/revoke`, admin)).status, 200, 'a single revoke makes one final');
    // Signed in with a key that expires in 10 days, which may restore only keys that expire no later.
    const operator = await api.services.apiKeys.create(org.id, {
      name: 'operator',
      scopes: ['keys:read', 'keys:write'],
      expiresAt: new Date(Date.now() + 10 * DAY_MS),
    });
    const secretStatus = async (plaintext: string) => (await api.request('GET', '/api/whoami', { key: plaintext })).status;
    t.equal(await secretStatus(idle.plaintext), 401, 'revoked: its secret is refused');

    const context = await launchBrowser(t);
    const pageErrors: string[] = [];
    const tab = await signedInTab(context, api.baseUrl, operator.plaintext, `#/key/${idle.id}`, pageErrors);
    const note = tab.locator('#key-actions #restore-note');
    await note.waitFor();
    t.match(await note.textContent(), `This key was revoked by the dormant clean-up and can be restored until ${until} UTC`, 'until when, in UTC');
    await tab.getByRole('button', { name: 'Restore', exact: true }).click();
    await tab.locator('#key-actions #rotate').waitFor();
    t.equal(await tab.locator('.facts dd').first().textContent(), 'active', 'the page says the key is active');
    t.equal(await tab.locator('#restore, #restore-note').count(), 0, 'nothing left to restore');
    t.equal(await tab.evaluate('document.activeElement?.id'), 'restored-note', 'the focus goes to the line that says it was restored, not to <body>');
    t.match(await tab.locator('#restored-note').textContent(), 'Restored after the dormant clean-up revoked it, on ');
    const row = await db(TABLE.apiKeys).where({ id: idle.id }).first();
    t.strictSame([row.revoked_at, row.restorable_until, row.restored_at instanceof Date], [null, null, true], 'restored in the database');
    t.match((await api.request('GET', `${keys}/${idle.id}`, admin)).body, { status: 'active', restorableUntil: null }, "the key's view says active");
    t.equal(await secretStatus(idle.plaintext), 200, 'its secret works again');
    t.notMatch(await tab.content(), KEY_MATERIAL, 'no key material in the page');

    // The API's refusal is shown as the other actions' are, and nothing changes.
    await tab.goto(`${api.baseUrl}/#/key/${forever.id}`);
    await tab.getByRole('button', { name: 'Restore', exact: true }).click();
    await tab.locator('.error', { hasText: 'it cannot restore a key that never expires' }).waitFor();
    t.not((await db(TABLE.apiKeys).where({ id: forever.id }).first()).revoked_at, null, 'still revoked');
    t.equal(await secretStatus(forever.plaintext), 401, 'its secret still refused');

    await tab.goto(`${api.baseUrl}/#/key/${lapsed.id}`);
    await tab.locator('#restore-note', { hasText: 'so a restore would not make its secret work again: create a new key.' }).waitFor();
    t.pass('a key that expired while revoked: the note says a restore leaves it failing');

    // After a leak the revocation is made final from the page, the key never active in between.
    await tab.goto(`${api.baseUrl}/#/key/${stale.id}`);
    await tab.getByRole('button', { name: 'Revoke for good…' }).click();
    await tab.click('dialog[open] button[value=yes]');
    await tab.locator('#key-actions', { hasText: 'This key is revoked: nothing to rotate, revoke or renew.' }).waitFor();
    t.equal(await tab.locator('#restore, #revoke-for-good').count(), 0, 'made final: nothing left to restore');
    t.match((await api.request('GET', `${keys}/${stale.id}`, admin)).body, { status: 'revoked', restorableUntil: null, restoredAt: null }, 'never restored');

    await tab.goto(`${api.baseUrl}/#/key/${leaked.id}`);
    await tab.locator('#key-actions', { hasText: 'This key is revoked: nothing to rotate, revoke or renew.' }).waitFor();
    t.equal(await tab.locator('#restore, #restore-note').count(), 0, 'a key revoked for good offers no restore');
    t.notMatch(await tab.content(), KEY_MATERIAL, 'no key material in the page');
    t.notMatch(tab.url(), KEY_MATERIAL, 'nor in its address');
    t.strictSame(pageErrors, [], 'no page error');
  },
);

t.test('the clean-up dialog says until when the keys it revokes can be restored, and where', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const nightly = await backdatedKey(api, db, org.id, 'nightly');
  // A use recorded within the 30 days: the dialog has no warning to acknowledge.
  await db(TABLE.usage).insert({ org_id: org.id, key_id: adminKeyId, request_count: 1, ok_count: 1, last_used_at: new Date(), last_used_ip: '127.0.0.1' });
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  const tab = await signedInTab(context, api.baseUrl, adminKey, '#/org', pageErrors);
  await tab.locator('#dormant li').first().waitFor();
  const cleanUpAnswer = (dryRun: boolean) =>
    tab.waitForResponse((response) => response.url().endsWith('/revoke-dormant') && response.request().postDataJSON()?.dryRun === dryRun);

  const dryRun = cleanUpAnswer(true);
  await tab.click('text=Apply clean-up…');
  const dialog = tab.locator('dialog[open]');
  await dialog.waitFor();
  const dry = await (await dryRun).json();
  t.ok(Math.abs(Date.parse(dry.restorableUntil) - (Date.now() + 30 * DAY_MS)) < DAY_MS, 'the default: 30 days');
  t.match(
    await dialog.locator('#confirm-message').textContent(),
    `Their holders get 401 from now on. Each can be restored, as it was, until ${dry.restorableUntil} UTC`,
    'before the apply: until when',
  );
  t.match(await dialog.locator('#confirm-message').textContent(), "open the key's page and press Restore", 'and where');

  const applied = cleanUpAnswer(false);
  await dialog.locator('button', { hasText: 'Revoke them' }).click();
  const result = await (await applied).json();
  const outcome = tab.locator('#dormant .cleanup-result', { hasText: 'Revoked 1 key' });
  await outcome.waitFor();
  t.match(await outcome.textContent(), `Each can be restored, as it was, until ${result.restorableUntil} UTC`, 'after the apply: until when the apply says');
  t.match(await outcome.textContent(), "open the key's page and press Restore", 'and where');
  const row = await db(TABLE.apiKeys).where({ id: nightly.id }).first();
  t.equal(row.restorable_until?.toISOString(), result.restorableUntil, 'the time the database holds');
  // The keys table flags it, so the key to give back is found in the list: "Revoked" lists it
  // first, where the order by last use put it on the last page.
  await tab.goto(`${api.baseUrl}/#/keys`);
  const revokedOnly = tab.waitForResponse((response) => response.url().includes('/usage?') && response.url().includes('status=revoked'));
  await tab.selectOption('#key-status', 'revoked');
  t.same(
    (await (await revokedOnly).json()).data.map((key: { id: string }) => key.id),
    [nightly.id],
    'the filter asks for revoked keys',
  );
  const badge = tab.locator(`#keys-table tr[data-key-id="${nightly.id}"] .badge-restorable:not([hidden])`);
  await badge.waitFor();
  t.equal(await badge.textContent(), `restorable until ${result.restorableUntil.slice(0, 10)}`, 'the day in its text');
  t.equal(await badge.getAttribute('title'), `Can be restored until ${result.restorableUntil} UTC`);
  t.equal(await tab.locator('#keys-table .badge-restorable:not([hidden])').count(), 1, 'only the key the clean-up revoked');
  t.strictSame(pageErrors, [], 'no page error');
});
