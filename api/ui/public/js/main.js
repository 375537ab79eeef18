import { api } from './api.js';
import { el, isolate, setText } from './dom.js';
import { createFreshness } from './freshness.js';
import { createKeyDetailView } from './keyDetail.js';
import { createKeysView } from './keysTable.js';
import { createOrgView } from './orgView.js';
import { STALE } from './pager.js';
import { retell } from './refreshDom.js';
import { forgetSessionKey, keepSessionKey, sessionKey } from './session.js';
import { exactTimesShown, showExactTimes } from './timeFormat.js';

// Sign-in, the three views (#/keys, #/key/<id>, #/org) and the refresh loop.
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
const freshness = createFreshness($('freshness'));
const SIGNED_OUT_TITLE = document.title;
const SIGNED_IN_PARTS = ['nav', 'who', 'exact-times', 'sign-out', 'view'];
let who;
let current;
// The refreshes of each view still on their way: the 5 s tick waits for them (a filter or the
// pager may still replace one).
const running = new WeakMap();

function showSignIn(message = '') {
  who = undefined;
  current = undefined;
  for (const id of SIGNED_IN_PARTS) $(id).hidden = true;
  // Hidden was not gone: the org's key names, prefixes and addresses stayed in the page.
  $('view').replaceChildren();
  freshness.clear();
  document.title = SIGNED_OUT_TITLE;
  $('sign-in').hidden = false;
  setText($('sign-in-error'), message);
  $('sign-in-key').focus();
}

const keyIdIn = (hash) => /^#\/key\/([0-9a-f-]{36})$/.exec(hash)?.[1];

// The nav link of the view `hash` shows: the keys list is also the view of an empty or unknown
// hash, and a key's page is neither link's.
function navHashFor(hash) {
  if (hash === '#/org') return '#/org';
  return keyIdIn(hash) ? undefined : '#/keys';
}

function viewFor(hash) {
  const keyId = keyIdIn(hash);
  let view;
  // An answer for a view since left (signed out, another page) does not show its freshness.
  const onFresh = (usage) => view === current && freshness.update(usage);
  const common = { who, onFresh, requestRefresh: () => void refreshCurrent() };
  // Signed out by the key's own page (its key revoked, or rotated with its new secret lost), with its message.
  if (keyId) view = createKeyDetailView({ ...common, keyId, onSignedOut: signOut });
  else if (hash === '#/org') view = createOrgView(common);
  else view = createKeysView(common);
  return view;
}

async function refreshCurrent() {
  const view = current;
  // Not signed in yet: no view, and no #view-error to show an error in.
  if (!view) return;
  running.set(view, (running.get(view) ?? 0) + 1);
  try {
    const outcome = await view.refresh();
    // The last error stays shown only while it holds: a refresh that worked clears it.
    if (view === current && outcome !== STALE) setText($('view-error'), '');
  } catch (error) {
    // A key revoked or expired meanwhile: back to sign-in with the API's message. A refresh still
    // on its way with a secret this page has since rotated away is refused too, yet the session's
    // new secret is fine: the next refresh uses it.
    if (error.status === 401) {
      if (error.sentWith(sessionKey())) signOut(error.message);
    } else if (view === current) setText($('view-error'), error.message);
  } finally {
    running.set(view, running.get(view) - 1);
  }
}

function route() {
  if (!who) return;
  // The last view's reading is not this one's: the line waits for the new view's own.
  freshness.clear();
  current = viewFor(location.hash);
  $('view').replaceChildren(current.element, el('p', { id: 'view-error', class: 'error', role: 'alert' }));
  const navHash = navHashFor(location.hash);
  for (const link of $('nav').querySelectorAll('a')) {
    if (link.hash === navHash) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const view = current;
  void refreshCurrent().then(() => announce(view));
}

// A view change was silent to a screen reader: the tab's title now names the view (a key's page
// by its name, once the first refresh has it), and the focus, left on the body or on a link or
// form the change took away, moves to the view's heading.
function announce(view) {
  if (view !== current) return;
  const heading = view.element.querySelector('h2');
  if (!heading?.textContent) return;
  document.title = `${heading.textContent} — keyusage`;
  // Someone already at work in the new view keeps their place.
  if (view.element.contains(document.activeElement)) return;
  heading.tabIndex = -1;
  heading.focus();
}

async function signIn(key) {
  let found;
  try {
    found = await api('GET', '/api/whoami', { key });
  } catch (error) {
    // A key typed in that could not sign in (refused, or the API unreachable) is not kept: it is
    // still in the form, to send again. It replaces a key the tab held: that one is let go too.
    signOut(error.message);
    return;
  }
  signedIn(key, found);
}

// The key this tab holds (a reload, or a tick while the API did not answer for it) is let go only
// once the API refuses it (401: unknown, revoked or expired). A 5xx, a gateway's page or a lost
// connection says nothing about the key: forgotten then, a reload during an outage or a restart
// signed the tab out for good, its key shown once and gone.
let heldSignIn;
function signInHeld() {
  if (heldSignIn) return;
  const key = sessionKey();
  heldSignIn = api('GET', '/api/whoami', { key })
    .then(
      (found) => {
        if (stillHeld(key)) signedIn(key, found);
      },
      (error) => {
        if (!stillHeld(key)) return;
        if (error.status === 401) signOut(error.message);
        else setText($('sign-in-error'), `${error.message}: this tab keeps its key and signs in again every ${REFRESH_MS / 1000} s`);
      },
    )
    .finally(() => {
      heldSignIn = undefined;
    });
}

// A key typed in meanwhile took the held key's place, signed in or not.
const stillHeld = (key) => !who && sessionKey() === key;

function signedIn(key, found) {
  who = found;
  keepSessionKey(key);
  $('sign-in').hidden = true;
  $('sign-in-key').value = '';
  for (const id of SIGNED_IN_PARTS) $(id).hidden = false;
  setText($('who'), `Signed in as “${isolate(who.name)}” (${who.scopes.join(', ')})`);
  route();
}

function signOut(message) {
  forgetSessionKey();
  showSignIn(message);
}

$('sign-in').addEventListener('submit', (event) => {
  event.preventDefault();
  void signIn($('sign-in-key').value.trim());
});
$('sign-out').addEventListener('click', () => signOut(''));
$('exact-times').setAttribute('aria-pressed', String(exactTimesShown()));
$('exact-times').addEventListener('click', () => {
  showExactTimes(!exactTimesShown());
  $('exact-times').setAttribute('aria-pressed', String(exactTimesShown()));
  // The times in <time> elements now; the others (the facts, the keys' last use) with the refresh.
  retell(document.body);
  void refreshCurrent();
});
window.addEventListener('hashchange', route);
// A tick while the view's refresh is still on its way is skipped: with an API slower than 5 s,
// each tick's request replaced the one before it, whose answer was then dropped, so the page
// showed neither the keys nor an error. The times shown are told again on every tick, whatever
// becomes of its refresh: told only by refreshes that worked, a use 10 s old at the last one
// still read "10 s ago" through minutes of failing refreshes.
setInterval(() => {
  if (document.hidden) return;
  retell(document.body);
  if (!who && sessionKey()) signInHeld();
  else if (!document.querySelector('dialog[open]') && !running.get(current)) void refreshCurrent();
}, REFRESH_MS);

// The form, shown while the held key signs in, stays with the API's error if it does not.
showSignIn();
if (sessionKey()) signInHeld();
