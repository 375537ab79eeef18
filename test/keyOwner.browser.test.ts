import t from 'tap';
import type { Route } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

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
  await tab.fill('#key-search', 'PLATFORM');
  await waitFor('the search by owner', async () => ((await tab.locator('#keys-table tbody tr').count()) === 1 ? true : undefined));
  t.equal(await ciRow.count(), 1, "the search box finds a key by its owner's name");
  await tab.fill('#key-search', '');
  const spike = (keyId: string, i: number) => ({
    org_id: org.id,
    key_id: keyId,
    type: 'key.spike',
    occurred_at: new Date(Date.now() - i * 60_000),
    details: {},
    dedupe_key: `test:${i}`,
  });
  await db(TABLE.keyEvents).insert([spike(ci.id, 1), spike(reader.key.id, 2)]);
  await tab.goto(`${api.baseUrl}/#/org`);
  await tab.locator('#dormant li', { hasText: 'owner \u2068data team\u2069' }).waitFor();
  t.pass("the organization page's dormant list says whom to ask");
  await tab.locator('#events li.event').nth(1).waitFor();
  t.strictSame(
    await tab.locator('#events li.event').evaluateAll((items) => items.map((item) => item.textContent!.replace(/^.*key\.spike/, ''))),
    [' key \u2068ci\u2069 · owner \u2068platform team\u2069', ' key \u2068reader\u2069'],
    "the events list names each event's key, and its owner, whom to ask",
  );

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

// The page's clock is fake: runFor jumps it through the 30 s request timeout, and through the 5 s
// refreshes on the way. Where a step must not be met by one of those, the page looks hidden, which
// the refresh skips.
t.test(
  'the name and owner form: nothing to save, a save with no answer, an API without owners, a refused key',
  { timeout: WHOLE_TEST_TIMEOUT_MS },
  async (t) => {
    const { db } = await freshDatabase(t);
    const api = await startTestApi(t, db);
    const { org, adminKey } = await seedOrg(api, db);
    const ci = (await api.services.apiKeys.create(org.id, { name: 'ci', owner: 'platform team', scopes: ['keys:read'], expiresAt: null })).key;
    const second = await api.services.apiKeys.create(org.id, { name: 'second admin', scopes: ['keys:read', 'keys:write'], expiresAt: null });
    const hidden = (yes: boolean) =>
      tab.evaluate(yes ? "Object.defineProperty(document, 'hidden', { configurable: true, get: () => true })" : 'delete document.hidden');
    const context = await launchBrowser(t);
    const pageErrors: string[] = [];
    const tab = await signedInTab(context, api.baseUrl, adminKey, `#/key/${ci.id}`, pageErrors, (tab) => tab.clock.install());
    const patches: string[] = [];
    tab.on('request', (request) => void (request.method() === 'PATCH' && patches.push(request.postData() ?? '')));
    const form = tab.locator('#key-naming');
    await form.waitFor();

    await tab.click('#save-naming');
    await form.locator('span', { hasText: 'Nothing changed' }).waitFor();
    t.same(patches, [], 'nothing changed: nothing sent');

    // No answer within 30 s: the change may have been made. The page reads the key again (the
    // refreshes skipped meanwhile: it is that read that shows a rename made elsewhere), and the
    // warning stays.
    const patchOfKey = new RegExp(`/api-keys/${ci.id}$`);
    const held: Route[] = [];
    await tab.route(patchOfKey, async (route) => {
      if (route.request().method() !== 'PATCH') return route.continue();
      held.push(route); // answered later, or never
    });
    await hidden(true);
    await tab.fill('#key-owner', 'slow team');
    await tab.click('#save-naming');
    await waitFor('the save on its way', async () => (held.length > 0 ? true : undefined));
    await db(TABLE.apiKeys).where({ id: ci.id }).update({ name: 'renamed meanwhile' });
    await tab.clock.runFor(31_000);
    await tab.locator('#key-title', { hasText: 'renamed meanwhile' }).waitFor();
    const warning = tab.locator('.detail > .error', { hasText: 'the change may have been made all the same' });
    t.equal(await warning.count(), 1, 'the warning stays after the key is read again');
    t.equal(await tab.inputValue('#key-owner'), 'slow team', 'and what was typed too');

    // Refused (401) for the secret it was sent with, which this tab has replaced since (a
    // rotation of its own key): not signed out, and told the change was not made.
    await tab.click('#save-naming');
    await waitFor('the second save on its way', async () => (held.length > 1 ? true : undefined));
    await tab.evaluate(`sessionStorage.setItem('keyusage.apiKey', ${JSON.stringify(second.plaintext)})`);
    await held[1].fulfill({ status: 401, json: { error: { code: 'unauthorized', message: 'A valid API key is required', requestId: 'r' } } });
    await tab.locator('.detail > .error', { hasText: 'Not saved: it was sent with the secret this tab has replaced since' }).waitFor();
    t.equal(await tab.locator('#sign-in').isVisible(), false, 'still signed in');
    await tab.unroute(patchOfKey);
    await hidden(false);

    // An instance of the previous version answers (during an upgrade): no owner, so no form.
    await tab.route(new RegExp(`/usage\\?keyId=${ci.id}$`), async (route) => {
      const answer = await (await route.fetch()).json();
      delete answer.data[0].owner;
      await route.fulfill({ json: answer });
    });
    await tab.clock.runFor(5_000);
    await tab.locator('.facts dt:text-is("Owner") + dd', { hasText: 'not known to this server' }).waitFor();
    t.equal(await form.isVisible(), false, 'the form is hidden');
    await tab.unroute(new RegExp(`/usage\\?keyId=${ci.id}$`));
    await tab.clock.runFor(5_000);
    await form.waitFor();

    // The tab's key refused as the save is made (revoked elsewhere): signed out, as a refresh would.
    await tab.route(new RegExp(`/api-keys/${ci.id}$`), (route) =>
      route.request().method() === 'PATCH'
        ? route.fulfill({ status: 401, json: { error: { code: 'unauthorized', message: 'A valid API key is required', requestId: 'r' } } })
        : route.continue(),
    );
    await tab.click('#save-naming');
    await tab.locator('#sign-in').waitFor();
    t.match(await tab.textContent('#sign-in-error'), 'A valid API key is required', 'signed out with the API message');
    t.strictSame(pageErrors, [], 'no page error');
  },
);
