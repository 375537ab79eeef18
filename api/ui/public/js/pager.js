import { el, setText } from './dom.js';
import { count } from './format.js';
import { setDisabled } from './refreshDom.js';

/** What a view's refresh answers when a later one replaced it: it neither shows nor clears an error. */
export const STALE = Symbol('stale');

// Previous / Next over a list the server pages (limit, offset, page.total), and where the page
// stands ("51–100 of 230 keys"). `fetchPage` gets the page's query ("limit=…&offset=…");
// `onTurn` runs when a page is turned.
export function createPager({ pageSize, noun, none, fetchPage, onTurn }) {
  let offset = 0;
  // Answers may come back out of order (the 5 s refresh beside a click on Next): only the latest
  // request's is shown, with the offset it asked for.
  let latest = 0;
  const status = el('p', { class: 'page-status', 'aria-live': 'polite' });
  const turn = (delta) => () => {
    offset = Math.max(0, offset + delta);
    onTurn();
  };
  const prev = el('button', { type: 'button', text: '← Previous', onclick: turn(-pageSize) });
  const next = el('button', { type: 'button', text: 'Next →', onclick: turn(pageSize) });

  function show(asked, body) {
    const { total } = body.page;
    const last = Math.min(total, asked + body.data.length);
    setText(status, total === 0 ? none : `${count(asked + 1)}–${count(last)} of ${count(total)} ${noun}`);
    setDisabled([
      [prev, asked === 0],
      [next, last >= total],
    ]);
  }

  // The answer for the page turned to, or STALE when a later request replaced it.
  async function load() {
    const asked = { ticket: ++latest, offset };
    let body;
    try {
      body = await fetchPage(`limit=${pageSize}&offset=${asked.offset}`);
    } catch (error) {
      // An answer a later request replaced is not shown, nor is its error.
      if (asked.ticket !== latest) return STALE;
      throw error;
    }
    if (asked.ticket !== latest) return STALE;
    // Items left the list since the page was turned (keys used again, out of a filter, renamed;
    // webhooks deleted): the page past its end is empty, so the last page that has items is asked for.
    if (asked.offset > 0 && asked.offset >= body.page.total) {
      offset = Math.floor(Math.max(0, body.page.total - 1) / pageSize) * pageSize;
      return load();
    }
    show(asked.offset, body);
    return body;
  }

  const first = () => void (offset = 0);
  return { element: el('div', { class: 'pager' }, [prev, status, next]), load, first };
}
