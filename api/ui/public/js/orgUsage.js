import { api, routeMissing } from './api.js';
import { el, setText } from './dom.js';
import { count, serverNow } from './format.js';
import { optionalSection } from './optionalSection.js';
import { createSeriesChart } from './seriesChart.js';

// The page refreshes every 5 s; this chart is read again at most once a minute. It sums every
// hour of every key of the org in the range (30 days of a bench org: 129,000 rows, 0.25–0.31 s,
// docs/benchmarks.md §5; 90 days of 500 keys used every hour: a million), and read every 5 s by
// each open tab that was a load of its own. A range chosen is read at once.
const REREAD_AFTER_MS = 60_000;

const keysUsedText = (answer) =>
  answer ? `${count(answer.keysUsed)} ${answer.keysUsed === 1 ? 'key' : 'keys'} used in this range` : 'Keys used in this range: not read';

// GET /api/orgs/:id/usage: every key of the org summed, by outcome, over a chosen range, and how
// many keys were used in it.
export function orgUsageSection(who) {
  const keysUsed = el('p', { id: 'org-keys-used', class: 'subtitle' });
  let readAt = -Infinity;
  const series = createSeriesChart({
    ids: { range: 'org-range', chart: 'org-chart' },
    // The org's path, not the keys' (orgPath adds /api-keys).
    read: (query) => api('GET', `/api/orgs/${encodeURIComponent(who.orgId)}/usage?${query}`),
    readAt: serverNow,
    // A failed read waits its minute too: a range that fails by timing out is the costliest to
    // try again every 5 s (a review).
    onSeries: (answer) => {
      readAt = performance.now();
      setText(keysUsed, keysUsedText(answer));
    },
  });
  const section = optionalSection({
    id: 'org-usage',
    title: 'Requests by outcome, every key',
    endpoint: 'organization usage endpoint',
    missing: routeMissing,
    load: async (body) => {
      if (performance.now() - readAt < REREAD_AFTER_MS) return;
      await series.refresh();
      if (!body.contains(series.chart)) body.append(el('div', { class: 'chart-head' }, [keysUsed, series.range]), series.chart);
    },
  });
  series.range.addEventListener('change', () => void section.guard(series.refresh));
  return section;
}
