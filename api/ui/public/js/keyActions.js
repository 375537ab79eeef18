import { api, NOT_ANSWERED, orgPath } from './api.js';
import { el, isolate, setText } from './dom.js';
import { exact } from './format.js';
import { confirmDialog } from './confirmDialog.js';
import { keepSessionKey, sessionKey } from './session.js';

// Rotate and revoke, for keys:write holders only (the page hides them otherwise; the API's 403
// would refuse them anyway).
const GRACE_CHOICES = [
  [0, 'none: the old secret stops now'],
  [3600, '1 hour'],
  [86_400, '24 hours'],
  [604_800, '7 days'],
];

// Shows the new secret once; closing the dialog removes it from the page.
function showNewSecret(rotated) {
  const secret = el('input', { type: 'text', readonly: true, value: rotated.key, id: 'new-secret', 'aria-label': 'New secret', spellcheck: 'false' });
  const copied = el('span', { 'aria-live': 'polite' });
  const copy = el('button', {
    type: 'button',
    text: 'Copy',
    onclick: async () => {
      secret.select();
      try {
        // No navigator.clipboard outside a secure context; writeText rejects without permission.
        await navigator.clipboard.writeText(rotated.key);
        setText(copied, 'Copied');
      } catch {
        // Back in the field, still selected, so Ctrl+C copies it.
        secret.focus();
        secret.select();
        setText(copied, 'Copy failed: press Ctrl+C (the key is selected)');
      }
    },
  });
  const grace = rotated.previousSecretExpiresAt
    ? `The old secret keeps working until ${exact(rotated.previousSecretExpiresAt)}.`
    : 'The old secret no longer works.';
  const dialog = el('dialog', { class: 'dialog', 'aria-labelledby': 'secret-title' }, [
    el('form', { method: 'dialog' }, [
      el('h2', { id: 'secret-title', text: `New secret for ${isolate(rotated.name)}` }),
      el('p', { text: 'Shown this once and stored nowhere: copy it now.' }),
      el('div', { class: 'secret' }, [secret, copy, copied]),
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
    { id: 'grace', 'aria-label': 'Grace period of the old secret' },
    GRACE_CHOICES.map(([seconds, label]) => el('option', { value: seconds, text: label, selected: seconds === 86_400 })),
  );
  // No refresh once the page signed out (the key it was signed in with revoked): made with no key,
  // its 401 was an uncaught error. Awaited, so a refresh's error is shown like the action's. A
  // write that timed out may have been made all the same: the key is read again to show what holds
  // now, and that read's own error is left to the periodic refresh, not put over the message.
  const act = (task) => async () => {
    try {
      await task();
      if (sessionKey()) await onChanged();
    } catch (error) {
      onError(error);
      if (error.code === 'write_timeout' && sessionKey()) await onChanged().catch(() => {});
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
      // The new secret is only ever in the rotation's answer: a rotation made but not answered in
      // time left the page saying only that the API did not answer, the secret lost unsaid. Trying
      // again is safe, but while the lost rotation's grace period runs the API refuses one with a
      // grace (409): only one with none goes through then, and the person must know what it ends.
      const rotated = await api('POST', orgPath(who, `/${key.id}/rotate`), { body: { gracePeriodSeconds } }).catch((error) => {
        if (error.code === 'write_timeout') {
          error.message = `${NOT_ANSWERED}: the key may have been rotated all the same, and its new secret, shown only in that answer, is then lost. Rotate again to get one you can copy: with no grace period, which ends the current secret at once (with one, the API refuses while that rotation's grace runs), or once its grace has ended.`;
        }
        throw error;
      });
      // Rotating the key this page signed in with: carry on with its new secret, unless the person
      // signed out (or in with another key) while the rotation was on its way.
      if (own && sessionKey() === signedInWith) keepSessionKey(rotated.key);
      showNewSecret(rotated);
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
      if (own && sessionKey()) onSignedOut();
    }),
  });
  const live = key.status === 'active';
  return el(
    'div',
    { class: 'actions', id: 'key-actions' },
    live ? [el('label', {}, ['Grace period ', grace]), rotate, revoke] : [el('p', { text: `This key is ${key.status}: nothing to rotate or revoke.` })],
  );
}
