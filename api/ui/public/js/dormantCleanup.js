import { api, orgPath } from './api.js';
import { el, isolate, setText } from './dom.js';
import { confirmDialog } from './confirmDialog.js';
import { optionalSection } from './optionalSection.js';
import { retell, timeAgo } from './refreshDom.js';
import { exact } from './format.js';

// A dry run lists the oldest 10,000 dormant keys at most, and says when there are more.
const MORE = (result) => (result.more ? ' More keys are dormant than those listed here: run the clean-up again after this one.' : '');

// The API's bounds of dormantDays.
const MIN_DAYS = 1;
const MAX_DAYS = 3650;

const LISTED = 50;

// Until when the keys an apply revokes (or revoked) can be restored, and where: the API's
// restorableUntil (30 days by default). Nothing from an API without restores, nor for no keys.
const RESTORABLE = (result) =>
  result.keys.length > 0 && result.restorableUntil
    ? ` Each can be restored, as it was, until ${exact(result.restorableUntil)}: open the key's page and press Restore.`
    : '';

// A key as a sentence names it: its name and its display prefix, so keys of the same name are told apart.
const named = (key) => `${isolate(key.name ?? key.id)} (${key.displayPrefix})`;

// What the API's apply without keyIds answers 409 (api/keys/apiKeys.service.ts, refuseUnrecordedOrg):
// the dialog applies with keyIds, which the API takes as the person's override, so the person is
// told here and must say so.
const unrecordedWarning = (dormantDays, result) =>
  `No key of this organization has a recorded use in the last ${dormantDays} days, so all ${result.keys.length}${result.more ? ' or more' : ''} key${result.keys.length === 1 ? '' : 's'} older than that look unused: check that the API records uses (USAGE_TRACKING) and the collector writes them.`;

// The other 409 of an apply without keyIds (refuseUnsafeSelection): times within dormantDays when a
// use may have been lost, where a key used only then looks dormant.
function gapsWarning(dormantDays, result) {
  const { gaps, moreGaps } = result.collectorUptime;
  const told = gaps.map(
    (gap) => `${exact(gap.from)} to ${gap.to ? exact(gap.to) : 'now'} (${gap.cause === 'no_collector' ? 'no collector listened' : 'a collector refused uses'})`,
  );
  return `Uses may have been lost ${gaps.length}${moreGaps ? ' or more' : ''} time${gaps.length === 1 ? '' : 's'} in the last ${dormantDays} days, and a key used only then looks unused: ${told.join('; ')}. Check the collectors.`;
}

// Why the keys a dry run listed may be in use after all, with what the person must confirm; none
// when it has listed none.
function cleanUpRisk(dormantDays, result) {
  if (result.keys.length === 0) return undefined;
  const gaps = result.collectorUptime.gaps.length > 0;
  if (!result.usesRecorded) {
    const warning = [unrecordedWarning(dormantDays, result), ...(gaps ? [gapsWarning(dormantDays, result)] : [])].join(' ');
    return { warning, acknowledge: 'I have checked that uses are recorded' };
  }
  return gaps ? { warning: gapsWarning(dormantDays, result), acknowledge: 'I have checked that these keys were not in use then' } : undefined;
}

// The threshold box read once for the list, its label and the clean-up alike: 0 listed the keys of
// 30 days under a label of 0, and the clean-up sent 0 to a 400. A value out of bounds is refused
// here, before any request, with the section's note.
function chosenDays(input) {
  const days = Number(input.value);
  if (input.value === '' || !Number.isInteger(days) || days < MIN_DAYS || days > MAX_DAYS) {
    throw new Error(`Unused for at least: a whole number of days from ${MIN_DAYS} to ${MAX_DAYS}.`);
  }
  return days;
}

// Named with its display prefix, as the dialog names it: two keys of one name were told apart there
// only; and with its owner, whom to ask before revoking it.
const dormantItem = (key) =>
  el('li', {}, [
    el('a', { href: `#/key/${key.id}`, text: isolate(key.name) }),
    ` (${key.displayPrefix})${key.owner ? ` · owner ${isolate(key.owner)}` : ''} · ${key.status} · last use `,
    key.lastUsedAt ? timeAgo(key.lastUsedAt) : 'never',
  ]);

