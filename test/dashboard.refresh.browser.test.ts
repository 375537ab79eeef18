import t from 'tap';
import type { Page } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { waitFor } from '../harness/wait';
import { REFRESH_MS, WHOLE_TEST_TIMEOUT_MS, clockedTab, createKey, handled, usageOf } from './helpers/dashboardClock';
import { wiredSystem } from './helpers/wiredSystem';

// The dashboard's 5 s refresh, driven in a real Chromium against the real API: it must keep the
// times it shows up to date, and leave the focus, the selection and a half-typed box alone.

type System = Awaited<ReturnType<typeof wiredSystem>>;

const EVENTS_OF_USED_KEY = 60;

// A key used once (a recent IP, a first-use event) with EVENTS_OF_USED_KEY more events, one
// created long ago and never used (dormant), one never used that the keys table lists last.
async function world(system: System) {
  const used = await createKey(system, 'refresh-used');
  const dormant = await createKey(system, 'refresh-dormant');
  const mover = await createKey(system, 'refresh-mover');
  await system
    .db('api_keys')
    .where({ id: dormant.id })
    .update({ created_at: new Date(Date.now() - 60 * 86_400_000) });
  await system.api.request('GET', '/api/whoami', { key: used.key });
  await waitFor('the use persisted', async () => ((await usageOf(system, used.id))?.recentIps.length === 1 ? true : undefined));
  await system.db('key_events').insert(
    Array.from({ length: EVENTS_OF_USED_KEY }, (_, i) => ({
      org_id: system.org.id,
      key_id: used.id,
      type: 'key.new_ip',
      occurred_at: new Date(Date.now() - (i + 1) * 60_000),
      details: {},
    })),
  );
  return { used, dormant, mover };
}

// One refresh, its answer from `url` handled.
async function refreshOnce(tab: Page, url: RegExp) {
  const answered = tab.waitForResponse(url);
  await tab.clock.runFor(REFRESH_MS);
  await answered;
  await handled();
}

// Marks the focused element, so that after a refresh the same one can be told from a copy.
const markFocused = (tab: Page) => tab.evaluate('document.activeElement.setAttribute("data-probe", ""), document.activeElement.tagName');
const focusKept = (tab: Page) => tab.evaluate('document.activeElement?.hasAttribute("data-probe") ? "kept" : document.activeElement?.tagName');

