import { el, setAttr, setText } from './dom.js';
import { otherTime, shownTime } from './timeFormat.js';

// What a refresh every 5 s needs so as not to get in the way: times that keep telling how long
// ago, and nodes kept (not rebuilt) so the focus stays where the person left it.

/** A moment as the page shows it (timeFormat.js), the other form on hover; `retell` brings it up to date. */
export const timeAgo = (iso) => el('time', { datetime: iso, title: otherTime(iso), text: shownTime(iso) });

/** Points the <time> `node` at `iso`, or at no moment (`none` its text, nothing to tell again). */
export function setTime(node, iso, none = shownTime(null)) {
  setAttr(node, 'datetime', iso);
  setText(node, iso ? shownTime(iso) : none);
  setAttr(node, 'title', otherTime(iso));
}

// A part rebuilt only when its data changed kept "20 s ago" while the facts beside it said
// "1 min ago": its times are told again on every refresh, and on every tick whatever the
// refresh's outcome (main.js).
export function retell(root) {
  for (const time of root.querySelectorAll('time[datetime]')) setTime(time, time.getAttribute('datetime'));
}

// Puts `nodes` in `parent` in this order, moving only those out of place and removing the others.
// A focused node moved (the key used since, now first) loses the focus: it gets it back.
export function arrange(parent, nodes) {
  const focused = parent.contains(document.activeElement) ? document.activeElement : null;
  nodes.forEach((node, index) => {
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] ?? null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
  if (focused?.isConnected && document.activeElement !== focused) focused.focus({ preventScroll: true });
}

// A focused button disabled (Next → onto the last page) left the focus on <body>: it goes to the
// first of `states`' buttons still enabled. `states`: [button, disabled] pairs, set together.
export function setDisabled(states) {
  const focused = document.activeElement;
  for (const [button, disabled] of states) button.disabled = disabled;
  if (states.some(([button, disabled]) => disabled && button === focused)) states.find(([, disabled]) => !disabled)?.[0].focus();
}
