import t from 'tap';
import type { APIResponse, Page, Route } from 'playwright-core';
import { launchBrowser } from '../harness/browser';
import { heldAuditLock, someoneWaitsOnLock } from './helpers/database';
import { signedInTab } from './helpers/dashboardTab';
import { wiredSystem } from './helpers/wiredSystem';

// A rotation through the dashboard whose answer is lost after the API made it (the connection
// dropped, a gateway's 502), in a real Chromium against the real API: the page sends one
// Idempotency-Key per press and retries once with it, so the key is rotated once, and says that
// the new secret, in the lost answer only, is gone (docs/api-keys.md "Idempotent create and rotate").

type System = Awaited<ReturnType<typeof wiredSystem>>;

const WHOLE_TEST_TIMEOUT_MS = 120_000;
// A key's own part (shared/logger.ts KEY_LIKE).
const KEY_MATERIAL = /ku_[0-9a-f]{32}_/;

async function createKey({ api, org, adminKey }: System, name: string) {
  const response = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name, scopes: ['keys:read'] } });
  return response.body.id as string;
}

const auditActions = ({ db }: System, keyId: string) => db('audit_log').where({ target_key_id: keyId }).orderBy('id').pluck('action');

type Lose = (route: Route) => Promise<void>;

// Every rotate request of `keyId` the page sends: the first reaches the API, which answers it, and
// `lose` drops that answer on its way back; the next ones go through (or are changed by `retry`).
async function loseFirstRotation(tab: Page, keyId: string, lose: Lose, retry = (route: Route) => route.continue()) {
  const sent: Array<string | undefined> = [];
  const lost: string[] = [];
  await tab.route(new RegExp(`/${keyId}/rotate$`), async (route) => {
    sent.push(route.request().headers()['idempotency-key']);
    if (sent.length > 1) return retry(route);
    lost.push(await reachedThenLost(lose)(route));
  });
  return { sent, lost };
}

// The request reaches the API, and `lose` drops its answer; the answer's text is returned.
const reachedThenLost = (lose: Lose) => async (route: Route) => {
  const response = await route.fetch();
  await lose(route);
  return response.text();
};

const gatewayTimeout: Lose = (route) => route.fulfill({ status: 504, contentType: 'text/html', body: '<!doctype html><title>Gateway timeout</title>' });

