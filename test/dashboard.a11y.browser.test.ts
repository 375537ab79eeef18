import t from 'tap';
import type { Page } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { waitFor } from '../harness/wait';
import { wiredSystem } from './helpers/wiredSystem';

// What the dashboard tells a screen reader and a narrow screen, in a real headless Chromium
// against the real API: the accessibility tree Chromium builds, the title and focus after a view
// change, and no sideways scrolling with a long name.

type System = Awaited<ReturnType<typeof wiredSystem>>;

// No spaces to break at: it made #key-title 2198 px wide.
const LONG_NAME = `long-${'x'.repeat(195)}`;

async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read', 'keys:write'] } });
  return { id: response.body.id as string, key: response.body.key as string, displayPrefix: response.body.displayPrefix as string };
}

async function signIn(page: Page, key: string) {
  await page.fill('#sign-in-key', key);
  await page.click('#sign-in button[type=submit]');
}

// Chromium's own accessibility node for the element `selector` finds (role, name, description).
async function axNode(page: Page, selector: string) {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { root } = await cdp.send('DOM.getDocument', { depth: 0 });
    const { nodeId } = await cdp.send('DOM.querySelector', { nodeId: root.nodeId, selector });
    const { nodes } = await cdp.send('Accessibility.getPartialAXTree', { nodeId, fetchRelatives: false });
    return nodes[0];
  } finally {
    await cdp.detach();
  }
}

const activeId = (page: Page) => page.evaluate('document.activeElement?.id');

// Wider content than the page: it scrolls sideways.
const scrollsSideways = (page: Page) => page.evaluate('document.documentElement.scrollWidth > document.documentElement.clientWidth');

