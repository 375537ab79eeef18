import { api } from './api.js';
import { el } from './dom.js';
import { exact, relative } from './format.js';
import { optionalSection } from './optionalSection.js';

// GET /api/orgs/:id/webhooks: each endpoint with its last delivery. The shape
// ({ url, events, lastDelivery: { status, attemptedAt } }) is to be checked against the
// webhooks branch when it lands.
function webhookItem(hook) {
  const last = hook.lastDelivery;
  return el('li', {}, [
    el('code', { text: hook.url }),
    ` · ${hook.events?.join(', ') || 'all events'} · `,
    last ? el('span', { title: exact(last.attemptedAt), text: `last delivery ${last.status} ${relative(last.attemptedAt)}` }) : el('span', { text: 'no delivery yet' }),
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
