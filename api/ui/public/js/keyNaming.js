import { api, orgPath } from './api.js';
import { el, setText } from './dom.js';

// A key's name and who answers for it (its owner), changed with PATCH …/api-keys/:keyId, for
// keys:write holders. The fields follow the key as each refresh reads it, but a field the person
// has typed in is theirs until it is saved: a refresh every 5 s wiped an edit half made.
export function createKeyNaming({ who, keyId, onChanged, onError }) {
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

  async function save(event) {
    event.preventDefault();
    setText(saved, '');
    try {
      // An owner left blank names nobody (the API refuses an empty one).
      const body = { name: name.value, owner: owner.value.trim() === '' ? null : owner.value };
      const key = await api('PATCH', orgPath(who, `/${keyId}`), { body });
      for (const [input, value] of [
        [name, key.name],
        [owner, key.owner ?? ''],
      ]) {
        input.value = value;
        shown.set(input, value);
      }
      setText(saved, 'Saved');
      await onChanged();
    } catch (error) {
      onError(error);
    }
  }

  const element = el('form', { id: 'key-naming', class: 'key-naming', 'aria-label': 'Name and owner', onsubmit: save }, [
    el('label', {}, ['Name ', name]),
    el('label', {}, ['Owner ', owner]),
    el('button', { type: 'submit', id: 'save-naming', text: 'Save name and owner' }),
    saved,
  ]);
  const update = (key) => {
    show(name, key.name);
    show(owner, key.owner ?? '');
  };
  return { element, update };
}
