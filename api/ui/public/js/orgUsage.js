import { api, routeMissing } from './api.js';
import { el, setText } from './dom.js';
import { count, serverNow } from './format.js';
import { optionalSection } from './optionalSection.js';
import { createSeriesChart } from './seriesChart.js';

// GET /api/orgs/:id/usage: every key of the org summed, by outcome, over a chosen range, and how
// many keys were used in it.
export function orgUsageSection(who) {
  const keysUsed = el('p', { id: 'org-keys-used', class: 'subtitle' });
  const series = createSeriesChart({
    ids: { range: 'org-range', chart: 'org-chart' },
    // The org's path, not the keys' (orgPath adds /api-keys).
    read: (query) => api('GET', `/api/orgs/${encodeURIComponent(who.orgId)}/usage?${query}`),
    readAt: serverNow,
    onSeries: (answer) => setText(keysUsed, `${count(answer.keysUsed)} ${answer.keysUsed === 1 ? 'key' : 'keys'} used in this range`),
  });
  const section = optionalSection({
    id: 'org-usage',
    title: 'Requests by outcome, every key',
    endpoint: 'organization usage endpoint',
    missing: routeMissing,
    load: async (body) => {
      await series.refresh();
      if (!body.contains(series.chart)) body.append(el('div', { class: 'chart-head' }, [keysUsed, series.range]), series.chart);
    },
  });
  series.range.addEventListener('change', () => void section.guard(series.refresh));
  return section;
}