t.test('a rotation whose answer is lost is retried once with its Idempotency-Key', { timeout: WHOLE_TEST_TIMEOUT_MS }, async (t) => {
  const system = await wiredSystem(t);
  const context = await launchBrowser(t);
  const pageErrors: string[] = [];

  async function keyPage(keyId: string): Promise<Page> {
    const tab = await signedInTab(context, system.api.baseUrl, system.adminKey, `#/key/${keyId}`, pageErrors);
    await tab.locator('#rotate').waitFor();
    return tab;
  }

  // A tab signed in with a new keys:write key of its own, on that key's page.
  async function ownKeyTab(name: string) {
    const created = await system.api.request('POST', `/api/orgs/${system.org.id}/api-keys`, {
      key: system.adminKey,
      body: { name, scopes: ['keys:read', 'keys:write'] },
    });
    const own = created.body as { id: string; key: string };
    const tab = await signedInTab(context, system.api.baseUrl, own.key, `#/key/${own.id}`, pageErrors);
    await tab.locator('#rotate').waitFor();
    return { own, tab };
  }

  const losses: Array<[string, (route: Route) => Promise<void>]> = [
    ['the connection dropped', (route) => route.abort('connectionreset')],
    ['a gateway answered 502', (route) => route.fulfill({ status: 502, contentType: 'text/html', body: '<!doctype html><title>Bad gateway</title>' })],
  ];
  for (const [how, lose] of losses) {
    await t.test(`${how}: rotated once, the replay shown without a secret`, async (t) => {
      const keyId = await createKey(system, `lost-${how}`);
      const tab = await keyPage(keyId);
      const { sent, lost } = await loseFirstRotation(tab, keyId, lose);
      await tab.click('#rotate');
      const message = tab.locator('dialog[open] #lost-secret');
      await message.waitFor();

      t.equal(sent.length, 2, 'sent twice');
      t.match(sent[0], /^[0-9a-f]{32}$/, 'with an Idempotency-Key');
      t.equal(sent[1], sent[0], 'the same one both times');
      t.match(JSON.parse(lost[0]), { id: keyId, key: KEY_MATERIAL }, 'the API rotated and answered the secret, which was lost');
      t.same(await auditActions(system, keyId), ['key.create', 'key.rotate'], 'rotated once');

      t.match(await message.textContent(), /was rotated, but the answer carrying its new secret did not arrive.*Rotate again/);
      t.match(await tab.textContent('dialog[open] h2'), /lost-.* was rotated: its new secret was lost/, 'the key named');
      t.match(await tab.textContent('#grace-note'), /keeps working until/);
      t.equal(await tab.locator('#new-secret').count(), 0, 'no secret field');
      t.notMatch(await tab.content(), KEY_MATERIAL, 'no key material anywhere in the page');
      await tab.click('dialog[open] button[type=submit]');
      t.ok(await tab.locator('#rotate').isVisible(), 'Rotate secret at hand');
      await tab.close();
    });
  }

  // An answer from the API itself is not lost: shown as any error, and not sent again.
  await t.test('a retry the API refuses (422 idempotency_key_reused) shows its message', async (t) => {
    const keyId = await createKey(system, 'lost-then-refused');
    const tab = await keyPage(keyId);
    // The retry's body changed on its way: the same Idempotency-Key for another request.
    const { sent } = await loseFirstRotation(
      tab,
      keyId,
      (route) => route.abort('connectionreset'),
      (route) => route.continue({ postData: JSON.stringify({ gracePeriodSeconds: 3600 }) }),
    );
    const refused = tab.waitForResponse((response) => response.url().endsWith(`/${keyId}/rotate`) && response.status() === 422);
    await tab.click('#rotate');
    const body = await (await refused).json();
    t.equal(body.error.code, 'idempotency_key_reused');
    const error = tab.locator('.detail p.error');
    await error.filter({ hasText: /./ }).waitFor();
    t.ok(
      (await error.textContent())?.startsWith(`${body.error.message}: the key may have been rotated`),
      "the API's message, as the page shows errors, and what it leaves unsaid",
    );
    t.equal(sent.length, 2, 'not sent a third time');
    t.same(await auditActions(system, keyId), ['key.create', 'key.rotate'], 'rotated once');
    await tab.close();
  });

  // Its retry presents the secret the lost rotation replaced: refused, 403 stale_secret.
  await t.test('the signed-in key rotating itself says the tab holds the previous secret', async (t) => {
    const { own, tab } = await ownKeyTab('lost-own');
    const { sent } = await loseFirstRotation(tab, own.id, (route) => route.abort('connectionreset'));
    await tab.click('#rotate');
    const error = tab.locator('.detail p.error');
    await error.filter({ hasText: /./ }).waitFor();
    t.match(await error.textContent(), /^The key you are signed in with has been rotated .*Sign in with another key that has keys:write/);
    t.equal(sent.length, 2);
    t.same(await auditActions(system, own.id), ['key.create', 'key.rotate'], 'rotated once');
    t.equal(await tab.evaluate('sessionStorage.getItem("keyusage.apiKey")'), own.key, 'the tab still holds the previous secret');
    await tab.close();
  });

  // The first request waits for the org's lock, its answer lost; the retry, authorized with the
  // secret still current, waits behind it and, once the first rotated the key, is refused 401
  // (beginAuditedChange), not 403: the page said to rotate again with no grace period, which the
  // previous secret this tab holds cannot do.
  await t.test('the signed-in key rotating itself, its retry waiting behind the first, says the tab holds the previous secret', async (t) => {
    const { own, tab } = await ownKeyTab('lost-own-waiting');
    const held = await heldAuditLock(t, system.url, system.org.id);
    const sent: Array<string | undefined> = [];
    let first: Promise<APIResponse> | undefined;
    await tab.route(new RegExp(`/${own.id}/rotate$`), async (route) => {
      sent.push(route.request().headers()['idempotency-key']);
      if (first) return route.continue();
      // On its way to the API, where it waits for the lock, while the page sees its connection drop.
      first = route.fetch();
      await route.abort('connectionreset');
    });
    const refused = tab.waitForResponse((response) => response.url().endsWith(`/${own.id}/rotate`) && response.status() === 401);
    await tab.click('#rotate');
    await someoneWaitsOnLock(system.db, 2);
    await held.commit();
    t.match(await (await first!).json(), { id: own.id, key: KEY_MATERIAL, previousSecretExpiresAt: String }, 'the first rotated the key, with a grace');
    t.equal((await (await refused).json()).error.code, 'unauthorized', 'the retry refused: the key rotated after it was authorized');
    const error = tab.locator('.detail p.error');
    await error.filter({ hasText: /./ }).waitFor();
    t.match(
      await error.textContent(),
      /^The key you are signed in with has been rotated .*this tab holds its previous secret, which cannot manage keys.*Sign in with another key that has keys:write/,
    );
    t.equal(sent.length, 2, 'retried');
    t.equal(sent[1], sent[0], 'with one Idempotency-Key');
    t.same(await auditActions(system, own.id), ['key.create', 'key.rotate'], 'rotated once');
    t.equal(await tab.evaluate('sessionStorage.getItem("keyusage.apiKey")'), own.key, 'the tab still holds the previous secret');
    await tab.close();
  });

  // The retry's answer lost as well: the page had only the loss to say, as if nothing was done.
  const bothLost: Array<[string, Lose, RegExp]> = [
    ['both connections dropped', (route) => route.abort('connectionreset'), /^The API could not be reached: /],
    ['a gateway answered 504 both times', gatewayTimeout, /^HTTP 504 from a proxy or gateway in front of the API, not from the API itself: /],
  ];
  for (const [how, lose, said] of bothLost) {
    await t.test(`${how}: the page says the key may have been rotated, and reads it again`, async (t) => {
      const keyId = await createKey(system, `lost-twice-${how}`);
      const tab = await keyPage(keyId);
      const { sent } = await loseFirstRotation(tab, keyId, lose, async (route) => void (await reachedThenLost(lose)(route)));
      await tab.click('#rotate');
      const error = tab.locator('.detail p.error');
      await error.filter({ hasText: /./ }).waitFor();
      const text = await error.textContent();
      t.match(text, said, 'what went wrong');
      t.match(
        text,
        /the key may have been rotated all the same, and its new secret, shown only in the answer that did not arrive, is then lost\. Rotate again/,
      );
      t.equal(sent.length, 2, 'sent twice');
      t.equal(sent[1], sent[0], 'with one Idempotency-Key');
      t.same(await auditActions(system, keyId), ['key.create', 'key.rotate'], 'rotated once');
      await tab.locator('#previous-secret', { hasText: 'Previous secret not used since rotation' }).waitFor();
      t.pass("the key read again: its rotation's grace period shown");
      t.equal(await tab.locator('#new-secret').count(), 0, 'no secret field');
      t.notMatch(await tab.content(), KEY_MATERIAL, 'no key material anywhere in the page');
      await tab.close();
    });
  }

  // With no grace period the retry is refused (401): the tab, signed out by it or by a refresh with
  // the ended secret, said only that a valid API key is required.
  await t.test('the signed-in key rotating itself with no grace period signs out saying its new secret was lost', async (t) => {
    const { own, tab } = await ownKeyTab('lost-own-now');
    const { sent, lost } = await loseFirstRotation(tab, own.id, (route) => route.abort('connectionreset'));
    await tab.selectOption('#grace', '0');
    await tab.click('#rotate');
    await tab.click('dialog[open] button[value=yes]');
    const signInError = tab.locator('#sign-in-error');
    await signInError.filter({ hasText: /./ }).waitFor();
    t.match(
      await signInError.textContent(),
      /^The key you were signed in with was rotated with no grace period .*the new one was in the answer that was lost.*Sign in with another key that has keys:write and rotate it again/,
    );
    t.match(JSON.parse(lost[0]), { id: own.id, previousSecretExpiresAt: null }, 'the API rotated it, with no grace');
    t.equal(sent.length, 2, 'retried');
    t.same(await auditActions(system, own.id), ['key.create', 'key.rotate'], 'rotated once');
    t.equal(await tab.evaluate('sessionStorage.getItem("keyusage.apiKey")'), null, 'the ended secret forgotten');
    t.ok(await tab.locator('#sign-in').isVisible(), 'signed out');
    await tab.close();
  });

  t.same(pageErrors, [], 'no page error');
});
