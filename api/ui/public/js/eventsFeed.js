import { api, orgPath, routeMissing } from './api.js';
import { el, isolate, setText } from './dom.js';
import { optionalSection } from './optionalSection.js';
import { arrange, retell, setDisabled, timeAgo } from './refreshDom.js';

const PAGE_SIZE = 50;

// GET …/api-keys/events: the org's events, newest first (optionally of one key).
const eventsQuery = (params) => `/events?${new URLSearchParams(params)}`;

// Named as the keys table names the key, and with its owner, whom to ask about the event; 8
// characters of the id where the API names none (a key deleted since, or a server before names).
const keyLabel = (event) => (event.key ? `key ${isolate(event.key.name)}` : `key ${event.keyId.slice(0, 8)}`);

function eventItem(event) {
  const details = event.details && Object.keys(event.details).length > 0 ? JSON.stringify(event.details) : '';
  return el('li', { class: 'event' }, [
    timeAgo(event.occurredAt),
    ' ',
    el('strong', { text: event.type }),
    event.keyId ? el('a', { href: `#/key/${event.keyId}`, class: 'event-key', text: ` ${keyLabel(event)}` }) : null,
    event.key?.owner ? ` · owner ${isolate(event.key.owner)}` : null,
    details ? el('code', { class: 'event-details', text: details }) : null,
  ]);
}

// A page of events, one item per event kept across refreshes: the list was rebuilt whenever an
// event came, taking the focus from its links. New events go in above the ones shown.
function createEventList() {
  const list = el('ol', { class: 'events' });
  const none = el('p', { text: 'No events.' });
  let items = new Map();
  const show = (events) => {
    // Keyed by the whole event, not its id alone: an event raised again keeps its id.
    const kept = new Map(events.map((event) => [JSON.stringify(event), event]));
    items = new Map([...kept].map(([signature, event]) => [signature, items.get(signature) ?? eventItem(event)]));
    arrange(list, [...items.values()]);
    retell(list);
    none.hidden = events.length > 0;
    list.hidden = events.length === 0;
  };
  return { elements: [none, list], show };
}

// The newest PAGE_SIZE events, then older pages along the API's nextCursor: the key's badge said
// 302 events and the list showed the newest 50 with no word of the others. The refresh reads the
// page turned to again.
export function eventsSection(who, { keyId } = {}) {
  const events = createEventList();
  // The cursor of each page turned to, oldest last: none on the newest page.
  let cursors = [];
  let nextCursor = null;
  const turn = (to) => {
    cursors = to;
    // A refused key (401) is the page's to handle: its next refresh signs out.
    void section.refresh().catch(() => {});
  };
  const newer = el('button', { type: 'button', text: '← Newer events', onclick: () => turn(cursors.slice(0, -1)) });
  const older = el('button', { type: 'button', text: 'Older events →', onclick: () => turn([...cursors, nextCursor]) });
  const where = el('p', { class: 'page-status', 'aria-live': 'polite' });
  const pager = el('div', { class: 'pager' }, [newer, where, older]);
  const section = optionalSection({
    id: keyId ? 'key-events' : 'events',
    title: keyId ? 'Events of this key' : 'Events',
    endpoint: 'events endpoint',
    missing: routeMissing,
    load: async (body) => {
      const asked = cursors;
      const cursor = asked.at(-1);
      const page = await api('GET', orgPath(who, eventsQuery({ limit: String(PAGE_SIZE), ...(keyId ? { keyId } : {}), ...(cursor ? { cursor } : {}) })));
      // A page turned meanwhile: that turn's own read shows it.
      if (asked !== cursors) return;
      nextCursor = page.page.nextCursor;
      events.show(page.data);
      setDisabled([
        [newer, cursors.length === 0],
        [older, nextCursor === null],
      ]);
      pager.hidden = cursors.length === 0 && nextCursor === null;
      setText(where, cursors.length === 0 ? `The newest ${PAGE_SIZE} events; older ones on the next pages.` : `Older events, page ${cursors.length + 1}.`);
      if (!body.contains(pager)) body.append(...events.elements, pager);
    },
  });
  return section;
}
