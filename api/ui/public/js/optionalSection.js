import { routeMissing } from './api.js';
import { el, setText, tellAgain } from './dom.js';

// A part of the page backed by an endpoint that may not exist on this server yet (events,
// webhooks, dormant clean-up): when the route is missing it says so instead of failing.
export function optionalSection({ id, title, endpoint, load, missing = routeMissing }) {
  const body = el('div', { class: 'section-body' });
  // An alert: a refused action (a 400 on save, a failed clean-up) was shown but never announced,
  // while its success was.
  const note = el('p', { class: 'note', role: 'alert', hidden: true });
  const element = el('section', { id, class: 'optional', 'aria-labelledby': `${id}-heading` }, [el('h2', { id: `${id}-heading`, text: title }), note, body]);
  // Which kind of task the note is from: the periodic refresh, or an action the person took.
  let noteFrom;
  // Runs `task`; a missing route or any other API error becomes the section's note. A refresh
  // that works clears only a refresh's note: an action's error stays until the next action, or it
  // vanished within the 5 s refresh, before anyone read it. A refresh's 401 (the key revoked,
  // expired or rotated away) goes to the page, which signs out: kept as a note, the page went on
  // polling with the refused key every 5 s, each poll a recorded use of a revoked key or a failed
  // attempt counted against this address.
  const guard = async (task, from = 'action') => {
    try {
      await task();
      if (from === 'action' || noteFrom === 'refresh') note.hidden = true;
      return true;
    } catch (error) {
      if (from === 'refresh' && error.status === 401) throw error;
      note.hidden = false;
      noteFrom = from;
      element.dataset.available = missing(error) ? 'false' : 'error';
      const message = missing(error) ? `Not available yet: this server has no ${endpoint}.` : error.message;
      if (from === 'action') tellAgain(note, message);
      else setText(note, message);
      return false;
    }
  };
  const refresh = () => guard(() => load(body), 'refresh');
  return { element, refresh, guard };
}