t.test('the dashboard announces its views, errors and confirmations, and fits long names', { timeout: 120_000 }, async (t) => {
  const system = await wiredSystem(t);
  const long = await createKey(system, LONG_NAME);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  context.on('weberror', (error) => pageErrors.push(error.error().message));

  const tab = async (hash = '') => {
    const page = await context.newPage();
    await page.goto(`${system.api.baseUrl}/`);
    await signIn(page, long.key);
    await page.locator('#sign-out').waitFor();
    if (hash) await page.goto(`${system.api.baseUrl}/${hash}`);
    return page;
  };

  t.test('signing in with no hash marks the Keys link current, names the view and focuses its heading', async (t) => {
    const page = await tab();
    await page.locator('#keys-heading').waitFor();
    t.equal(await page.getAttribute('#nav a[href="#/keys"]', 'aria-current'), 'page', 'the default view is the current page');
    t.equal(await page.getAttribute('#nav a[href="#/org"]', 'aria-current'), null, 'the other link is not');
    await waitFor('the view announced', async () => ((await page.title()) === 'API keys — keyusage' ? true : undefined));
    t.equal(await activeId(page), 'keys-heading', 'the focus is on the view heading, not the body');

    await page.click('#nav a[href="#/org"]');
    await waitFor('the org view announced', async () => ((await page.title()).startsWith('Organization ') ? true : undefined));
    t.equal(await page.evaluate('document.activeElement?.tagName'), 'H2', 'the focus moved from the link to the heading');
    t.equal(await page.getAttribute('#nav a[href="#/org"]', 'aria-current'), 'page');
    t.equal(await page.getAttribute('#nav a[href="#/keys"]', 'aria-current'), null);

    await page.goto(`${system.api.baseUrl}/#/keys`);
    await page.click(`tr[data-key-id="${long.id}"] td.col-name a`);
    await waitFor("the key's page announced", async () => ((await page.title()) === `${LONG_NAME} — keyusage` ? true : undefined));
    t.equal(await activeId(page), 'key-title', "the focus is on the key's name");
    t.notOk((await page.title()).includes(long.key.slice(3)), 'no key material in the title');
    t.equal(await page.locator('#nav a[aria-current]').count(), 0, "a key's page is neither link's");

    await page.click('#sign-out');
    t.equal(await page.title(), 'keyusage dashboard', 'signing out takes the key name out of the title');
    await page.close();
  });

  t.test('a refused save of expected networks is an alert', async (t) => {
    const page = await tab(`#/key/${long.id}`);
    await page.locator('#expected-networks').fill('not-a-cidr');
    await page.click('text=Save networks');
    await page.locator('#networks > p.note', { hasText: /expectedNetworks/ }).waitFor();
    t.equal((await axNode(page, '#networks > p.note')).role?.value, 'alert', 'Chromium exposes the note as an alert');
    await page.close();
  });

  t.test('the same refusal twice is announced twice: the alert is emptied, then told again', async (t) => {
    const page = await tab(`#/key/${long.id}`);
    await page.locator('#expected-networks').fill('not-a-cidr');
    await page.click('text=Save networks');
    const note = page.locator('#networks > p.note', { hasText: /expectedNetworks/ });
    await note.waitFor();
    // Every text the alert holds from now on, in order: a screen reader tells each change.
    await page.evaluate(`{
      const note = document.querySelector('#networks > p.note');
      window.noteTexts = [];
      new MutationObserver(() => window.noteTexts.push(note.textContent)).observe(note, { childList: true, characterData: true, subtree: true });
    }`);
    await page.click('text=Save networks');
    const texts = await waitFor('the refusal told again', async () => {
      const seen = await page.evaluate<string[]>('window.noteTexts');
      return seen.length >= 2 ? seen : undefined;
    });
    t.equal(texts[0], '', 'emptied first');
    t.equal(texts[1], await note.textContent(), 'then the same refusal again');
    await page.close();
  });

  t.test('the Exact times switch shows every time exact, is remembered, and switches back', async (t) => {
    const page = await tab(`#/key/${long.id}`);
    const lastUse = page.locator('dl.facts dt:text-is("Last use") + dd time');
    await waitFor('the last use recorded', async () => (await lastUse.getAttribute('title')) ?? undefined, 15_000);
    const exactTime = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z UTC/;
    t.match(await lastUse.textContent(), /ago|just now/, 'relative by default');
    t.equal(await page.getAttribute('#exact-times', 'aria-pressed'), 'false');

    await page.click('#exact-times');
    t.equal(await page.getAttribute('#exact-times', 'aria-pressed'), 'true', 'the switch says it is on');
    await waitFor('the fact shown exact', async () => (exactTime.test((await lastUse.textContent()) ?? '') ? true : undefined));
    t.match(await lastUse.getAttribute('title'), /ago|just now/, 'the relative form on hover');
    // The key's first use (its sign-in) is an event, its time a <time> of the feed.
    const eventTime = page.locator('#key-events time').first();
    const eventText = await waitFor(
      'the first use in the feed',
      async () => ((await eventTime.count()) > 0 ? ((await eventTime.textContent()) ?? undefined) : undefined),
      15_000,
    );
    t.match(eventText, exactTime, 'an event time too');

    await page.reload();
    await page.locator('#sign-out').waitFor();
    t.equal(await page.getAttribute('#exact-times', 'aria-pressed'), 'true', 'remembered by the browser');
    await waitFor('still exact after a reload', async () => (exactTime.test((await lastUse.textContent()) ?? '') ? true : undefined));

    await page.click('#exact-times');
    await waitFor('relative again', async () => (/ago|just now/.test((await lastUse.textContent()) ?? '') ? true : undefined));
    t.equal(await page.getAttribute('#exact-times', 'aria-pressed'), 'false');
    await page.close();
  });

  t.test("the revoke confirmation is described by its message, which names the key's prefix", async (t) => {
    const page = await tab(`#/key/${long.id}`);
    await page.click('#revoke');
    await page.locator('dialog[open]').waitFor();
    const dialog = await axNode(page, 'dialog[open]');
    t.equal(dialog.name?.value, 'Revoke this key?');
    t.match(String(dialog.description?.value), long.displayPrefix, 'the description says which key');
    t.match(String(dialog.description?.value), 'you will be signed out');
    await page.click('dialog[open] button[value=no]');
    await page.close();
  });

  t.test('a long name without spaces scrolls nothing sideways, at 1280 and 360 px', async (t) => {
    const page = await tab(`#/key/${long.id}`);
    await page.locator('#key-title', { hasText: LONG_NAME }).waitFor();
    await page.locator('#expected-networks').waitFor();
    t.match(await page.locator('.subtitle').first().textContent(), /created \d{4}-\d{2}-\d{2} \(UTC\)/, "the creation date says it is UTC's");
    for (const width of [1280, 360]) {
      await page.setViewportSize({ width, height: 800 });
      t.notOk(await scrollsSideways(page), `${width} px: the key's page fits`);
      const networks = await page.locator('#expected-networks').boundingBox();
      t.ok(networks && networks.x + networks.width <= width, `${width} px: the networks field fits`);
      await page.click('#revoke');
      const message = page.locator('dialog[open] p');
      t.ok(await message.evaluate((p) => p.scrollWidth <= p.clientWidth), `${width} px: the dialog shows the whole name`);
      await page.click('dialog[open] button[value=no]');
    }
    await page.close();
  });

  t.test('exact times name their zone', async (t) => {
    const page = await tab(`#/key/${long.id}`);
    const cdp = await context.newCDPSession(page);
    await cdp.send('Emulation.setTimezoneOverride', { timezoneId: 'Europe/Berlin' });
    const exact = (iso: string) => page.evaluate(`import('/ui/js/format.js').then((format) => format.exact(${JSON.stringify(iso)}))`);
    t.equal(await exact('2026-12-06T08:41:12.000Z'), '2026-12-06T08:41:12.000Z UTC (2026-12-06 09:41:12 UTC+01:00)', 'UTC said, and the local zone');
    t.equal(await exact('2026-07-01T00:00:00Z'), '2026-07-01T00:00:00.000Z UTC (2026-07-01 02:00:00 UTC+02:00)', 'summer time has its own offset');
    await cdp.send('Emulation.setTimezoneOverride', { timezoneId: 'UTC' });
    t.equal(await exact('2026-12-06T08:41:12.000Z'), '2026-12-06T08:41:12.000Z UTC', 'in UTC, once');
    await cdp.detach();
    // The page's own use of it: the key's last use (its sign-in), once the collector has it.
    const lastUse = page.locator('dl.facts dt:text-is("Last use") + dd time');
    const title = await waitFor('the last use recorded', async () => (await lastUse.getAttribute('title')) ?? undefined, 15_000);
    t.match(title, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z UTC/, 'a shown exact time says UTC');
    await page.close();
  });

  t.test('no uncaught error in any page', async (t) => {
    t.strictSame(pageErrors, []);
  });
});
