import { routeMissing } from './api.js';
import { el, setText } from './dom.js';

// A part of the page backed by an endpoint that may not exist on this server yet (events,
// webhooks, dormant clean-up): when the route is missing it says so instead of failing.
export function optionalSection({ id, title, endpoint, load, missing = routeMissing }) {
  const body = el('div', { class: 'section-body' });
  const note = el('p', { class: 'note', hidden: true });
  const element = el('section', { id, class: 'optional', 'aria-labelledby': `${id}-heading` }, [el('h2', { id: `${id}-heading`, text: title }), note, body]);
  // Runs `task`; a missing route or any other API error becomes the section's note.
  const guard = async (task) => {
    try {
      await task();
      note.hidden = true;
      return true;
    } catch (error) {
      note.hidden = false;
      element.dataset.available = missing(error) ? 'false' : 'error';
      setText(note, missing(error) ? `Not available yet: this server has no ${endpoint}.` : error.message);
      return false;
    }
  };
  const refresh = () => guard(() => load(body));
  return { element, refresh, guard };
}