// Dormant keys (from the usage endpoint, available now) and their clean-up through
// POST …/api-keys/revoke-dormant: a dry run first, then "apply" after a confirmation. Each list
// read goes to `onFresh`: on the org page it is the usage the freshness line speaks of.
export function dormantSection(who, canWrite, onFresh) {
  const days = el('input', { type: 'number', id: 'dormant-days', min: MIN_DAYS, max: MAX_DAYS, value: 30, 'aria-label': 'Unused for at least (days)' });
  const list = el('ul', { class: 'dormant-list' });
  const outcome = el('p', { class: 'cleanup-result', 'aria-live': 'polite' });
  // The keys the list shows: rebuilt only when they change, so a refresh does not take the focus
  // from one of its links (as the events feed).
  let shown = '';
  // The days the list is of, taken from the box on `change` only: the refresh every 5 s read it
  // half typed, an error for a box being cleared, the keys of 9 days on the way to 90.
  let listedDays = Number(days.value);
  const section = optionalSection({
    id: 'dormant',
    title: 'Dormant keys',
    endpoint: 'dormant clean-up endpoint (POST …/api-keys/revoke-dormant)',
    load: async (body) => {
      const dormantDays = listedDays;
      // In the clean-up's own order (oldest created first, then id): past the first page, the
      // keys listed are the ones an apply takes first.
      const page = await api('GET', orgPath(who, `/usage?dormant=true&dormantDays=${dormantDays}&sort=createdAt&order=asc&limit=${LISTED}`));
      const keys = page.data.map(({ id, name, owner, displayPrefix, status, lastUsedAt }) => ({ id, name, owner, displayPrefix, status, lastUsedAt }));
      retell(list);
      if (JSON.stringify(keys) !== shown) {
        shown = JSON.stringify(keys);
        list.replaceChildren(...keys.map(dormantItem));
      }
      setText(
        summary,
        `${page.page.total} dormant key${page.page.total === 1 ? '' : 's'} (unused for ${dormantDays} days)${page.page.total > LISTED ? `; the ${LISTED} oldest shown, in the clean-up's order` : ''}`,
      );
      if (!body.contains(list)) body.append(el('label', {}, ['Unused for at least ', days, ' days']), summary, list, ...(canWrite ? [actions, outcome] : []));
      onFresh(page);
    },
  });
  const summary = el('p');
  // Applying passes the ids the dialog named: a key that crossed the threshold while it was open
  // is not revoked unseen.
  const cleanUp = async (dormantDays, dryRun, keyIds) => {
    const result = await api('POST', orgPath(who, '/revoke-dormant'), { body: { dormantDays, dryRun, keyIds } });
    const keys = result.keys;
    setText(
      outcome,
      `${dryRun ? 'Dry run: would revoke' : 'Revoked'} ${keys.length} key${keys.length === 1 ? '' : 's'}: ${keys.map(named).join(', ') || 'none'}${MORE(result)}${dryRun ? ` ${cleanUpRisk(dormantDays, result)?.warning ?? ''}`.trimEnd() : RESTORABLE(result)}`,
    );
  };
  const preview = el('button', { type: 'button', text: 'Preview clean-up (dry run)', onclick: () => section.guard(() => cleanUp(chosenDays(days), true)) });
  const apply = el('button', {
    type: 'button',
    class: 'danger',
    text: 'Apply clean-up…',
    // The clean-up spares keys created within the period and the key signed in here, which the
    // list above (the usage endpoint's dormant filter) includes: the dialog names the exact set.
    onclick: () =>
      section.guard(async () => {
        const dormantDays = chosenDays(days);
        const dry = await api('POST', orgPath(who, '/revoke-dormant'), { body: { dormantDays, dryRun: true } });
        const names = dry.keys.map(named).join(', ') || 'none';
        const message = `Revoke these ${dry.keys.length} key${dry.keys.length === 1 ? '' : 's'}, unused for ${dormantDays} days: ${names}?${MORE(dry)} Their holders get 401 from now on.${RESTORABLE(dry)}`;
        // Exactly the keys the dialog named (a dry run lists 10,000 at most, as many as keyIds takes).
        const keyIds = dry.keys.map((key) => key.id);
        // Where no use of the org is recorded, or uses may have been lost, the API refuses an apply
        // that selects again; with the ids it goes through, so the person is warned and must
        // confirm it (they revoked every key of such an org without a word, a review).
        const risk = cleanUpRisk(dormantDays, dry);
        const confirmed = await confirmDialog({
          title: 'Revoke dormant keys',
          message,
          confirmLabel: 'Revoke them',
          warning: risk?.warning,
          acknowledge: risk?.acknowledge,
        });
        if (confirmed) await cleanUp(dormantDays, false, keyIds);
      }),
  });
  const actions = el('div', { class: 'buttons' }, [preview, apply]);
  // A value out of bounds is refused with the section's note, and the list stays at its days.
  days.addEventListener('change', async () => {
    if (!(await section.guard(() => void (listedDays = chosenDays(days))))) return;
    // A refused key (401) is the page's to handle: its next refresh signs out.
    await section.refresh().catch(() => {});
  });
  return section;
}
