import { api } from './api.js';
import { el } from './dom.js';
import { optionalSection } from './optionalSection.js';
import { createPager, STALE } from './pager.js';
import { retell, timeAgo } from './refreshDom.js';

// GET /api/orgs/:id/webhooks: each endpoint with its newest delivery
// ({ url, events, lastDelivery: { status, eventType, at } | null }), paged like the keys table.
const PAGE_SIZE = 50;

// The API stores every event type as ["*"].
const eventsLabel = (events) => (events.includes('*') ? 'all events' : events.join(', '));

function webhookItem(hook) {
  const last = hook.lastDelivery;
  return el('li', {}, [
    el('code', { text: hook.url }),
    ` · ${eventsLabel(hook.events)} · `,
    last ? el('span', {}, [`last delivery (${last.eventType}) ${last.status} `, timeAgo(last.at)]) : el('span', { text: 'no delivery yet' }),
  ]);
}

export function webhooksSection(who) {
  const list = el('ul', { class: 'webhooks' });
  let shown = '';
  const pager = createPager({
    pageSize: PAGE_SIZE,
    noun: 'webhooks',
    none: 'No webhooks.',
    fetchPage: (paging) => api('GET', `/api/orgs/${encodeURIComponent(who.orgId)}/webhooks?${paging}`),
    // A refused key (401) is the page's to handle: its next refresh signs out.
    onTurn: () => void section.refresh().catch(() => {}),
  });
  const section = optionalSection({
    id: 'webhooks',
    title: 'Webhooks',
    endpoint: 'webhooks endpoint',
    load: async (body) => {
      const page = await pager.load();
      if (page === STALE) return;
      retell(list);
      // Rebuilt only when something changed: rebuilt on every refresh, it took the selection and
      // the focus away every 5 s.
      if (JSON.stringify(page.data) !== shown) {
        shown = JSON.stringify(page.data);
        list.replaceChildren(...page.data.map(webhookItem));
      }
      if (!body.contains(list)) body.append(list, pager.element);
    },
  });
  return section;
}