t.test('the 5 s refresh keeps times current and leaves focus, selection and typing alone', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const system = await wiredSystem(t);
  const keys = await world(system);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];
  context.on('weberror', (error) => pageErrors.push(error.error().message));

  t.test('relative times of the events and IP tables move on with the clock', async (t) => {
    const tab = await clockedTab(context, system, `#/key/${keys.used.id}`);
    const eventTime = tab.locator('#key-events li.event time').first();
    const ipTime = tab.locator('#recent-ips tbody time').first();
    await eventTime.waitFor();
    await ipTime.waitFor();
    const before = [await eventTime.textContent(), await ipTime.textContent()];
    // Two minutes on, on the server's clock too: the page tells times by the server's (the usage
    // answer's generatedAt), and the browser's jump alone ages nothing.
    await tab.route(/\/api-keys\/usage\?/, async (route) => {
      const response = await route.fetch();
      const body = await response.json();
      await route.fulfill({ response, json: { ...body, generatedAt: new Date(Date.parse(body.generatedAt) + 2 * 60_000).toISOString() } });
    });
    await tab.clock.fastForward(2 * 60_000);
    await refreshOnce(tab, /\/events\?/);
    const after = [await eventTime.textContent(), await ipTime.textContent()];
    t.not(after[0], before[0], 'the event time is told again');
    t.not(after[1], before[1], 'the IP time is told again');
    t.match(after[1], /min ago/, '2 minutes on, the use is minutes ago');
    await tab.close();
  });

  t.test('a new event leaves the focus on the org feed link it was on', async (t) => {
    const tab = await clockedTab(context, system, '#/org');
    const link = tab.locator('#events li.event a').first();
    await link.focus();
    await markFocused(tab);
    await system.db('key_events').insert({ org_id: system.org.id, key_id: keys.mover.id, type: 'key.spike', occurred_at: new Date(), details: {} });
    await refreshOnce(tab, /\/events\?/);
    t.match(await tab.locator('#events li.event a').first().getAttribute('href'), keys.mover.id, 'the new event is shown first');
    t.equal(await focusKept(tab), 'kept', 'the same link still has the focus');
    await tab.close();
  });

  t.test('a keys table row moved up by its use keeps the focus', async (t) => {
    const tab = await clockedTab(context, system, '#/keys');
    const row = tab.locator(`tr[data-key-id="${keys.mover.id}"]`);
    await row.locator('a').focus();
    await markFocused(tab);
    const rowIndex = () => row.evaluate((tr) => [...tr.parentElement!.children].indexOf(tr));
    const before = await rowIndex();
    await system.api.request('GET', '/api/whoami', { key: keys.mover.key });
    await waitFor('the use persisted', async () => ((await usageOf(system, keys.mover.id))?.requestCount === 1 ? true : undefined));
    await refreshOnce(tab, /\/usage\?sort=/);
    t.ok((await rowIndex()) < before, 'the row moved up');
    t.equal(await focusKept(tab), 'kept', 'its link still has the focus');
    await tab.close();
  });

  t.test('a refresh keeps the selection in the webhooks list', async (t) => {
    const url = 'https://203.0.113.12/refresh-hook';
    const created = await system.api.request('POST', `/api/orgs/${system.org.id}/webhooks`, { key: system.adminKey, body: { url, events: ['*'] } });
    t.equal(created.status, 201);
    const tab = await clockedTab(context, system, '#/org');
    await tab.locator('#webhooks li code').waitFor();
    await tab.evaluate('getSelection().selectAllChildren(document.querySelector("#webhooks li code"))');
    await refreshOnce(tab, /\/webhooks\?/);
    t.equal(await tab.evaluate('getSelection().toString()'), url, 'the URL is still selected');
    await tab.close();
  });

  t.test('Next onto the last page moves the focus to Previous', async (t) => {
    const [{ secret_box }] = await system.db('webhooks').where({ org_id: system.org.id }).select('secret_box');
    const start = Date.now();
    await system.db('webhooks').insert(
      Array.from({ length: 50 }, (_, i) => ({
        org_id: system.org.id,
        url: `https://203.0.113.12/refresh-hook-${i}`,
        event_types: ['*'],
        secret_box,
        created_at: new Date(start + (i + 1) * 1000),
      })),
    );
    t.teardown(() => system.db('webhooks').where({ org_id: system.org.id }).del());
    const tab = await clockedTab(context, system, '#/org');
    const status = tab.locator('#webhooks .page-status');
    await status.filter({ hasText: '1–50 of 51 webhooks' }).waitFor();
    await tab.focus('#webhooks button:has-text("Next")');
    await tab.keyboard.press('Enter');
    await status.filter({ hasText: '51–51 of 51 webhooks' }).waitFor();
    t.equal(await tab.evaluate('document.activeElement?.textContent'), '← Previous', 'the focus is on Previous');
    await tab.close();
  });

  t.test('revoking by keyboard leaves the focus in the key actions', async (t) => {
    const victim = await createKey(system, 'refresh-revoke-me');
    const tab = await clockedTab(context, system, `#/key/${victim.id}`);
    await tab.focus('#revoke');
    await tab.keyboard.press('Enter');
    await tab.focus('dialog[open] button[value=yes]');
    await tab.keyboard.press('Enter');
    await tab.locator('#key-actions', { hasText: 'This key is revoked' }).waitFor();
    await handled();
    t.equal(await tab.evaluate('document.activeElement?.closest("#key-actions") ? "inside" : document.activeElement?.tagName'), 'inside');
    await tab.close();
  });

  t.test('the dormant list refreshes with the days last committed, not a half-typed value', async (t) => {
    const tab = await clockedTab(context, system, '#/org');
    await tab.locator(`#dormant li a[href="#/key/${keys.dormant.id}"]`).waitFor();
    const asked: string[] = [];
    tab.on('request', (request) => {
      const days = new URL(request.url()).searchParams.get('dormantDays');
      if (days) asked.push(days);
    });
    const note = tab.locator('#dormant > p.note');
    await tab.fill('#dormant-days', '');
    await refreshOnce(tab, /\/usage\?dormant=true/);
    t.notOk(await note.isVisible(), 'a cleared box shows no error');
    await tab.fill('#dormant-days', '9');
    await refreshOnce(tab, /\/usage\?dormant=true/);
    t.strictSame(asked, ['30', '30'], 'the ticks kept to 30 days');
    await tab.fill('#dormant-days', '90');
    await tab.locator('#dormant-days').dispatchEvent('change');
    await tab.locator('#dormant .section-body > p', { hasText: 'unused for 90 days' }).waitFor();
    t.strictSame(asked, ['30', '30', '90'], 'the committed value is listed');
    await tab.close();
  });

  t.test('older events are reachable past the newest 50', async (t) => {
    const all = await system.api.request('GET', `/api/orgs/${system.org.id}/api-keys/events?keyId=${keys.used.id}&limit=200`, { key: system.adminKey });
    const total = all.body.data.length;
    t.ok(total > 50, `the key has ${total} events`);
    const tab = await clockedTab(context, system, `#/key/${keys.used.id}`);
    const items = tab.locator('#key-events li.event');
    await items.nth(49).waitFor();
    t.equal(await items.count(), 50);
    t.match(await tab.locator('#key-events .page-status').textContent(), /newest 50/, 'it says more are older');
    await tab.click('#key-events button:has-text("Older events")');
    await waitFor('the older page', async () => ((await items.count()) === total - 50 ? true : undefined));
    const shown = await items.locator('time').evaluateAll((times) => times.map((time) => time.getAttribute('datetime')));
    t.strictSame(
      shown,
      all.body.data.slice(50).map((event: { occurredAt: string }) => event.occurredAt),
      'the events after the 50th',
    );
    t.ok(await tab.locator('#key-events button:has-text("Older events")').isDisabled(), 'no page past the last');
    await tab.close();
  });

  t.test('no uncaught error', async (t) => {
    t.strictSame(pageErrors, []);
  });
});
