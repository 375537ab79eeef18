import { api, orgPath } from './api.js';
import { el, setAttr, setText, tellAgain } from './dom.js';
import { count, exact, serverNow } from './format.js';
import { eventsSection } from './eventsFeed.js';
import { expectedNetworksSection } from './expectedNetworks.js';
import { createIpTable } from './ipTable.js';
import { keyActions } from './keyActions.js';
import { createKeyNaming } from './keyNaming.js';
import { createSeriesChart } from './seriesChart.js';
import { setTime, timeAgo } from './refreshDom.js';

// One key: its numbers, a chart stacked by outcome over a chosen range, recent and failing IPs,
// its events and (for keys:write) its actions.

// A moment as the facts show it: a <time> (timeFormat.js, the other form on hover), told again on
// every tick (main.js) and not only by a refresh that worked: through an outage "Last use" said
// "10 s ago" for minutes. `none` when there is no such moment; `after`, what follows it.
const at = (field, { none, after } = {}) => ({ time: (k) => k[field], none, after });

const FACTS = [
  ['Status', (k) => k.status],
  // Who to ask before changing or cleaning up the key. An API of the previous version (during an
  // upgrade) has no owners: not "nobody named".
  ['Owner', (k) => ('owner' in k ? (k.owner ?? '—') : 'not known to this server')],
  ['Scopes', (k) => k.scopes.join(', ')],
  ['Last use', at('lastUsedAt')],
  ['Last IP', (k) => k.lastUsedIp ?? '—'],
  ['Uses 24 h / 7 d / 30 d', (k) => `${count(k.requests.last24h)} / ${count(k.requests.last7d)} / ${count(k.requests.last30d)}`],
  ['Uses since creation', (k) => count(k.requestCount)],
  ['Failed attempts', (k) => count(k.failedAttempts)],
  ['Last failed attempt', at('lastFailedAt', { none: 'none', after: (k) => ` from ${k.lastFailedIp ?? '—'}` })],
  ['Used after revocation', at('lastRevokedUseAt')],
  ['Used after expiry', at('lastExpiredUseAt')],
];

function factValue(fact) {
  if (typeof fact === 'function') {
    const dd = el('dd');
    return { dd, update: (key) => setText(dd, fact(key)) };
  }
  const time = el('time');
  const rest = document.createTextNode('');
  const update = (key) => {
    const iso = fact.time(key);
    setTime(time, iso, fact.none);
    setText(rest, iso && fact.after ? fact.after(key) : '');
  };
  return { dd: el('dd', {}, [time, rest]), update };
}

function createFacts() {
  const values = FACTS.map(([, fact]) => factValue(fact));
  const element = el(
    'dl',
    { class: 'facts' },
    FACTS.flatMap(([label], i) => [el('dt', { text: label }), values[i].dd]),
  );
  const update = (key) => values.forEach((value) => value.update(key));
  return { element, update };
}

// During a rotation's grace period: whether the previous secret is still in use, and where from
// (the usage row's previousSecretLastUsedAt/Ip, as the key view says them), so an operator can
// tell when ending the grace early cuts no one off, and until when it works. That end was only on
// hover while the secret was unused, and nowhere once it was used, when it matters most. Hidden
// outside a grace period, and against an API that does not say.
function previousSecretParts(key) {
  const until = `; it works until ${exact(key.previousSecretExpiresAt)}`;
  if (!key.previousSecretLastUsedAt) return [`Previous secret not used since rotation${until}`];
  return ['Previous secret last used ', timeAgo(key.previousSecretLastUsedAt), ` from ${key.previousSecretLastUsedIp ?? 'an erased address'}${until}`];
}

function createPreviousSecretNote() {
  const element = el('p', { id: 'previous-secret', class: 'subtitle', hidden: true });
  // Rebuilt only when the row changed; its <time> is told again with the others.
  let shown = '';
  const update = (key) => {
    const inGrace = Boolean(key.previousSecretExpiresAt) && key.previousSecretLastUsedAt !== undefined;
    setAttr(element, 'hidden', inGrace ? null : '');
    const signature = inGrace ? JSON.stringify([key.previousSecretExpiresAt, key.previousSecretLastUsedAt, key.previousSecretLastUsedIp]) : '';
    if (signature === shown) return;
    shown = signature;
    element.replaceChildren(...(inGrace ? previousSecretParts(key) : []));
  };
  return { element, update };
}

