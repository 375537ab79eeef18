import { api, orgPath } from './api.js';
import { el, setText } from './dom.js';
import { optionalSection } from './optionalSection.js';

// The networks a key is expected to be used from, edited with PATCH …/api-keys/:keyId. Present
// only once the key view carries `expectedNetworks`; until then the section says it is missing.
export function expectedNetworksSection(who, keyId, canWrite) {
  const text = el('textarea', { id: 'expected-networks', rows: 3, 'aria-label': 'Expected networks, one CIDR per line', readonly: !canWrite });
  const saved = el('span', { 'aria-live': 'polite' });
  const save = el('button', {
    type: 'button',
    text: 'Save networks',
    onclick: () =>
      section.guard(async () => {
        const expectedNetworks = text.value
          .split('\n')
          .map((line) => line.trim())
          .filter(Boolean);
        await api('PATCH', orgPath(who, `/${keyId}`), { body: { expectedNetworks } });
        setText(saved, 'Saved');
      }),
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
      // Never overwrite what the person is typing.
      if (document.activeElement !== text) text.value = (key.expectedNetworks ?? []).join('\n');
      if (!body.contains(text)) body.replaceChildren(text, ...(canWrite ? [save, saved] : []));
    },
  });
  return section;
}
