import { api, changeOnce, NOT_ANSWERED, orgPath } from './api.js';
import { el, isolate, setText } from './dom.js';
import { exact, serverNow } from './format.js';
import { confirmDialog } from './confirmDialog.js';
import { keepSessionKey, sessionKey } from './session.js';

// Rotate, revoke, renew and restore, for keys:write holders only (the page hides them otherwise;
// the API's 403 would refuse them anyway).
const GRACE_CHOICES = [
  [0, 'none: the old secret stops now'],
  [3600, '1 hour'],
  [86_400, '24 hours'],
  [604_800, '7 days'],
];

// The new secret, with a button to copy it.
function secretField(plaintext) {
  const secret = el('input', { type: 'text', readonly: true, value: plaintext, id: 'new-secret', 'aria-label': 'New secret', spellcheck: 'false' });
  const copied = el('span', { 'aria-live': 'polite' });
  const copy = el('button', {
    type: 'button',
    text: 'Copy',
    onclick: async () => {
      secret.select();
      try {
        // No navigator.clipboard outside a secure context; writeText rejects without permission.
        await navigator.clipboard.writeText(plaintext);
        setText(copied, 'Copied');
      } catch {
        // Back in the field, still selected, so Ctrl+C copies it.
        secret.focus();
        secret.select();
        setText(copied, 'Copy failed: press Ctrl+C (the key is selected)');
      }
    },
  });
  return el('div', { class: 'secret' }, [secret, copy, copied]);
}

// While a rotation's grace period runs the API refuses another one with a grace (409): only one
// with none goes through then, and the person must know what it ends.
const ROTATE_AGAIN =
  "Rotate again to get one you can copy: with no grace period, which ends the current secret at once (with one, the API refuses while that rotation's grace runs), or once its grace has ended.";

// A retry's replay (api.js changeOnce) tells that the rotation was made, never its secret: the
// API keeps none, and its one copy went out in the answer that was lost.
const LOST_SECRET = `The key was rotated, but the answer carrying its new secret did not arrive, and the API shows a secret in that answer only: no one holds it. ${ROTATE_AGAIN}`;

// A key's retry of its own rotation presents the secret that rotation replaced, which may not
// manage keys (403 stale_secret during the grace period): the API's refusal alone did not say that
// the rotation was made, nor that this tab cannot rotate the key again.
const OWN_SECRET_LOST =
  'The key you are signed in with has been rotated (by this request, whose answer did not arrive, or elsewhere): this tab holds its previous secret, which cannot manage keys, and the new secret is not here. Sign in with another key that has keys:write to rotate it again, with no grace period (which ends the secret this tab holds).';

// With no grace period the same retry is refused outright (401), and the tab's next refresh signed
// it out with the API's "a valid API key is required": nothing said the key had been rotated.
const OWN_KEY_ROTATED_AWAY =
  'The key you were signed in with was rotated with no grace period (by this request, whose answer did not arrive, or elsewhere): the secret this tab held ended at once, and the new one was in the answer that was lost, so no one holds it. Sign in with another key that has keys:write and rotate it again.';

const OWN_KEY_REVOKED = 'The key you were signed in with was revoked.';

// Any error after a lost answer (api.js changeOnce: the API unreachable again, a gateway's 504, the
// retry refused or not sent) said only that, as if nothing had been done: the rotation may have
// been made, and its new secret lost with the answer.
function sayMayHaveRotated(error) {
  const said = error.code === 'write_timeout' ? NOT_ANSWERED : error.message;
  error.message = `${said}: the key may have been rotated all the same, and its new secret, shown only in the answer that did not arrive, is then lost. ${ROTATE_AGAIN}`;
}

