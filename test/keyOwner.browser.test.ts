import t from 'tap';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A key's owner (who answers for it) shows under its name in the keys table and on its page, where
// a keys:write holder renames the key and names or clears its owner. In a real Chromium against
// the real API.

const WHOLE_TEST_TIMEOUT_MS = 120_000;
const DAY_MS = 86_400_000;

t.test("a key's owner is shown, and its page renames it and changes its owner", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const ci = (await api.services.apiKeys.create(org.id, { name: 'ci', owner: 'platform team', scopes: ['keys:read'], expiresAt: null })).key;
  const reader = await api.services.apiKeys.create(org.id, { name: 'reader', scopes: ['keys:read'], expiresAt: null });
  const idle = (await api.services.apiKeys.create(org.id, { name: 'idle', owner: 'data team', scopes: ['keys:read'], expiresAt: null })).key;
  await db(TABLE.apiKeys)
    .where({ id: idle.id })
    .update({ created_at: new Date(Date.now() - 40 * DAY_MS) });
  const stored = async () => db(TABLE.apiKeys).where({ id: ci.id }).first('name', 'owner');
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];

  const tab = await signedInTab(context, api.baseUrl, adminKey, '#/keys', pageErrors);
  const ciRow = tab.locator(`tr[data-key-id="${ci.id}"]`);
  await ciRow.locator('.owner', { hasText: 'platform team' }).waitFor();
  t.equal(await tab.locator(`tr[data-key-id="${reader.key.id}"] .owner`).isVisible(), false, 'a key without an owner shows none');
  await tab.goto(`${api.baseUrl}/#/org`);
  await tab.locator('#dormant li', { hasText: 'owner \u2068data team\u2069' }).waitFor();
  t.pass("the organization page's dormant list says whom to ask");

  await tab.goto(`${api.baseUrl}/#/key/${ci.id}`);
  const ownerFact = tab.locator('.facts dt:text-is("Owner") + dd');
  const name = tab.locator('#key-name');
  const owner = tab.locator('#key-owner');
  await ownerFact.filter({ hasText: 'platform team' }).waitFor();
  t.same([await name.inputValue(), await owner.inputValue()], ['ci', 'platform team'], 'the fields hold the key as it is');

  await name.fill('ci deploys');
  await owner.fill('ops@example.com');
  await tab.click('#save-naming');
  await tab.locator('#key-title', { hasText: 'ci deploys' }).waitFor();
  await tab.locator('.key-naming', { hasText: 'Saved' }).waitFor();
  t.same(await stored(), { name: 'ci deploys', owner: 'ops@example.com' }, 'saved through the API');

  // Half typed, not saved, and the person gone elsewhere on the page: a refresh showing another
  // writer's change leaves it alone, while the field not touched follows the key.
  await owner.fill('half typed');
  await tab.locator('#key-title').click();
  await db(TABLE.apiKeys).where({ id: ci.id }).update({ name: 'renamed elsewhere', owner: 'elsewhere' });
  await ownerFact.filter({ hasText: 'elsewhere' }).waitFor();
  t.same([await name.inputValue(), await owner.inputValue()], ['renamed elsewhere', 'half typed'], 'the edit survives the refresh');

  // Renamed elsewhere again since the last refresh: a save of the owner alone leaves the name be.
  await db(TABLE.apiKeys).where({ id: ci.id }).update({ name: 'renamed again' });
  await owner.fill('');
  await tab.click('#save-naming');
  await ownerFact.filter({ hasText: '—' }).waitFor();
  t.same(await stored(), { name: 'renamed again', owner: null }, 'a blank owner names nobody; the name is not sent back');
  await tab.locator('#key-title', { hasText: 'renamed again' }).waitFor();

  await name.fill('   ');
  await tab.click('#save-naming');
  await tab.locator('.error', { hasText: 'name: must not be empty' }).waitFor();
  t.equal((await stored()).name, 'renamed again', "refused with the API's words, and nothing changes");
  await name.fill('ci');
  await tab.click('#save-naming');
  await tab.locator('#key-title', { hasText: /^ci$/ }).waitFor();
  t.equal(await tab.locator('.detail > .error').textContent(), '', 'a save that works clears the refusal');

  const readOnly = await signedInTab(context, api.baseUrl, reader.plaintext, `#/key/${ci.id}`, pageErrors);
  await readOnly.locator('#key-title', { hasText: /^ci$/ }).waitFor();
  t.equal(await readOnly.locator('#key-naming').count(), 0, 'keys:read only: nothing to edit');
  t.strictSame(pageErrors, [], 'no page error');
});
