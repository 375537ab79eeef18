import { api, orgPath, routeMissing } from './api.js';
import { el } from './dom.js';
import { exact, relative } from './format.js';
import { optionalSection } from './optionalSection.js';

// GET …/api-keys/events: the org's events, newest first (optionally of one key).
const eventsQuery = (params) => `/events?${new URLSearchParams(params)}`;

function eventItem(event) {
  const details = event.details && Object.keys(event.details).length > 0 ? JSON.stringify(event.details) : '';
  return el('li', { class: 'event' }, [
    el('time', { datetime: event.occurredAt, title: exact(event.occurredAt), text: relative(event.occurredAt) }),
    ' ',
    el('strong', { text: event.type }),
    event.keyId ? el('a', { href: `#/key/${event.keyId}`, class: 'event-key', text: ` key ${event.keyId.slice(0, 8)}` }) : null,
    details ? el('code', { class: 'event-details', text: details }) : null,
  ]);
}

export function eventsSection(who, { keyId } = {}) {
  let shown = '';
  return optionalSection({
    id: keyId ? 'key-events' : 'events',
    title: keyId ? 'Events of this key' : 'Events',
    endpoint: 'events endpoint',
    missing: routeMissing,
    load: async (body) => {
      const page = await api('GET', orgPath(who, eventsQuery({ limit: '50', ...(keyId ? { keyId } : {}) })));
      // Rebuilt only when something changed, so a refresh does not steal focus from a link.
      if (JSON.stringify(page.data) === shown) return;
      shown = JSON.stringify(page.data);
      body.replaceChildren(page.data.length === 0 ? el('p', { text: 'No events.' }) : el('ol', { class: 'events' }, page.data.map(eventItem)));
    },
  });
}