// Shows the new secret once, or that it was lost; closing the dialog removes it from the page.
function showRotation(rotated) {
  const grace = rotated.previousSecretExpiresAt
    ? `The old secret keeps working until ${exact(rotated.previousSecretExpiresAt)}.`
    : 'The old secret no longer works.';
  const outcome = rotated.replayed
    ? [
        el('h2', { id: 'secret-title', text: `${isolate(rotated.name)} (${rotated.displayPrefix}) was rotated: its new secret was lost` }),
        el('p', { id: 'lost-secret', text: LOST_SECRET }),
      ]
    : [
        el('h2', { id: 'secret-title', text: `New secret for ${isolate(rotated.name)}` }),
        el('p', { text: 'Shown this once and stored nowhere: copy it now.' }),
        secretField(rotated.key),
      ];
  const dialog = el('dialog', { class: 'dialog', 'aria-labelledby': 'secret-title' }, [
    el('form', { method: 'dialog' }, [
      ...outcome,
      el('p', { id: 'grace-note', text: grace }),
      el('div', { class: 'buttons' }, [el('button', { type: 'submit', text: 'Done' })]),
    ]),
  ]);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

export function keyActions({ who, key, onChanged, onError, onSignedOut }) {
  const grace = el(
    'select',
    // data-carry: a rebuild of the block (an expiry changed) keeps the person's choice (keyDetail.js).
    { id: 'grace', 'aria-label': 'Grace period of the old secret', 'data-carry': true },
    GRACE_CHOICES.map(([seconds, label]) => el('option', { value: seconds, text: label, selected: seconds === 86_400 })),
  );
  // No refresh once the page signed out (the key it was signed in with revoked): made with no key,
  // its 401 was an uncaught error. Awaited, so a refresh's error is shown like the action's. A
  // write that timed out, or whose answer was lost, may have been made all the same: the key is
  // read again to show what holds now, and that read's own error is left to the periodic refresh,
  // not put over the message.
  const act = (task) => async () => {
    try {
      await task();
      if (sessionKey()) await onChanged();
    } catch (error) {
      onError(error);
      if ((error.code === 'write_timeout' || error.answerLost) && sessionKey()) await onChanged().catch(() => {});
    }
  };
  const own = key.id === who.keyId;
  const rotate = el('button', {
    type: 'button',
    id: 'rotate',
    text: 'Rotate secret',
    onclick: act(async () => {
      const gracePeriodSeconds = Number(grace.value);
      if (gracePeriodSeconds === 0) {
        const message = `Every holder of the current secret of “${isolate(key.name)}” (${key.displayPrefix}) will be refused with 401 from now on, until they get the new one.`;
        if (!(await confirmDialog({ title: 'Rotate with no grace period?', message, confirmLabel: 'Rotate now' }))) return;
      }
      const signedInWith = sessionKey();
      // The tab's own key rotated with no grace period, its answer lost: the retry is refused
      // (401), or a refresh sent meanwhile was, and signed the tab out with the API's words (a Sign
      // out pressed within the retry's 1 s is told the same, though the rotation may not be made).
      const ownSecretEnded = (error) =>
        own && gracePeriodSeconds === 0 && error.answerLost && (sessionKey() === signedInWith ? error.status === 401 : !sessionKey());
      // With a grace period the retry presents the previous secret: 403 stale_secret, or 401 when it
      // waited for the org's lock behind the first request (the key rotated after the retry was
      // authorized, api/audit beginAuditedChange), which was shown with "Rotate again with no grace
      // period", advice a tab holding the previous secret cannot follow.
      const ownSecretReplaced = (error) =>
        own && (error.code === 'stale_secret' || (error.answerLost && error.status === 401 && sessionKey() === signedInWith));
      let rotated;
      try {
        rotated = await changeOnce('POST', orgPath(who, `/${key.id}/rotate`), { body: { gracePeriodSeconds } });
      } catch (error) {
        if (ownSecretEnded(error)) {
          onSignedOut(OWN_KEY_ROTATED_AWAY);
          return;
        }
        // The new secret is only ever in the rotation's answer: a rotation made but not answered,
        // even by its retry, left the page saying only what went wrong, the secret lost unsaid.
        if (ownSecretReplaced(error)) error.message = OWN_SECRET_LOST;
        else if (error.answerLost) sayMayHaveRotated(error);
        throw error;
      }
      // Rotating the key this page signed in with: carry on with its new secret, unless the person
      // signed out (or in with another key) while the rotation was on its way. Never a replay: a
      // key's retry of its own rotation presents the secret it replaced, which the API refuses.
      if (own && sessionKey() === signedInWith) keepSessionKey(rotated.key);
      showRotation(rotated);
    }),
  });
  const revoke = el('button', {
    type: 'button',
    id: 'revoke',
    class: 'danger',
    text: 'Revoke…',
    onclick: act(async () => {
      const message = `Every request with “${isolate(key.name)}” (${key.displayPrefix}) will be refused with 401 from now on.${own ? ' It is the key you are signed in with: you will be signed out.' : ''}`;
      if (!(await confirmDialog({ title: 'Revoke this key?', message, confirmLabel: 'Revoke' }))) return;
      await api('POST', orgPath(who, `/${key.id}/revoke`));
      if (own && sessionKey()) onSignedOut(OWN_KEY_REVOKED);
    }),
  });
  const live = key.status === 'active';
  const ended = () =>
    key.restorableUntil ? restoreControls(who, key, act) : [el('p', { text: `This key is ${key.status}: nothing to rotate, revoke or renew.` })];
  return el(
    'div',
    { class: 'actions', id: 'key-actions' },
    live ? [...restoredNote(key), el('label', {}, ['Grace period ', grace]), rotate, revoke, expiryControls(who, key, act)] : ended(),
  );
}

// A key the dormant clean-up revoked, while its restorableUntil lasts (its usage row says until
// when): the clean-up guessed from recorded uses, and a key it guessed wrong broke every client
// holding it until a new key was deployed. Restored, the key is as it was. Not offered for a key
// revoked for good (a single revoke, the answer to a leak): the row says null, and the API would
// answer 409. No confirmation: nothing is lost by a restore, and a revoke undoes it. Beside it,
// "Revoke for good": after a leak the runbook makes the revocation final, which without it took a
// restore first, the leaked secret working again in between (a review).
function restoreControls(who, key, act) {
  // Restoring does not undo an expiry: a key that expired while revoked comes back expired (a review).
  const expired = key.expiresAt !== null && Date.parse(key.expiresAt) <= serverNow();
  const note = el('p', {
    id: 'restore-note',
    text: `This key was revoked by the dormant clean-up and can be restored until ${exact(key.restorableUntil)}${
      expired
        ? `. It expired on ${exact(key.expiresAt)}, so a restore would not make its secret work again: create a new key.`
        : ': the same secret, scopes and expiry work again.'
    }`,
  });
  const restore = el('button', {
    type: 'button',
    id: 'restore',
    text: 'Restore',
    'aria-describedby': 'restore-note',
    // Gone once the key is active again: the line saying it was restored takes the focus, so a
    // screen reader says what happened (keyDetail.js).
    'data-focus-next': 'restored-note',
    onclick: act(() => api('POST', orgPath(who, `/${key.id}/restore`))),
  });
  const final = el('button', {
    type: 'button',
    id: 'revoke-for-good',
    class: 'danger',
    text: 'Revoke for good…',
    onclick: act(async () => {
      const message = `“${isolate(key.name)}” (${key.displayPrefix}) can then no longer be restored. Do this if its secret may have leaked.`;
      if (!(await confirmDialog({ title: 'Revoke this key for good?', message, confirmLabel: 'Revoke for good' }))) return;
      await api('POST', orgPath(who, `/${key.id}/revoke`));
    }),
  });
  return [note, restore, final];
}

// A key given back after a clean-up says so, and when: its idle time counts from then.
const restoredNote = (key) =>
  key.restoredAt
    ? [el('p', { id: 'restored-note', tabindex: '-1', text: `Restored after the dormant clean-up revoked it, on ${exact(key.restoredAt)}: active again.` })]
    : [];

// Renewal (PATCH …/api-keys/:keyId with expiresAt): key.expiring warned ahead of an expiry the
// page could only watch come, though the API and the CLI could move it. A date, read as 00:00 UTC,
// as the API compares times; "Never expires" where the key has an expiry. The API's refusals (a
// time past, beyond the caller's own expiry) are shown as the other actions' are.
function expiryControls(who, key, act) {
  const date = el('input', {
    type: 'date',
    id: 'expiry-date',
    'aria-label': 'New expiry date (00:00 UTC)',
    value: key.expiresAt ? key.expiresAt.slice(0, 10) : '',
    // Typed in, the date is the person's, kept by a rebuild; untouched, it follows the key's expiry.
    oninput: (event) => event.target.setAttribute('data-carry', ''),
  });
  const patch = (expiresAt) => api('PATCH', orgPath(who, `/${key.id}`), { body: { expiresAt } });
  const renew = el('button', {
    type: 'button',
    id: 'renew',
    text: 'Set expiry',
    onclick: act(async () => {
      if (date.value === '') throw new Error('New expiry: choose a date.');
      await patch(`${date.value}T00:00:00.000Z`);
    }),
  });
  const never = el('button', { type: 'button', id: 'never-expires', text: 'Never expires', onclick: act(() => patch(null)) });
  return el('div', { class: 'expiry', role: 'group', 'aria-label': 'Expiry' }, [
    el('label', {}, ['Expires on (00:00 UTC) ', date]),
    renew,
    ...(key.expiresAt ? [never] : []),
  ]);
}
