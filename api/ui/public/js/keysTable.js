import { api, downloadCsv, holdsKeyMaterial, orgPath, routeMissing } from './api.js';
import { sessionKey } from './session.js';
import { el, setAttr, setText } from './dom.js';
import { count, exact } from './format.js';
import { createPager, STALE } from './pager.js';
import { arrange, setTime } from './refreshDom.js';
import { createSparkline } from './sparkline.js';

// The keys table: one page of GET …/usage (sorted, filtered and paged by the server), rows kept
// by key id and updated in place on every refresh, so focus, selection and scroll survive.
const PAGE_SIZE = 50;

const COLUMNS = [
  ['name', 'Name'],
  ['prefix', 'Prefix'],
  ['status', 'Status'],
  ['scopes', 'Scopes'],
  ['lastUse', 'Last use'],
  ['lastIp', 'Last IP'],
  ['day', 'Uses 24 h'],
  ['week', '7 d'],
  ['month', '30 d'],
  ['spark', 'Last 7 UTC days'],
  ['failed', 'Failed attempts'],
  ['badges', 'Flags'],
];

function createRow(key) {
  const cells = Object.fromEntries(COLUMNS.map(([name]) => [name, el('td', { class: `col-${name}` })]));
  const link = el('a', { href: `#/key/${key.id}` });
  // Who answers for the key, under its name: whom to ask before a clean-up.
  const owner = el('span', { class: 'owner', hidden: true });
  cells.name.append(link, owner);
  const lastUse = el('time');
  cells.lastUse.append(lastUse);
  const spark = createSparkline();
  cells.spark.append(spark.node);
  const dormant = el('span', { class: 'badge badge-dormant', text: 'dormant', hidden: true });
  const events = el('span', { class: 'badge badge-events', hidden: true });
  // A key the clean-up revoked that can still be restored (its page has Restore): after a clean-up
  // broke a client, the key to give back is found in the list.
  const restorable = el('span', { class: 'badge badge-restorable', hidden: true });
  cells.badges.append(dormant, restorable, events);
  const tr = el('tr', { 'data-key-id': key.id }, Object.values(cells));
  return { tr, cells, link, owner, lastUse, spark, dormant, restorable, events };
}

// The badge counts the key's events from its own usage row (exact, over EVENTS_SUMMARY_DAYS): it
// was counted from the org's newest 200 events of the day, so in a storm of events (more than 200
// a day) keys whose events fell outside them showed none.
function eventBadge(events) {
  const total = Object.values(events.counts).reduce((sum, n) => sum + n, 0);
  return total === 0 ? '' : `${count(total)} event${total === 1 ? '' : 's'} in ${events.days} d`;
}

function updateRow(row, key) {
  setText(row.link, key.name);
  row.owner.hidden = !key.owner;
  setText(row.owner, key.owner ?? '');
  setText(row.cells.prefix, key.displayPrefix);
  setText(row.cells.status, key.status);
  setAttr(row.cells.status, 'data-status', key.status);
  setText(row.cells.scopes, key.scopes.join(', '));
  setTime(row.lastUse, key.lastUsedAt);
  setText(row.cells.lastIp, key.lastUsedIp ?? '—');
  setText(row.cells.day, count(key.requests.last24h));
  setText(row.cells.week, count(key.requests.last7d));
  setText(row.cells.month, count(key.requests.last30d));
  row.spark.update(key.last7Days);
  setText(row.cells.failed, count(key.failedAttempts));
  row.dormant.hidden = !key.dormant;
  // The day in the text (a title alone reached no keyboard, touch or screen reader), the time in the title.
  row.restorable.hidden = !key.restorableUntil;
  setText(row.restorable, key.restorableUntil ? `restorable until ${key.restorableUntil.slice(0, 10)}` : '');
  setAttr(row.restorable, 'title', key.restorableUntil ? `Can be restored until ${exact(key.restorableUntil)}` : null);
  const badge = eventBadge(key.events);
  row.events.hidden = badge === '';
  setText(row.events, badge);
}

const KEY_SEARCH = 'Not searched: that is an API key, not a name. A search goes in the address of a request, where proxies and logs would keep it.';

