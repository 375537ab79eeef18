import { el } from './dom.js';
import { count } from './format.js';
import { retell, timeAgo } from './refreshDom.js';

// Recent addresses of a key (uses or failed attempts), rebuilt only when they changed; their times
// told again on every update.
export function createIpTable({ id, caption, countLabel, countField }) {
  const tbody = el('tbody');
  const table = el('table', { id, class: 'ips' }, [
    el('caption', { text: caption }),
    el('thead', {}, [
      el(
        'tr',
        {},
        ['IP', 'First seen', 'Last seen', countLabel].map((text) => el('th', { scope: 'col', text })),
      ),
    ]),
    tbody,
  ]);
  let shown;
  const when = (iso) => el('td', {}, [timeAgo(iso)]);
  return {
    element: el('div', { class: 'table-wrap' }, [table]),
    update(ips) {
      const signature = JSON.stringify(ips);
      retell(tbody);
      if (signature === shown) return;
      shown = signature;
      tbody.replaceChildren(
        ...(ips.length === 0
          ? [el('tr', {}, [el('td', { colspan: 4, text: 'None.' })])]
          : ips.map((ip) =>
              el('tr', {}, [el('td', { text: ip.ip }), when(ip.firstSeen), when(ip.lastSeen), el('td', { class: 'num', text: count(ip[countField]) })]),
            )),
      );
    },
  };
}