export function createKeyDetailView({ who, keyId, onFresh, onSignedOut }) {
  const canWrite = who.scopes.includes('keys:write');
  const title = el('h2', { id: 'key-title' });
  const subtitle = el('p', { class: 'subtitle' });
  const facts = createFacts();
  const previousSecret = createPreviousSecretNote();
  // The server's time of the facts shown: the chart's range ends with their hour.
  let readAt;
  const series = createSeriesChart({
    ids: { range: 'range', chart: 'chart' },
    read: (query) => api('GET', orgPath(who, `/${keyId}/usage?${query}`)),
    readAt: () => readAt ?? serverNow(),
  });
  const recent = createIpTable({ id: 'recent-ips', caption: 'Recent IPs (uses)', countLabel: 'Uses', countField: 'requestCount' });
  const failing = createIpTable({ id: 'failed-ips', caption: 'Recent failing IPs (wrong secret)', countLabel: 'Attempts', countField: 'attemptCount' });
  const actions = el('div');
  const error = el('p', { class: 'error', role: 'alert' });
  const events = eventsSection(who, { keyId });
  const networks = expectedNetworksSection(who, keyId, canWrite);
  // A save that works clears the refusal of one before it.
  const savedNaming = () => {
    setText(error, '');
    return refresh();
  };
  const naming = canWrite
    ? createKeyNaming({ who, keyId, onChanged: savedNaming, onReread: () => refresh(), onError: (e) => tellAgain(error, e.message), onSignedOut })
    : null;
  let shownStatus = '';

  async function refresh() {
    const usage = await api('GET', orgPath(who, `/usage?keyId=${encodeURIComponent(keyId)}`));
    const key = usage.data[0];
    if (!key) {
      setText(title, 'No such key in this organization');
      return;
    }
    readAt = Date.parse(usage.generatedAt);
    setText(title, key.name);
    setText(subtitle, `${key.displayPrefix} · created ${key.createdAt.slice(0, 10)} (UTC)${key.expiresAt ? ` · expires ${key.expiresAt}` : ''}`);
    facts.update(key);
    naming?.update(key);
    previousSecret.update(key);
    recent.update(key.recentIps);
    failing.update(key.recentFailedIps);
    // Rebuilt when the status changes, when the expiry does (its controls show it), and when the
    // time a revoked key can be restored until does (made final by a revoke, or past).
    if (canWrite && `${key.status} ${key.expiresAt} ${key.restorableUntil}` !== shownStatus) {
      shownStatus = `${key.status} ${key.expiresAt} ${key.restorableUntil}`;
      showActions(keyActions({ who, key, onChanged: refresh, onError: (e) => tellAgain(error, e.message), onSignedOut }));
    }
    await Promise.all([series.refresh(), events.refresh(), networks.refresh()]);
    onFresh(usage);
  }

  // Revoked by keyboard, the focus went back from the dialog to the Revoke button, which the
  // revoked key's block then replaced: the focus fell to <body>. It goes to the block's status line.
  // Rebuilt after a change of expiry, the block keeps what the person chose in it (data-carry: the
  // grace period, a date typed in; a rotation with none fell back to 24 hours), and the control
  // that had the focus keeps it, or "Set expiry" takes it ("Never expires" is gone once used).
  // A control gone from the rebuilt block may name the one that takes the focus instead
  // (data-focus-next: Restore, whose key is active again).
  function showActions(block) {
    const hadFocus = actions.contains(document.activeElement);
    const focusedId = hadFocus ? document.activeElement.id : '';
    const nextId = hadFocus ? document.activeElement.getAttribute('data-focus-next') : null;
    const carried = [...actions.querySelectorAll('[data-carry]')].map((input) => [input.id, input.value]);
    actions.replaceChildren(block);
    for (const [id, value] of carried) {
      const same = block.querySelector(`#${CSS.escape(id)}`);
      if (same) {
        same.value = value;
        same.setAttribute('data-carry', '');
      }
    }
    if (!hadFocus) return;
    const byId = (id) => (id ? block.querySelector(`#${CSS.escape(id)}`) : null);
    const same = byId(focusedId) || byId(nextId) || block.querySelector('#renew');
    if (same) {
      same.focus();
      return;
    }
    const status = block.querySelector('p') ?? block;
    status.tabIndex = -1;
    status.focus();
  }

  series.range.addEventListener('change', () => void series.refresh().catch((e) => tellAgain(error, e.message)));

  const element = el('section', { class: 'detail', 'aria-labelledby': 'key-title' }, [
    el('a', { href: '#/keys', class: 'back', text: '← All keys' }),
    title,
    subtitle,
    error,
    canWrite ? actions : null,
    facts.element,
    naming?.element,
    previousSecret.element,
    el('div', { class: 'chart-head' }, [el('h3', { text: 'Requests by outcome' }), series.range]),
    series.chart,
    el('div', { class: 'ip-tables' }, [recent.element, failing.element]),
    events.element,
    networks.element,
  ]);
  return { element, refresh };
}
