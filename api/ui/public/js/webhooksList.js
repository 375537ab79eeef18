import { api } from './api.js';
import { el } from './dom.js';
import { exact, relative } from './format.js';
import { optionalSection } from './optionalSection.js';

// GET /api/orgs/:id/webhooks: each endpoint with its newest delivery
// ({ url, events, lastDelivery: { status, eventType, at } | null }).
function webhookItem(hook) {
  const last = hook.lastDelivery;
  return el('li', {}, [
    el('code', { text: hook.url }),
    ` · ${hook.events?.join(', ') || 'all events'} · `,
    last
      ? el('span', { title: exact(last.at), text: `last delivery (${last.eventType}) ${last.status} ${relative(last.at)}` })
      : el('span', { text: 'no delivery yet' }),
  ]);
}

export function webhooksSection(who) {
  return optionalSection({
    id: 'webhooks',
    title: 'Webhooks',
    endpoint: 'webhooks endpoint',
    load: async (body) => {
      const page = await api('GET', `/api/orgs/${encodeURIComponent(who.orgId)}/webhooks`);
      body.replaceChildren(page.data.length === 0 ? el('p', { text: 'No webhooks.' }) : el('ul', { class: 'webhooks' }, page.data.map(webhookItem)));
    },
  });
}
