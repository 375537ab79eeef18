import { exact, relative } from './format.js';

// Exact times were shown only on hover, which keyboard and touch users cannot do: they read
// "3 min ago" alone. A switch in the header shows every time exact instead (the relative form
// then on hover), remembered by this browser.
const SLOT = 'keyusage.exactTimes';
let exactShown;

// Storage may be refused (a privacy mode): the switch then lasts for this page only.
function stored() {
  try {
    return localStorage.getItem(SLOT) === 'true';
  } catch {
    return false;
  }
}

export function exactTimesShown() {
  exactShown ??= stored();
  return exactShown;
}

export function showExactTimes(value) {
  exactShown = value;
  try {
    localStorage.setItem(SLOT, String(value));
  } catch {
    // kept for this page only (above)
  }
}

/** A moment as the page shows it: how long ago, or the exact time once the switch is on. */
export const shownTime = (iso) => (iso && exactTimesShown() ? exact(iso) : relative(iso));

/** The other form, for the hover title; none for a moment that never was. */
export const otherTime = (iso) => (iso && exactTimesShown() ? relative(iso) : exact(iso));
