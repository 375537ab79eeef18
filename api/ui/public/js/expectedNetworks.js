import { api, orgPath } from './api.js';
import { el, setText } from './dom.js';
import { optionalSection } from './optionalSection.js';

// The networks a key is expected to be used from, edited with PATCH …/api-keys/:keyId. Present
// only once the key view carries `expectedNetworks`; until then the section says it is missing.
export function expectedNetworksSection(who, keyId, canWrite) {
  const text = el('textarea', { id: 'expected-networks', rows: 3, 'aria-label': 'Expected networks, one CIDR per line', readonly: !canWrite });
  const saved = el('span', { 'aria-live': 'polite' });
  // The value last shown from the server: the field is the person's own once it differs (an edit
  // not saved, or refused), and a refresh leaves it alone.
  let shown = '';
  text.addEventListener('input', () => setText(saved, ''));
  const save = el('button', {
    type: 'button',
    text: 'Save networks',
    onclick: async () => {
      setText(saved, '');
      const edited = text.value;
      const expectedNetworks = edited
        .split('\n')
        .map((line) => line.trim())
        .filter(Boolean);
      const done = await section.guard(() => api('PATCH', orgPath(who, `/${keyId}`), { body: { expectedNetworks } }));
      if (!done) return;
      // Saved: the next refresh shows the server's normalised form.
      if (text.value === edited) shown = edited;
      setText(saved, 'Saved');
    },
  });
  const section = optionalSection({
    id: 'networks',
    title: 'Expected networks',
    endpoint: 'expected-networks field on keys (PATCH …/api-keys/:keyId)',
    load: async (body) => {
      const key = await api('GET', orgPath(who, `/${keyId}`));
      if (!('expectedNetworks' in key)) {
        body.replaceChildren(el('p', { class: 'note', text: 'Not available yet: this server has no expected networks on keys.' }));
        return;
      }
      // Never overwrite what the person is typing, nor an edit they have not saved.
      if (document.activeElement !== text && text.value === shown) text.value = shown = (key.expectedNetworks ?? []).join('\n');
      if (!body.contains(text)) body.replaceChildren(text, ...(canWrite ? [save, saved] : []));
    },
  });
  return section;
}