function controls(onChange) {
  const search = el('input', { type: 'search', id: 'key-search', placeholder: 'Search by name or owner', 'aria-label': 'Search keys by name or owner' });
  const sort = el('select', { id: 'key-sort', 'aria-label': 'Sort keys' }, [
    el('option', { value: 'lastUsedAt', text: 'Last use' }),
    el('option', { value: 'requestCount', text: 'Traffic' }),
    el('option', { value: 'createdAt', text: 'Newest' }),
  ]);
  const dormant = el('input', { type: 'checkbox', id: 'key-dormant' });
  // The keys a clean-up revoked sort last by use (they had none for long): "Revoked" lists them
  // first, a key's 'restorable' badge among them (a review).
  const status = el('select', { id: 'key-status', 'aria-label': 'Filter keys by status' }, [
    el('option', { value: '', text: 'Any status' }),
    ...['active', 'revoked', 'expired'].map((value) => el('option', { value, text: value[0].toUpperCase() + value.slice(1) })),
  ]);
  let timer;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, 250);
  });
  sort.addEventListener('change', onChange);
  status.addEventListener('change', onChange);
  dormant.addEventListener('change', onChange);
  const element = el('div', { class: 'controls' }, [
    search,
    el('label', {}, ['Sort by ', sort]),
    el('label', {}, ['Status ', status]),
    el('label', {}, [dormant, ' Dormant only']),
  ]);
  // The report takes the filters, not the sort: it is oldest first.
  const filtersOnly = () => {
    const params = query();
    params.delete('sort');
    return params;
  };
  // A key pasted into the search went out in the request's URL, which proxies and access logs
  // keep; no name can hold one (the API refuses it), so nothing is lost by not asking. Thrown, it
  // shows where the API's own refusal of a search does.
  const query = () => {
    const params = new URLSearchParams({ sort: sort.value });
    const q = search.value.trim();
    if (holdsKeyMaterial(q)) throw new Error(KEY_SEARCH);
    if (q) params.set('q', q);
    if (dormant.checked) params.set('dormant', 'true');
    if (status.value) params.set('status', status.value);
    return params;
  };
  return { element, query, filtersOnly };
}

// Every key the filters select, not the page shown, as the CSV report (GET …/usage.csv), saved as
// a file: an access review's spreadsheet. A report cut short is refused, not saved; so is one that
// arrives after the person signed out or in with another key (the org's every key in Downloads).
// The button says it is busy with aria-disabled: disabled, it dropped the keyboard's focus.
function reportDownload(who, filtersOnly) {
  const status = el('span', { class: 'download-status', role: 'status' });
  const button = el('button', { type: 'button', id: 'download-csv', text: 'Download CSV' });
  button.addEventListener('click', async () => {
    if (button.getAttribute('aria-disabled') === 'true') return;
    button.setAttribute('aria-disabled', 'true');
    setText(status, 'Preparing the CSV of every key the filters select…');
    const key = sessionKey();
    try {
      const blob = await downloadCsv(orgPath(who, `/usage.csv?${filtersOnly()}`), { key });
      if (sessionKey() !== key) return setText(status, '');
      const link = el('a', { href: URL.createObjectURL(blob), download: `api-keys-${new Date().toISOString().slice(0, 10)}.csv` });
      link.click();
      // The browser reads the file from the URL after the click returns.
      setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
      setText(status, '');
    } catch (error) {
      setText(status, routeMissing(error) ? 'This server has no CSV report (a version before it).' : `Not downloaded: ${error.message}`);
    } finally {
      button.removeAttribute('aria-disabled');
    }
  });
  return el('div', { class: 'report-download' }, [button, status]);
}

// `requestRefresh`: the page's refresh of the current view, which shows its errors (a refresh
// started here by a filter or the pager showed none: a 400 or a 401 went unseen).
export function createKeysView({ who, onFresh, requestRefresh }) {
  const rows = new Map();
  const tbody = el('tbody');
  const filters = controls(() => {
    pager.first();
    requestRefresh();
  });
  const pager = createPager({
    pageSize: PAGE_SIZE,
    noun: 'keys',
    none: 'No keys match.',
    fetchPage: (paging) => api('GET', orgPath(who, `/usage?${filters.query()}&${paging}`)),
    onTurn: requestRefresh,
  });
  const refresh = async () => {
    const body = await pager.load();
    if (body === STALE) return STALE;
    render(body.data);
    onFresh(body);
  };

  function render(keys) {
    const seen = new Set();
    const shown = keys.map((key) => {
      let row = rows.get(key.id);
      if (!row) rows.set(key.id, (row = createRow(key)));
      updateRow(row, key);
      seen.add(key.id);
      return row.tr;
    });
    for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
    arrange(tbody, shown);
  }

  const table = el('table', { class: 'keys', id: 'keys-table' }, [
    el('thead', {}, [
      el(
        'tr',
        {},
        COLUMNS.map(([name, label]) => el('th', { scope: 'col', class: `col-${name}`, text: label })),
      ),
    ]),
    tbody,
  ]);
  const element = el('section', { 'aria-labelledby': 'keys-heading' }, [
    el('h2', { id: 'keys-heading', text: 'API keys' }),
    filters.element,
    reportDownload(who, filters.filtersOnly),
    el('div', { class: 'table-wrap' }, [table]),
    pager.element,
  ]);
  return { element, refresh };
}
