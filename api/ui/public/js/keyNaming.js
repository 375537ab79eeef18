import { api, orgPath } from './api.js';
import { el, setText } from './dom.js';
import { sessionKey } from './session.js';

const SENT_WITH_OLD_SECRET = 'Not saved: it was sent with the secret this tab has replaced since (a rotation). Save again.';

// A key's name and who answers for it (its owner), changed with PATCH …/api-keys/:keyId, for
// keys:write holders. The fields follow the key as each refresh reads it, but a field the person
// has typed in is theirs until it is saved: a refresh every 5 s wiped an edit half made.
// A save sends only the fields the person changed: sending both put back a name renamed elsewhere
// since the last refresh, and a name stored before names were checked refused every owner.
export function createKeyNaming({ who, keyId, onChanged, onReread, onError, onSignedOut }) {
  const name = el('input', { type: 'text', id: 'key-name', maxlength: 200, required: true, autocomplete: 'off' });
  const owner = el('input', { type: 'text', id: 'key-owner', maxlength: 200, autocomplete: 'off', placeholder: 'nobody named' });
  const saved = el('span', { 'aria-live': 'polite' });
  // What each field last showed of the key: a field that still holds it is not the person's.
  const shown = new Map([
    [name, ''],
    [owner, ''],
  ]);
  const show = (input, value) => {
    if (document.activeElement === input || input.value !== shown.get(input)) return;
    input.value = value;
    shown.set(input, value);
  };
  for (const input of shown.keys()) input.addEventListener('input', () => setText(saved, ''));

  // An owner left blank names nobody (the API refuses an empty one).
  const changes = () => ({
    ...(name.value === shown.get(name) ? {} : { name: name.value }),
    ...(owner.value === shown.get(owner) ? {} : { owner: owner.value.trim() === '' ? null : owner.value }),
  });

  async function save(event) {
    event.preventDefault();
    setText(saved, '');
    const sent = [name.value, owner.value];
    const body = changes();
    if (Object.keys(body).length === 0) return setText(saved, 'Nothing changed');
    try {
      const key = await api('PATCH', orgPath(who, `/${keyId}`), { body });
      // What the person typed while the request was on its way stays theirs.
      for (const [input, value, typed] of [
        [name, key.name, sent[0]],
        [owner, key.owner ?? '', sent[1]],
      ]) {
        if (input.value === typed) input.value = value;
        shown.set(input, value);
      }
      setText(saved, 'Saved');
      await onChanged();
    } catch (error) {
      // The tab's key refused (revoked, rotated away): signed out as a refresh would, unless the
      // secret it was sent with is one this tab has rotated away since (the new one is fine): the
      // change was not made, and nothing retries it, so the person is told.
      if (error.status === 401 && error.sentWith(sessionKey())) return onSignedOut(error.message);
      onError(error.status === 401 ? new Error(SENT_WITH_OLD_SECRET) : error);
      // Timed out, the change may still have been made: the page shows the key as it is, and the
      // warning stays.
      if (error.code === 'write_timeout') await onReread().catch(() => {});
    }
  }

  const element = el('form', { id: 'key-naming', class: 'key-naming', 'aria-label': 'Name and owner', hidden: true, onsubmit: save }, [
    el('label', {}, ['Name ', name]),
    el('label', {}, ['Owner ', owner]),
    el('button', { type: 'submit', id: 'save-naming', text: 'Save name and owner' }),
    saved,
  ]);
  // Shown once the key says whom it belongs to: an API of the previous version, still serving
  // during an upgrade, has no owners and refuses both fields (400).
  const update = (key) => {
    element.hidden = !('owner' in key);
    show(name, key.name);
    show(owner, key.owner ?? '');
  };
  return { element, update };
}
