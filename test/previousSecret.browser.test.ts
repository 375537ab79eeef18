import t from 'tap';
import type { Page } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { waitFor } from '../harness/wait';
import { TABLE } from '../shared/tables';
import { signedInTab } from './helpers/dashboardTab';
import { wiredSystem } from './helpers/wiredSystem';

// A key's page during a rotation's grace period, in a real Chromium against the real API and
// collector: whether the previous secret is still used, and from where.

type System = Awaited<ReturnType<typeof wiredSystem>>;

const WHOLE_TEST_TIMEOUT_MS = 120_000;

async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  return { id: response.body.id as string, key: response.body.key as string };
}

async function rotate({ api, org, adminKey }: System, keyId: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys/${keyId}/rotate`, { key: adminKey, body: { gracePeriodSeconds: 3600 } });
  return response.body.key as string;
}

const view = async ({ api, org, adminKey }: System, keyId: string) =>
  (await api.request('GET', `/api/orgs/${org.id}/api-keys/${keyId}`, { key: adminKey })).body;

// The requests of a key page to its API, in order, from now on: each refresh starts with the usage
// list's row of the key, and the next waits for the one before it (main.js), so the GETs of the
// key's view between two of those rows are one refresh's.
async function keyViewReadsPerRefresh(tab: Page, orgId: string, keyId: string): Promise<number[]> {
  const paths: string[] = [];
  tab.on('request', (request) => {
    const url = new URL(request.url());
    if (request.method() === 'GET') paths.push(`${url.pathname}${url.search}`);
  });
  const refreshStart = `/api/orgs/${orgId}/api-keys/usage?keyId=${keyId}`;
  // Three starts, and the two whole refreshes between them: what came before the first is part of one.
  await waitFor('three refreshes', () => (paths.filter((path) => path === refreshStart).length >= 3 ? true : undefined), 30_000);
  const starts = paths.flatMap((path, i) => (path === refreshStart ? [i] : []));
  return [0, 1].map((n) => paths.slice(starts[n] + 1, starts[n + 1]).filter((path) => path === `/api/orgs/${orgId}/api-keys/${keyId}`).length);
}

t.test("a key's page says when and from where its previous secret was last used during a grace period", { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const system = await wiredSystem(t);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];

  async function keyPage(keyId: string): Promise<Page> {
    const tab = await signedInTab(context, system.api.baseUrl, system.adminKey, `#/key/${keyId}`, pageErrors);
    await tab.locator('#key-title:not(:empty)').waitFor();
    return tab;
  }
  const note = (tab: Page) => tab.locator('#previous-secret');

  const used = await createKey(system, 'grace-used');
  await rotate(system, used.id);
  const unused = await createKey(system, 'grace-unused');
  const newSecret = await rotate(system, unused.id);
  const plain = await createKey(system, 'never-rotated');
  t.equal((await system.api.getFrom('127.0.0.2', '/api/whoami', used.key)).status, 200);
  t.equal((await system.api.getFrom('127.0.0.3', '/api/whoami', newSecret)).status, 200);
  await waitFor('the use persisted', async () => ((await view(system, used.id)).previousSecretLastUsedAt ? true : undefined));
  const usedView = await view(system, used.id);

  const usedTab = await keyPage(used.id);
  await note(usedTab).filter({ hasText: /./ }).waitFor();
  // The end of the grace period was only on hover, and only while the previous secret was unused.
  const until = (expiresAt: string) => `; it works until ${expiresAt} UTC`;
  t.match(await note(usedTab).textContent(), /^Previous secret last used (just now|\d+ s ago) from 127\.0\.0\.2; it works until /);
  t.match(await note(usedTab).textContent(), until(usedView.previousSecretExpiresAt), 'until when it works, once used');
  t.match(await note(usedTab).locator('time').getAttribute('title'), usedView.previousSecretLastUsedAt, 'the exact time of the use on hover');
  t.ok(await note(usedTab).isVisible());
  t.same(await keyViewReadsPerRefresh(usedTab, system.org.id, used.id), [1, 1], "the note reads the usage row: one view per refresh, the networks section's");

  const unusedTab = await keyPage(unused.id);
  await note(unusedTab).filter({ hasText: /./ }).waitFor();
  t.equal(
    await note(unusedTab).textContent(),
    `Previous secret not used since rotation${until((await view(system, unused.id)).previousSecretExpiresAt)}`,
    'used only with its new secret; until when the previous one works',
  );

  const plainTab = await keyPage(plain.id);
  await plainTab.locator('.facts dd').first().filter({ hasText: /./ }).waitFor();
  t.notOk(await note(plainTab).isVisible(), 'no grace period: nothing said');

  // The grace ended elsewhere: the next refresh hides it.
  await system
    .db(TABLE.apiKeys)
    .where({ id: used.id })
    .update({ previous_secret_expires_at: new Date(Date.now() - 1000) });
  await note(usedTab).waitFor({ state: 'hidden', timeout: 15_000 });
  t.same(pageErrors, [], 'no page error');
});
